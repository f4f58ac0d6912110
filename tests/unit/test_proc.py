"""The one subprocess helper: a timeout always, a one-line error naming the command."""

import sys

import pytest

from ramfw.common import proc
from ramfw.errors import BackendError


def test_output_and_input_text_pass_through():
    r = proc.run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], input_text="hello")
    assert r.returncode == 0 and r.stdout == "HELLO\n"


def test_a_command_that_hangs_is_killed_at_its_timeout():
    with pytest.raises(proc.CommandError) as err:
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.3)
    msg = str(err.value)
    assert "did not finish within 0.3 s" in msg and "time.sleep(30)" in msg and "\n" not in msg


def test_a_missing_binary_is_named():
    with pytest.raises(proc.CommandError) as err:
        proc.run(["ramfw-no-such-tool", "-S"])
    assert str(err.value).startswith("ramfw-no-such-tool is not installed")
    assert isinstance(err.value, BackendError)  # callers that handle kernel refusals handle this too


def test_non_zero_exit_is_returned_unless_checked():
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('bad rule\\nmore\\n'); sys.exit(4)"]
    assert proc.run(argv).returncode == 4
    with pytest.raises(proc.CommandError) as err:
        proc.run(argv, check=True)
    assert str(err.value).endswith("failed: bad rule")


def test_the_first_error_line_falls_back_to_the_exit_status():
    r = proc.run([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert proc.first_error_line(r) == "exit status 3"


def test_inside_wraps_the_run():
    seen = []

    class Recorder:
        def __enter__(self):
            seen.append("in")

        def __exit__(self, *exc):
            seen.append("out")

    proc.run([sys.executable, "-c", "pass"], inside=Recorder())
    assert seen == ["in", "out"]


def test_long_commands_are_shortened_in_messages():
    assert len(proc.describe(["x" * 500])) == 120
