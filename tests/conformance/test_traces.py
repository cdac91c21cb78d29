"""The worked traces T1-T6 of ksm-kernel-notes.md section 14, counter by counter (keyhole)."""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.workload.host import Host

PAGE = 4096


def counters(host: Host) -> tuple[int, int, int, int]:
    """Return (shared, sharing, unshared, volatile)."""
    c = host.counters()
    return c["pages_shared"], c["pages_sharing"], c["pages_unshared"], c["pages_volatile"]


def make_host(**kw: int) -> Host:
    host = Host("keyhole", ram_pages=kw.get("ram_pages", 4096), check=True)
    host.set_tunable("pages_to_scan", 1_000_000)
    return host


def one_page(host: Host, proc: str, content: bytes, region: str = "r") -> None:
    if proc not in host.procs:
        host.spawn(proc)
    host.mmap(proc, region, 1)
    host.fill(proc, region, content[0])


def scan(host: Host) -> tuple[int, int, int, int]:
    assert host.scan(1)
    check_all(host.machine)
    return counters(host)


def test_t1_two_processes_one_page_each() -> None:
    host = make_host()
    one_page(host, "A", b"X")
    one_page(host, "B", b"X")
    assert scan(host) == (0, 0, 0, 2)
    assert host.counters()["full_scans"] == 1
    assert scan(host) == (1, 1, 0, 0)
    assert host.counters()["full_scans"] == 2


def test_t2_ten_equal_pages_in_one_process() -> None:
    host = make_host()
    host.spawn("P")
    host.mmap("P", "r", 10)
    host.fill("P", "r", ord("X"))
    assert scan(host) == (0, 0, 0, 10)
    assert scan(host) == (1, 9, 0, 0)


def test_t2_late_registrant_merges_on_first_visit() -> None:
    """2.6.33 ordering: the stable tree is searched before the checksum."""
    host = make_host()
    host.spawn("P")
    host.mmap("P", "r", 10)
    host.fill("P", "r", ord("X"))
    scan(host)
    scan(host)
    one_page(host, "C", b"X")
    assert scan(host) == (1, 10, 0, 0)


def test_t3_cow_then_free_node_dies_in_unrelated_walk() -> None:
    host = make_host()
    one_page(host, "A", b"X")
    one_page(host, "B", b"X")
    scan(host)
    assert scan(host) == (1, 1, 0, 0)
    host.fill("A", "r", ord("Y"))
    assert counters(host) == (1, 1, 0, 0), "counters lag until ksmd revisits"
    assert scan(host) == (1, 0, 0, 1)
    host.fill("B", "r", ord("Z"))
    assert counters(host) == (1, 0, 0, 1)
    assert host.memory()["ksm_pages"] == 0, "keyhole: the KSM page is freed at once"
    assert scan(host) == (0, 0, 1, 1)


def test_t4_forked_cow_shared_pages_do_not_merge() -> None:
    host = make_host()
    one_page(host, "P", b"X")
    host.fork("P", "C")
    assert scan(host) == (0, 0, 0, 2)
    for _ in range(3):
        assert scan(host) == (0, 0, 1, 1)


def test_t5_stale_node_aborts_the_search() -> None:
    """A walk that meets a freed KSM page's node prunes it and gives up (keyhole only)."""
    host = make_host()
    host.spawn("P1")
    host.mmap("P1", "x", 2)
    host.fill("P1", "x", ord("X"))
    host.spawn("P2")
    host.mmap("P2", "w", 2)
    host.fill("P2", "w", ord("W"))
    scan(host)
    assert scan(host) == (2, 2, 0, 0)
    # Stable tree: X was inserted first (root), W went to its left.
    root = host.ksm.root_stable_tree.rb_node
    assert root is not None and root.page is not None  # type: ignore[attr-defined]
    assert root.page.data[:1] == b"X"  # type: ignore[attr-defined]
    host.fill("P1", "x", ord("Y"))  # every mapper of X copies: X's page is freed
    host.mmap("P1", "n", 1)  # mapped lower, so scanned before P1's x pages
    host.fill("P1", "n", ord("W"))
    # The new W page's stable search meets stale X first: X is pruned, the search gives up.
    assert scan(host) == (1, 1, 0, 3)
    # Next pass it finds W; the two Y pages pair up into a new KSM page.
    assert scan(host) == (2, 3, 0, 0)


def test_t6_run2_unmerges_everything_and_zeroes_full_scans() -> None:
    host = make_host()
    host.spawn("P")
    host.mmap("P", "r", 10)
    host.fill("P", "r", ord("X"))
    scan(host)
    scan(host)
    host.unmerge_all()
    assert counters(host) == (0, 0, 0, 0)
    c = host.counters()
    assert c["full_scans"] == 0 and c["run"] == 0
    assert host.memory()["ksm_pages"] == 0
    assert len(list(host.ksm.slots())) == 1, "slots stay registered"
    assert scan(host) == (0, 0, 0, 10), "oldchecksum was lost with the items"
    assert scan(host) == (1, 9, 0, 0)


@pytest.mark.parametrize("order", ["A-first", "B-first"])
def test_t3_end_counts_do_not_depend_on_who_finds_the_stale_node(order: str) -> None:
    host = make_host()
    first, second = ("A", "B") if order == "A-first" else ("B", "A")
    one_page(host, first, b"X")
    one_page(host, second, b"X")
    scan(host)
    scan(host)
    host.fill("A", "r", ord("Y"))
    host.fill("B", "r", ord("Z"))
    scan(host)
    assert counters(host) == (0, 0, 0, 2)
    # Both checksums are stable now: Y and Z wait, unmatched, in the unstable tree.
    assert scan(host) == (0, 0, 2, 0)
