"""SNI binding on nftables' own `queue` (Debian 12's kernel has it; the development machines'
kernel lacks it, so there only the xtables fallback runs): tests/netns/test_sni.py's nft cases,
run inside the guest on its kernel, must take the native path and pass."""

from __future__ import annotations

import re

from service import enforce, policy


def test_sni_binding_on_the_native_nft_queue(bed):
    vm = bed
    vm.sh("systemctl stop ramfw && ramfw down", timeout=120)  # the in-guest tests build their own namespaces
    try:
        r = vm.run(
            "cd /opt/ramfw/src && PYTHONDONTWRITEBYTECODE=1 /opt/ramfw/venv/bin/python -m pytest -p no:cacheprovider "
            "-q -s tests/netns/test_sni.py -k 'nft and (at_once or two-segments or quic)' 2>&1",
            timeout=1200,
        )
        print(r.out[-3000:])
        assert r.ok and re.search(r"^3 passed", r.out, re.M), r.out[-6000:]
        assert "sni path: nft queue" in r.out, r.out[-6000:]
    finally:
        enforce(vm, policy())
