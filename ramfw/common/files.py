"""Writing a file so that a reader never sees half of it, and a crash leaves the old or the new
one: write a temporary file in the same directory, flush it to disk, rename it over the target."""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: str | bytes, mode: int) -> None:
    """Replace `path` with `data` in one rename. `mode` is the new file's permission bits, set
    explicitly (whatever the umask). The directory must exist; OSError propagates and leaves
    the old file and no temporary file behind."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
