"""A thin ctypes wrapper over the system's libnftables, one context per network namespace.

Used for writes (one script = one atomic batch) and dry-runs; reads go through ramfw/kernel/nftnl.py.

A libnftables context talks to the kernel through a netlink socket; every call here runs with the
calling thread inside the target namespace, so the socket (opened at context creation or lazily)
and every command belong to that namespace. When the library cannot be loaded, the same calls go
to `nft -f -` run inside the namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from ramfw.common import proc
from ramfw.kernel import netns
from ramfw.errors import BackendError

log = logging.getLogger(__name__)

NFT_CTX_DEFAULT = 0


def _load_library():
    for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_int
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        return lib
    return None


_LIB = _load_library()


class NftContext:
    """Runs nft commands inside one network namespace."""

    def __init__(self, netns_name: str | None = None, force_cli: bool = False):
        self.netns_name = netns_name
        self._ctx = None
        self.uses_library = _LIB is not None and not force_cli
        if self.uses_library:
            with netns.entered(netns_name):
                self._ctx = _LIB.nft_ctx_new(NFT_CTX_DEFAULT)
            if not self._ctx:
                raise BackendError("libnftables: cannot create a context")
            _LIB.nft_ctx_buffer_output(self._ctx)
            _LIB.nft_ctx_buffer_error(self._ctx)

    def close(self) -> None:
        if self._ctx:
            _LIB.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- running ----------------------------------------------------------------------------

    def run(self, command: str, dry_run: bool = False) -> str:
        """Run a command buffer in nft syntax as one batch (dry_run: validated, then aborted)."""
        if not self.uses_library:
            return self._run_cli(command, dry_run)
        _LIB.nft_ctx_set_dry_run(self._ctx, dry_run)
        with netns.entered(self.netns_name):
            rc = _LIB.nft_run_cmd_from_buffer(self._ctx, command.encode())
        out = (_LIB.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        err = (_LIB.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise BackendError(_first_error(err, command))
        return out

    def _run_cli(self, command: str, dry_run: bool) -> str:
        argv = ["nft"] + (["-c"] if dry_run else []) + ["-f", "-"]
        result = proc.run(argv, command, inside=netns.entered(self.netns_name))
        if result.returncode != 0:
            raise BackendError(_first_error(result.stderr, command))
        return result.stdout


def _first_error(err: str, command: str) -> str:
    """One line for the user: the kernel's complaint, and which command it was about."""
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    message = lines[0] if lines else "unknown error"
    culprit = lines[1] if len(lines) > 1 and not lines[1].startswith("^") else ""
    if len(culprit) > 160:
        culprit = culprit[:157] + "..."
    if len(message) > 300:
        message = message[:297] + "..."
    return f"nftables refused the change: {message}" + (f" (in: {culprit})" if culprit else "")
