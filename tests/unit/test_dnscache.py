from ramfw.dns.cache import DnsCache


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_ttl_floor_and_grace():
    clock = Clock()
    c = DnsCache(min_ttl=30, grace=120, clock=clock)
    (ch,) = c.add("a.example", [("198.51.100.1", 5)])
    assert ch.expiry == 1000 + 30 + 120
    (ch,) = c.add("b.example", [("198.51.100.2", 600)])
    assert ch.expiry == 1000 + 600 + 120


def test_refresh_extends_but_never_shortens():
    clock = Clock()
    c = DnsCache(min_ttl=0, grace=0, clock=clock)
    c.add("a.example", [("198.51.100.1", 100)])
    clock.t += 10
    assert c.add("a.example", [("198.51.100.1", 50)]) == []  # 1060 < 1100: nothing to program
    assert c.add("a.example", [("198.51.100.1", 100)]) == []  # 1110: within the slack (10% of 100 s)
    clock.t += 10
    (ch,) = c.add("a.example", [("198.51.100.1", 100)])
    assert ch.expiry == 1120


def test_refresh_slack_is_capped_at_30s():
    clock = Clock()
    c = DnsCache(min_ttl=0, grace=0, clock=clock)
    c.add("a.example", [("198.51.100.1", 3600)])
    clock.t += 29
    assert c.add("a.example", [("198.51.100.1", 3600)]) == []
    clock.t += 2
    assert len(c.add("a.example", [("198.51.100.1", 3600)])) == 1


def test_gc_returns_what_expired():
    clock = Clock()
    c = DnsCache(min_ttl=0, grace=0, clock=clock)
    c.add("a.example", [("198.51.100.1", 10), ("198.51.100.2", 100)])
    clock.t += 50
    removed = c.gc()
    assert [(r.name, r.ip) for r in removed] == [("a.example", "198.51.100.1")]
    assert set(c.ips_for("a.example")) == {"198.51.100.2"}
    assert c.names_for("198.51.100.1") == set()
    clock.t += 100
    assert len(c.gc()) == 1 and c.names() == [] and len(c) == 0


def test_cap_evicts_soonest_expiring():
    clock = Clock()
    c = DnsCache(min_ttl=0, grace=0, max_ips_per_name=3, clock=clock)
    c.add("cdn.example", [("198.51.100.1", 10), ("198.51.100.2", 20), ("198.51.100.3", 30)])
    changes = c.add("cdn.example", [("198.51.100.4", 40)])
    assert set(c.ips_for("cdn.example")) == {"198.51.100.2", "198.51.100.3", "198.51.100.4"}
    assert [ch.ip for ch in changes] == ["198.51.100.4"]
    assert c.evicted == 1
    # a new answer that would itself be the soonest to expire is not programmed
    assert c.add("cdn.example", [("198.51.100.5", 1)]) == []
    assert "198.51.100.5" not in c.ips_for("cdn.example")


def test_cname_crediting_and_reverse_map():
    c = DnsCache(clock=Clock())
    c.add("registry.example", [("198.51.100.7", 60), ("2001:db8:100::7", 60)], via=("registry.example", "edge.cdn.example"))
    rec = c.ips_for("registry.example")["198.51.100.7"]
    assert rec.via == ("registry.example", "edge.cdn.example")
    assert c.names_for("198.51.100.7") == {"registry.example"}
    assert c.names_for("2001:0db8:0100::7") == {"registry.example"}  # normalised
    assert "edge.cdn.example" not in c.names()


def test_shared_ip_has_several_names():
    c = DnsCache(clock=Clock())
    c.add("a.example", [("198.51.100.9", 60)])
    c.add("b.example", [("198.51.100.9", 60)])
    assert c.names_for("198.51.100.9") == {"a.example", "b.example"}
    c.drop_names(lambda n: n != "a.example")
    assert c.names_for("198.51.100.9") == {"b.example"}


def test_snapshot_is_a_copy():
    c = DnsCache(clock=Clock())
    c.add("a.example", [("198.51.100.1", 60)])
    snap = c.snapshot()
    c.add("a.example", [("198.51.100.2", 60)])
    assert set(snap["a.example"]) == {"198.51.100.1"}
