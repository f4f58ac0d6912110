"""Writing a WritePlan to the legacy filter table with python-iptables: one libiptc commit.

python-iptables pitfalls handled here (found on iptables 1.8.9 / python-iptables 1.2.0):
  * Table objects are cached per class and name, process-wide: a cached handle from another
    namespace would be reused. Tables are built with object.__new__ (no cache), autocommit off.
  * Target(rule, name) for any name outside its short list of standard targets (NFLOG, NFQUEUE,
    chain names) scans *all five* legacy tables through that cache, instantiating nat, mangle,
    raw and security in the namespace. Rules here are a subclass that only looks in the table
    being edited.
  * Setting `nflog_prefix` corrupts the heap (segfault/abort after a few rules); the prefix is
    written straight into the xt_nflog_info struct instead.
  * A handle is single-use after commit() (EAGAIN); every write opens a fresh one.
A legacy table cannot be removed from a namespace once instantiated (the kernel keeps it until
the namespace dies), so after `destroy()` an empty `*filter` may remain in iptables-legacy-save
where there was none; iptables-nft tables and base chains that ramfw created are deleted again.
"""

from __future__ import annotations

import collections
import ctypes
import shlex
import socket
import threading

from ramfw.errors import BackendError
from ramfw.kernel import netns
from ramfw.backends.iptables.flavour import TOOL
from ramfw.backends.iptables.render import jump_target
from ramfw.backends.iptables.write import WritePlan


_IPTC_LOCK = threading.Lock()  # libxtables keeps global state: one user at a time
_iptc_mod = None
_rule_cls: dict[int, type] = {}


def _iptc():
    """python-iptables, imported on first use (must run inside the namespace: importing it runs
    modprobe and probes extension revisions through a raw socket)."""
    global _iptc_mod
    if _iptc_mod is None:
        try:
            import iptc  # noqa: PLC0415
        except Exception as exc:  # ImportError, or XTablesError from a missing libxtables
            raise BackendError(f"python-iptables cannot be loaded: {exc}") from None
        for family, base in ((4, iptc.Rule), (6, iptc.Rule6)):
            # Look targets up in the table being edited only (see module docstring).
            _rule_cls[family] = type(f"RamfwRule{family}", (base,), {"tables": property(lambda self: self._ramfw_tables)})
        _iptc_mod = iptc
    return _iptc_mod


_FIELDS = {"-s": "src", "-d": "dst", "-p": "protocol", "-o": "out_interface", "-i": "in_interface"}
_NFLOG_PREFIX_OFFSET = 12  # struct xt_nflog_info { u32 len; u16 group, threshold, flags, pad; char prefix[64]; }


def _iptc_rule(iptc, family: int, table, args: str):
    """Build a python-iptables rule from iptables-save arguments."""
    rule = _rule_cls[family]()
    rule._ramfw_tables = [table]
    toks = shlex.split(args)
    cur = None
    nflog_prefix = None
    negate = False
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in _FIELDS:
            value = toks[i + 1]
            if tok == "-p" and not value.isdigit():
                value = str(socket.getprotobyname(value))  # python-iptables' own table lacks ipv6-icmp
            setattr(rule, _FIELDS[tok], ("!" if negate else "") + value)
            negate = False
            i += 2
        elif tok == "-m":
            cur = rule.create_match(toks[i + 1])
            i += 2
        elif tok in ("-j", "-g"):
            cur = iptc.Target(rule, toks[i + 1], goto=(tok == "-g"))
            rule.target = cur
            i += 2
        elif tok.startswith("--") and cur is not None:
            j = i + 1
            vals = []
            while j < len(toks) and toks[j] != "!" and not (toks[j].startswith("-") and toks[j] != "-"):
                vals.append(toks[j])
                j += 1
            if tok == "--nflog-prefix":
                nflog_prefix = vals[0]
            else:
                value = (["!"] if negate else []) + vals if len(vals) > 1 else ("!" if negate else "") + (vals[0] if vals else "")
                setattr(cur, tok[2:].replace("-", "_"), value)
            negate = False
            i = j
        else:
            raise BackendError(f"cannot express `{args}` with python-iptables (at {tok!r})")
    if nflog_prefix is not None:
        raw = nflog_prefix.encode()[:63] + b"\0"
        ctypes.memmove(ctypes.addressof(rule.target.target) + ctypes.sizeof(type(rule.target.target)) + _NFLOG_PREFIX_OFFSET, raw, len(raw))
    return rule


def write_iptc(netns_name, wp: WritePlan) -> None:
    """Apply a WritePlan to the legacy filter table with python-iptables: one libiptc commit."""
    tool = TOOL[("legacy", wp.family)]
    with _IPTC_LOCK, netns.entered(netns_name):
        iptc = _iptc()
        cls = iptc.Table if wp.family == 4 else iptc.Table6
        table = object.__new__(cls)  # not Table(): that returns a process-wide cached handle
        try:
            table._init("filter", False)
        except iptc.IPTCError as exc:
            raise BackendError(f"{tool}: cannot open the filter table: {_iptc_msg(exc)}") from None
        step = "prepare"
        try:
            chains = []
            name = table._iptc.iptc_first_chain(table._handle)
            while name:
                chains.append(name.decode())
                name = table._iptc.iptc_next_chain(table._handle)
            for chain in wp.chains:
                if chain not in chains:
                    step = f"-N {chain}"
                    table.create_chain(chain)
            for chain in list(wp.chains) + wp.delete_chains:
                step = f"-F {chain}"
                table.flush_entries(chain)
            for chain, specs in wp.unjump.items():
                want = collections.Counter(jump_target(s) for s in specs)
                doomed = []
                entry = table.first_rule(chain)
                n = 0
                while entry:
                    target = table.get_target(entry)
                    target = target.decode() if target else ""
                    if want[target] > 0:
                        want[target] -= 1
                        doomed.append(n)
                    entry = table.next_rule(entry)
                    n += 1
                for num in reversed(doomed):
                    step = f"-D {chain} {num + 1}"
                    if table._iptc.iptc_delete_num_entry(chain.encode(), num, table._handle) != 1:
                        raise iptc.IPTCError(table.strerror())
            for anchor, jumps in wp.jump.items():
                for pos, args in enumerate(jumps):
                    step = f"-I {anchor} {pos + 1} {args}"
                    table.insert_entry(anchor, _iptc_rule(iptc, wp.family, table, args).rule, pos)
            for chain, rules in wp.chains.items():
                for args, packets, nbytes in rules:
                    step = f"-A {chain} {args}"
                    rule = _iptc_rule(iptc, wp.family, table, args)
                    rule.counters = (packets, nbytes)
                    table.append_entry(chain, rule.rule)
            for chain in wp.delete_chains:
                step = f"-X {chain}"
                table.delete_chain(chain)
            step = "commit"
            table.commit()
        except BackendError:
            raise
        except Exception as exc:  # IPTCError, XTablesError, ValueError from extension parsers
            raise BackendError(f"{tool} (python-iptables) refused ramfw's rules at `{step}`: {_iptc_msg(exc)}") from None
        finally:
            table.close()


def _iptc_msg(exc) -> str:
    text = str(exc)
    return text.replace("b'", "").replace("'", "") if "b'" in text else text


def ensure_loaded(netns_name) -> None:
    """Import python-iptables inside the namespace now; BackendError when it cannot be loaded."""
    with netns.entered(netns_name):
        _iptc()
