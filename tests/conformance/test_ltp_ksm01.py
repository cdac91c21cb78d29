"""LTP ksm01's flow (testcases/kernel/mem/ksm, create_same_memory) on the keyhole profile.

Three processes fill their memory in four rounds (c/a/a, c/b/a, d/d/d, then d/d/d with the
last byte of process 1 set to 'e'); after each round ksmd runs three full scans and the
counters must be exactly LTP's. Then run=2 and run=0 bring every counter back to zero.
"""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.workload.host import Host

MIB_PAGES = 256


def run_ksm01(pages_per_proc: int, unit_pages: int, *, check: bool) -> list[tuple[int, ...]]:
    n = 3 * pages_per_proc
    host = Host("keyhole", ram_pages=max(4 * n, 4096))
    host.set_tunable("pages_to_scan", n)
    host.set_tunable("sleep_millisecs", 0)
    procs = ["child0", "child1", "child2"]
    units = pages_per_proc // unit_pages
    for name in procs:
        host.spawn(name)
        for u in range(units):
            host.mmap(name, f"unit{u}", unit_pages)
    rounds = [b"caa", b"cba", b"ddd", b"ddd"]
    seen: list[tuple[int, ...]] = []
    for j, data in enumerate(rounds):
        for name, value in zip(procs, data, strict=True):
            for u in range(units):
                host.fill(name, f"unit{u}", value)
        if j == 3:
            host.write("child1", f"unit{units - 1}", ord("e"), offset=4095, start=unit_pages - 1)
        assert host.scan(3)
        if check:
            check_all(host.machine)
        c = host.counters()
        seen.append(
            (c["pages_shared"], c["pages_sharing"], c["pages_volatile"], c["pages_unshared"])
        )
    host.sysfs.write("run", 2)
    c = host.counters()
    seen.append((c["pages_shared"], c["pages_sharing"], c["pages_volatile"], c["pages_unshared"]))
    host.sysfs.write("run", 0)
    c = host.counters()
    seen.append((c["pages_shared"], c["pages_sharing"], c["pages_volatile"], c["pages_unshared"]))
    if check:
        check_all(host.machine)
    return seen


def expected(n: int) -> list[tuple[int, ...]]:
    """LTP's (shared, sharing, volatile, unshared) per round, then after run=2 and run=0."""
    return [
        (2, n - 2, 0, 0),
        (3, n - 3, 0, 0),
        (1, n - 1, 0, 0),
        (1, n - 2, 0, 1),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
    ]


@pytest.mark.parametrize(("pages", "unit"), [(8, 8), (64, 16), (MIB_PAGES, MIB_PAGES)])
def test_ksm01_small(pages: int, unit: int) -> None:
    assert run_ksm01(pages, unit, check=True) == expected(3 * pages)


@pytest.mark.slow
def test_ksm01_full_size() -> None:
    """The real thing: 3 x 128 MiB in 1 MiB units (N = 98,304)."""
    assert run_ksm01(128 * MIB_PAGES, MIB_PAGES, check=False) == expected(3 * 128 * MIB_PAGES)
