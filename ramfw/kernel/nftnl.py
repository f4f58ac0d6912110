"""Read ramfw's nf_tables objects straight over netlink.

libnftables (1.0.x) fetches the whole ruleset, every set element included, before any `list`
command: over a second with 100,000 elements. status, the controller's invariant check and apply
(which carries counters across a replace) need only a few small facts, so they ask the kernel
for exactly those: the table (and its comment), its chains and rule counts, its sets, its
counter objects, and, only when asked, one set's elements.
"""

from __future__ import annotations

import errno
import ipaddress
import os

from ramfw.kernel import netns
from ramfw.kernel.netlink import (
    NLM_F_CREATE,
    NetlinkError,
    NetlinkSocket,
    attr_be32,
    attr_be64,
    attr_str,
    attr_table,
    iter_nlattrs,
    nla_be32,
    nla_be64,
    nla_nested,
    nla_pack,
    nla_str,
)

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM, NFT_MSG_GETOBJ = 1, 4, 7, 10, 13, 19
NFPROTO = {"inet": 1, "ip": 2, "ip6": 10}
NFT_OBJECT_COUNTER = 1
HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}

def _str(buf, s, e) -> str:
    return bytes(buf[s:e]).split(b"\0", 1)[0].decode(errors="replace")


def _udata_strings(buf, s: int, e: int, wanted: int) -> list[str]:
    """Values of one type in nftables' user data TLVs (type u8, length u8, value)."""
    out, i = [], s
    while i + 2 <= e:
        t, ln = buf[i], buf[i + 1]
        if t == wanted:
            out.append(_str(buf, i + 2, min(i + 2 + ln, e)))
        i += 2 + ln
    return out


class _NftSocket(NetlinkSocket):
    what = "nf_tables"

    def explain(self, action: str, err: int) -> NetlinkError:
        return NetlinkError(f"nf_tables refused the {action}: {os.strerror(err)}", err)


class NftReader:
    """One netlink socket inside the namespace; each call is one request (or dump)."""

    def __init__(self, netns_name: str | None, family: str = "inet", table: str = "ramfw"):
        self.family = NFPROTO[family]
        self.table = table
        with netns.entered(netns_name):
            self.sock = _NftSocket()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, msg: int, attrs: bytes, dump: bool) -> list[bytes]:
        """One request (or dump); the attributes of every reply. An object that does not exist
        (ENOENT) answers nothing."""
        try:
            return self.sock.request(NFNL_SUBSYS_NFTABLES, msg, self.family, attrs, "ruleset read", dump=dump)
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise

    def _table_attr(self, kind: int) -> bytes:
        return nla_pack(kind, self.table.encode() + b"\0")

    # ---- facts -----------------------------------------------------------------------------

    def table_comment(self) -> str | None:
        """None when the table does not exist; its comment ("" if none) otherwise."""
        replies = self._request(NFT_MSG_GETTABLE, self._table_attr(1), dump=False)
        if not replies:
            return None
        body = replies[0]
        a = attr_table(body, 0, len(body))
        found = _udata_strings(body, *a[6], wanted=0) if 6 in a else []  # NFTA_TABLE_USERDATA
        return found[0] if found else ""

    def chains(self) -> dict[str, str | None]:
        """chain name -> hook name (None for regular chains)."""
        out: dict[str, str | None] = {}
        for body in self._request(NFT_MSG_GETCHAIN, self._table_attr(1), dump=True):
            a = attr_table(body, 0, len(body))
            if attr_str(body, a, 1) != self.table or 3 not in a:
                continue
            hook = None
            if 4 in a:
                h = attr_table(body, *a[4])
                if 1 in h:
                    hook = HOOKS.get(attr_be32(body, h, 1), "?")
            out[attr_str(body, a, 3)] = hook
        return out

    def rule_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for body in self._request(NFT_MSG_GETRULE, self._table_attr(1), dump=True):
            a = attr_table(body, 0, len(body))
            if attr_str(body, a, 1) != self.table or 2 not in a:
                continue
            chain = attr_str(body, a, 2)
            counts[chain] = counts.get(chain, 0) + 1
        return counts

    def rule_comments(self, chain: str) -> list[str]:
        """The comments of a chain's rules (NFTA_RULE_USERDATA, comment TLV type 0)."""
        attrs = self._table_attr(1) + nla_pack(2, chain.encode() + b"\0")
        out = []
        for body in self._request(NFT_MSG_GETRULE, attrs, dump=True):
            a = attr_table(body, 0, len(body))
            if attr_str(body, a, 2) != chain or 7 not in a:
                continue
            out += _udata_strings(body, *a[7], wanted=0)
        return out

    def chain_digests(self) -> dict[str, str]:
        """chain name -> digest of its hook, policy and rules as the kernel holds them.

        Taken right after an apply, this is what ramfw put there; a later difference means
        somebody edited the chain (a rule replaced with `accept` keeps the rule count).
        Counter values change with traffic, so a counter expression contributes its name only."""
        import hashlib

        digests: dict[str, "hashlib._Hash"] = {}
        for body in self._request(NFT_MSG_GETCHAIN, self._table_attr(1), dump=True):
            a = attr_table(body, 0, len(body))
            if attr_str(body, a, 1) != self.table or 3 not in a:
                continue
            h = digests.setdefault(attr_str(body, a, 3), hashlib.sha256())
            for key in (4, 5):  # NFTA_CHAIN_HOOK (hook number, priority), NFTA_CHAIN_POLICY
                h.update(bytes([key]) + (bytes(body[slice(*a[key])]) if key in a else b"-"))
        for body in self._request(NFT_MSG_GETRULE, self._table_attr(1), dump=True):
            a = attr_table(body, 0, len(body))
            if attr_str(body, a, 1) != self.table or 2 not in a:
                continue
            h = digests.setdefault(attr_str(body, a, 2), hashlib.sha256())
            h.update(b"\nrule")
            for _t, s, e in iter_nlattrs(body, *a.get(4, (0, 0))):  # NFTA_RULE_EXPRESSIONS
                ex = attr_table(body, s, e)
                name = attr_str(body, ex, 1)
                h.update(b"|" + name.encode())
                if name != "counter" and 2 in ex:
                    h.update(bytes(body[slice(*ex[2])]))
            if 7 in a:  # NFTA_RULE_USERDATA: the comment (carries the policy digest)
                h.update(b"#" + bytes(body[slice(*a[7])]))
        return {name: h.hexdigest() for name, h in digests.items()}

    def sets(self) -> list[str]:
        names = []
        for body in self._request(NFT_MSG_GETSET, self._table_attr(1), dump=True):
            a = attr_table(body, 0, len(body))
            if attr_str(body, a, 1) == self.table and 2 in a:
                name = attr_str(body, a, 2)
                if not name.startswith("__set"):  # anonymous sets of rules like `ip daddr { … }`
                    names.append(name)
        return names

    def counters(self) -> dict[str, dict[str, int]]:
        attrs = self._table_attr(1) + nla_be32(3, NFT_OBJECT_COUNTER)
        out = {}
        for body in self._request(NFT_MSG_GETOBJ, attrs, dump=True):
            a = attr_table(body, 0, len(body))
            if attr_str(body, a, 1) != self.table or 2 not in a or 4 not in a:
                continue
            d = attr_table(body, *a[4])
            get = lambda k: attr_be64(body, d, k) or 0  # noqa: E731
            out[attr_str(body, a, 2)] = {"packets": get(2), "bytes": get(1)}
        return out

    def elements(self, set_name: str) -> dict[str, int]:
        """ip -> seconds until it expires (0 if it has no timeout)."""
        attrs = nla_pack(1, self.table.encode() + b"\0") + nla_pack(2, set_name.encode() + b"\0")
        out: dict[str, int] = {}
        for body in self._request(NFT_MSG_GETSETELEM, attrs, dump=True):
            a = attr_table(body, 0, len(body))
            if 3 not in a:
                continue
            for _t, s, e in iter_nlattrs(body, *a[3]):  # NFTA_LIST_ELEM
                el = attr_table(body, s, e)
                if 1 not in el:
                    continue
                key = attr_table(body, *el[1])
                if 1 not in key:
                    continue
                ks, ke = key[1]
                raw = bytes(body[ks:ke])
                if len(raw) not in (4, 16):
                    continue
                expires = (attr_be64(body, el, 5) or 0) // 1000
                out[str(ipaddress.ip_address(raw))] = int(expires)
        return out


# ---- element writes (the snooper's hot path) -------------------------------------------------

NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
_MAX_ELEMENTS_PER_MESSAGE = 1000


def _elem(ip: str, timeout_ms: int | None) -> bytes:
    raw = ipaddress.ip_address(ip).packed
    body = nla_nested(1, nla_pack(1, raw))  # NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }
    if timeout_ms is not None:
        body += nla_be64(4, timeout_ms)  # NFTA_SET_ELEM_TIMEOUT
    return nla_nested(1, body)  # NFTA_LIST_ELEM


class NftElementWriter(NftReader):
    """Set element changes as one nf_tables batch, straight over netlink: libnftables parses text
    and checks its cache for every command, which put a single add's p99 over a millisecond."""

    def _batch(self, messages: list[tuple[int, int, bytes]]) -> None:
        """messages: (msg type, extra flags, attrs); all or nothing."""
        self.sock.transaction(NFNL_SUBSYS_NFTABLES, self.family, messages, "element change")

    def _list_attrs(self, set_name: str, elems: bytes) -> bytes:
        return nla_str(1, self.table) + nla_str(2, set_name) + nla_nested(3, elems)

    def add(self, elements: dict[str, list[tuple[str, int]]]) -> None:
        """Add or refresh (ip, timeout seconds) per set. An existing element keeps its old timeout
        on a plain add, so each is added (so it exists), deleted and added again with the new
        timeout, in one batch: the set never lacks it. Large changes go in several batches of
        at most a thousand elements (a netlink datagram has a size limit); each is atomic."""
        for set_name, items in elements.items():
            for i in range(0, len(items), _MAX_ELEMENTS_PER_MESSAGE):
                chunk = items[i : i + _MAX_ELEMENTS_PER_MESSAGE]
                bare = self._list_attrs(set_name, b"".join(_elem(ip, None) for ip, _t in chunk))
                timed = self._list_attrs(set_name, b"".join(_elem(ip, t * 1000) for ip, t in chunk))
                self._batch([(NFT_MSG_NEWSETELEM, NLM_F_CREATE, bare), (NFT_MSG_DELSETELEM, 0, bare),
                             (NFT_MSG_NEWSETELEM, NLM_F_CREATE, timed)])

    def remove(self, elements: dict[str, list[str]]) -> None:
        for set_name, ips in elements.items():
            for i in range(0, len(ips), _MAX_ELEMENTS_PER_MESSAGE):
                bare = self._list_attrs(set_name, b"".join(_elem(ip, None) for ip in ips[i : i + _MAX_ELEMENTS_PER_MESSAGE]))
                self._batch([(NFT_MSG_NEWSETELEM, NLM_F_CREATE, bare), (NFT_MSG_DELSETELEM, 0, bare)])
