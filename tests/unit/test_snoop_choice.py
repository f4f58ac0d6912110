"""Which snooping mechanism the controller picks: the backend says how it can queue DNS answers."""

import pytest

from ramfw.daemon.controller import choose_snoop_mode
from ramfw.errors import BackendError


class Queues:
    def __init__(self, mechanism: str):
        self.mechanism = mechanism

    def queue_mechanism(self) -> str:
        return self.mechanism


def test_queue_when_the_backend_can_hold_answers():
    assert choose_snoop_mode("auto", Queues("nft queue")) == ("queue", "queue via nft queue")
    assert choose_snoop_mode("queue", Queues("xtables NFQUEUE")) == ("queue", "queue via xtables NFQUEUE")


def test_log_when_it_cannot_or_when_asked():
    assert choose_snoop_mode("auto", Queues("")) == ("log", "log (NFLOG): no queue mechanism available")
    assert choose_snoop_mode("log", Queues("nft queue")) == ("log", "log (NFLOG)")
    assert choose_snoop_mode("off", Queues("nft queue"))[0] == "off"


def test_queue_demanded_but_impossible_is_one_clear_error():
    with pytest.raises(BackendError, match="^dns.snoop = queue, but neither nft queue nor iptables-nft NFQUEUE is available; use snoop = log$"):
        choose_snoop_mode("queue", Queues(""))


def test_each_backend_names_its_own_mechanism():
    from ramfw.backends.iptables.backend import IptablesBackend
    from ramfw.backends.nft.backend import NftBackend

    assert NftBackend(None, {"queue": True}).queue_mechanism() == "nft queue"
    assert IptablesBackend(None, use_python_iptables=False).queue_mechanism() == "xtables NFQUEUE"
