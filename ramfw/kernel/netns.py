"""Enter a network namespace for the duration of a block.

setns(2) with CLONE_NEWNET changes only the calling thread, so a `with entered(name):` block
is safe in a multi-threaded process: sockets (netlink, libnftables contexts, resolvers) created
inside the block stay bound to the target namespace after the block ends, which is the point.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

from ramfw.errors import NetnsError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)} (are you root?)")


def current_ns_id() -> str:
    """Identity of this thread's network namespace, e.g. 'net:[4026531840]'."""
    return os.readlink("/proc/thread-self/ns/net")


def ns_id(name: str | None) -> str:
    if name is None:
        return current_ns_id()
    require(name)
    return "net:[%d]" % os.stat(netns_path(name)).st_ino


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def _not_found(name: str) -> NetnsError:
    path = netns_path(name)
    return NetnsError(f"network namespace {name!r} not found (no {path}); create it with 'ip netns add {name}'")


def require(name: str | None) -> None:
    """Fail with the one-line error when a named namespace does not exist."""
    if name is not None and not exists(name):
        raise _not_found(name)


@contextlib.contextmanager
def entered(name: str | None):
    """Run the block inside network namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    path = netns_path(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _not_found(name) from None
    except PermissionError:
        raise NetnsError(f"cannot open {path}: permission denied (run as root)") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def resolv_conf_path(name: str | None) -> str:
    """The resolv.conf a process in this namespace sees under `ip netns exec` conventions."""
    if name is not None:
        per_ns = os.path.join("/etc/netns", name, "resolv.conf")
        if os.path.exists(per_ns):
            return per_ns
    return "/etc/resolv.conf"
