"""The one way ramfw runs a command (nft, iptables-restore, ip, ...): always with a timeout,
text in and out, output captured, and a one-line error that names the command when it cannot
be run, does not finish in time or (with check=True) exits non-zero.

Commands run in the calling thread's network namespace: a caller that wants another one passes
`inside=netns.entered(name)` (the child inherits the thread's namespace when it is forked).

Every command ramfw runs is a kernel tool, so CommandError is a BackendError: code that already
handles a refused kernel change handles a tool that is missing or hangs the same way.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from typing import ContextManager

from ramfw.errors import BackendError

DEFAULT_TIMEOUT = 30.0  # seconds; an iptables-restore of 100,000 rules takes a few


class CommandError(BackendError):
    """A command could not be run, timed out, or (check=True) failed."""


def describe(argv: Sequence[str], limit: int = 120) -> str:
    """The command as a user would type it, shortened for a one-line message."""
    text = " ".join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_error_line(result: subprocess.CompletedProcess) -> str:
    """The first line of stderr, else the exit status: what a one-line message quotes."""
    lines = [ln.strip() for ln in (result.stderr or "").splitlines() if ln.strip()]
    return lines[0] if lines else f"exit status {result.returncode}"


def run(
    argv: Sequence[str],
    input_text: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = False,
    inside: ContextManager | None = None,
) -> subprocess.CompletedProcess:
    """Run `argv` to completion and return its result (stdout/stderr as text).

    Raises CommandError when the program is missing or cannot be started, when it runs longer
    than `timeout` seconds (it is killed), and with check=True when it exits non-zero."""
    argv = list(argv)
    try:
        with inside if inside is not None else contextlib.nullcontext():
            result = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} is not installed (not found on PATH); cannot run `{describe(argv)}`") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"`{describe(argv)}` did not finish within {timeout:g} s and was killed") from None
    except PermissionError as exc:
        if "/" not in argv[0] and shutil.which(argv[0]) is None:
            # execvp met an unreadable PATH directory (e.g. /root/... for a non-root user) and
            # found the command nowhere: that is "not installed", not a permission problem
            raise CommandError(f"{argv[0]} is not installed (not found on PATH); cannot run `{describe(argv)}`") from None
        raise CommandError(f"cannot run `{describe(argv)}`: {exc.strerror or exc}") from None
    except OSError as exc:
        raise CommandError(f"cannot run `{describe(argv)}`: {exc.strerror or exc}") from None
    if check and result.returncode != 0:
        raise CommandError(f"`{describe(argv)}` failed: {first_error_line(result)}")
    return result
