"""ramfw.common.files.write_atomic: a reader sees the old file or the new one, never half; the
mode is the one asked for whatever the umask; a failed write leaves the old file and no
temporary file behind."""

from __future__ import annotations

import os
import stat

import pytest

from ramfw.common.files import write_atomic


def test_replaces_by_rename_with_the_mode_asked_whatever_the_umask(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    old_inode = path.stat().st_ino
    with open(path) as reader:  # a reader holding the old file keeps reading the old file
        previous = os.umask(0o077)
        try:
            write_atomic(str(path), "new ✓", 0o644)
        finally:
            os.umask(previous)
        assert reader.read() == "old"
    assert path.read_text() == "new ✓"
    assert path.stat().st_ino != old_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(str(path), b"\x00bytes", 0o600)
    assert path.read_bytes() == b"\x00bytes" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()  # a directory cannot be replaced by a file
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_atomic(str(target), "data", 0o600)
    assert sorted(os.listdir(tmp_path)) == ["busy"] and (target / "keep").read_text() == "x"


def test_a_missing_directory_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "nope" / "file"), "data", 0o600)
