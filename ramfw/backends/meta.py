"""The one line of facts both backends keep next to their rules (the policy digest, mode, audit,
snoop mode; the iptables backend adds its flavour and what it created), and its parser: status,
explain and check read it back from the kernel. Pure."""

from __future__ import annotations

from ramfw.plan import DesiredState


def meta_text(desired: DesiredState) -> str:
    """`ramfw policy=<digest> mode=<mode>[ audit=1] snoop=<mode>`: the facts every backend records."""
    return f"ramfw policy={desired.policy_digest} mode={desired.mode}{' audit=1' if desired.audit else ''} snoop={desired.dns.mode}"


def parse_meta(comment: str) -> dict[str, str]:
    """The key=value words of a meta comment (the leading `ramfw` is not one)."""
    return dict(kv.split("=", 1) for kv in comment.split() if "=" in kv)
