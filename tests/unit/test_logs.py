import logging

from ramfw.common.logs import KeyValueFormatter, fields


def record(msg, level=logging.WARNING, **kv):
    r = logging.LogRecord("ramfw", level, __file__, 1, msg, (), None)
    if kv:
        r.__dict__.update(fields(**kv))
    return r


def test_one_line_with_key_values():
    f = KeyValueFormatter(journald=False)
    line = f.format(record("blocked: registry access", host="quay.io", dport=443, note="two words", uid=None))
    assert line == 'ramfw: warning: blocked: registry access host=quay.io dport=443 note="two words"'
    assert "\n" not in f.format(record("a\nb"))


def test_journald_gets_priorities():
    f = KeyValueFormatter(journald=True)
    assert f.format(record("x", logging.ERROR)) == "<3>x"
    assert f.format(record("y", logging.INFO, event="reloaded")) == "<6>y event=reloaded"
