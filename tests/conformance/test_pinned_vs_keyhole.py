"""The pinned design against the keyhole, side by side: the notes' section 7.5, one test per
observable difference, each run under both profiles with the outcome each design must give.

(a) memory: a KSM page nobody maps is freed at once (keyhole) or kept by its node's pin until
    ksmd removes the last rmap_item (pinned);
(b) search outcomes: the pinned orphan can still be matched and revived by a new equal page,
    where the keyhole's walk finds the node stale and prunes it;
(c) counter timing: pinned counters fall one item at a time as ksmd reaches each address; the
    keyhole drops the whole node on the first get_ksm_page (pages_volatile jumps);
(d) a fork child mapping a KSM page whose node went: pinned breaks it after the failed search,
    the keyhole never lets the node go while the page lives;
(e) reclaim: the keyhole frees an unmapped KSM page in the same reclaim pass, the pinned page
    stays in the swap cache until ksmd lets go of it.
"""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.mm import is_swap_pte
from ksmsim.kernel.page import PAGE_SIZE, PageKsm, PG_swapcache, page_stable_node
from ksmsim.workload.host import Host
from tests.helpers import (
    add_process,
    ksm_counts,
    merged_host,
    reclaim_one,
    region_page,
    single_page_batches,
)

DESIGNS = ["keyhole", "pinned"]
X = 0x5A
NSEC = 1_000_000_000


def _host(kernel: str) -> Host:
    return Host(kernel, ram_pages=200, swap_pages=64, check=True)


@pytest.mark.parametrize("kernel", DESIGNS)
def test_a_unmapped_ksm_page_freed_at_once_or_kept_by_pin(kernel: str) -> None:
    host = merged_host(kernel, "pq", X)
    m = host.machine
    kpage = region_page(host, "p")
    free_before = m.zone.nr_free
    host.write("p", "r", 1)
    host.write("q", "r", 2)
    # Two private copies were allocated; the KSM page went too (keyhole) or stayed (pinned).
    if kernel == "keyhole":
        assert m.zone.is_free(kpage)
        assert host.memory()["ksm_pages"] == 0
        assert m.zone.nr_free == free_before - 1
    else:
        assert not m.zone.is_free(kpage) and PageKsm(kpage)
        assert (kpage.mapcount, kpage.count) == (0, 1)
        assert host.memory()["ksm_pages"] == 1
        assert m.zone.nr_free == free_before - 2
    # Either way the counters wait for ksmd.
    assert ksm_counts(host) == (1, 1, 0, 0)
    host.scan(1)
    assert ksm_counts(host) == (0, 0, 0, 2)
    assert m.zone.is_free(kpage) and host.memory()["ksm_pages"] == 0


@pytest.mark.parametrize("kernel", DESIGNS)
def test_b_orphaned_ksm_page_revived_or_pruned(kernel: str) -> None:
    host = _host(kernel)
    # r registers first (so ksmd reaches it first in every pass) but writes nothing yet.
    add_process(host, "r", None)
    add_process(host, "p", X)
    add_process(host, "q", X)
    host.scan(2)
    assert ksm_counts(host) == (1, 1, 0, 0)
    kpage = region_page(host, "p")
    host.write("p", "r", 1)
    host.write("q", "r", 2)
    host.fill("r", "r", X)
    host.scan(1)
    if kernel == "pinned":
        # r's stable search met the orphan, valid and equal: r merged into it, and the node
        # (which never went stale) lives on with r's item after p's and q's were removed.
        assert region_page(host, "r") is kpage and PageKsm(kpage)
        assert [i.mm.name for i in page_stable_node(kpage).items()] == ["r"]
        assert ksm_counts(host) == (1, 0, 0, 2)
        assert host.memory()["ksm_pages"] == 1
    else:
        # r's walk found the node stale: the whole node was pruned, the search gave up and
        # r's page only had its checksum recorded.
        assert not PageKsm(region_page(host, "r"))
        assert host.ksm.root_stable_tree.rb_node is None
        assert ksm_counts(host) == (0, 0, 0, 3)
        assert host.memory()["ksm_pages"] == 0
        host.scan(1)
        # A second visit with unchanged contents: all three pages (r, and p's and q's
        # private copies) enter the unstable tree; none of them is equal to another.
        assert ksm_counts(host) == (0, 0, 3, 0)


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("keyhole", [(0, 0, 0, 4), (0, 0, 0, 4), (0, 0, 0, 4), (0, 0, 0, 4)]),
        ("pinned", [(1, 2, 0, 1), (1, 1, 0, 2), (1, 0, 0, 3), (0, 0, 0, 4)]),
    ],
)
def test_c_counters_fall_per_item_or_per_node(
    kernel: str, expected: list[tuple[int, int, int, int]]
) -> None:
    host = merged_host(kernel, "abcd", X)
    for name in "abcd":
        host.write(name, "r", 1)
    assert ksm_counts(host) == (1, 3, 0, 0)
    assert single_page_batches(host, 4) == expected
    assert host.ksm.ksm_scan.seqnr == 2  # all within the third pass
    check_all(host.machine)


@pytest.mark.parametrize("kernel", DESIGNS)
def test_c_keyhole_node_dropped_by_an_unrelated_walk(kernel: str) -> None:
    # T3's second half: ksmd reaches n (registered first, a new page of other contents)
    # before any of the node's own addresses. The keyhole's walk through the freed node drops
    # it whole; the pinned walk compares with the still valid page and leaves the node alone.
    host = _host(kernel)
    add_process(host, "n", None)
    for name in "ab":
        add_process(host, name, X)
    host.scan(2)
    for name in "ab":
        host.write(name, "r", 1)
    host.fill("n", "r", 0x10)
    assert single_page_batches(host, 1) == [(0, 0, 0, 3) if kernel == "keyhole" else (1, 1, 0, 1)]


@pytest.mark.parametrize("kernel", DESIGNS)
def test_d_fork_child_of_orphaned_ksm_page(kernel: str) -> None:
    host = merged_host(kernel, "pq", X, check=False)
    host.fork("p", "c")
    kpage = region_page(host, "p")
    host.write("p", "r", 1)
    host.write("q", "r", 2)
    host.scan(1)
    if kernel == "pinned":
        # The node went with q's item; c's KSM page was not found by the stable search and
        # was broken: c has a private copy, nothing is shared.
        assert host.ksm.work.break_cows == 1
        assert not PageKsm(region_page(host, "c"))
        assert host.machine.zone.is_free(kpage)
        assert ksm_counts(host) == (0, 0, 0, 3)
    else:
        # The page lives (c maps it), so its node stayed with an empty hlist; c's visit took
        # the "ksm page forked" path and appended c's item: shared again.
        assert host.ksm.work.break_cows == 0
        assert region_page(host, "c") is kpage and PageKsm(kpage)
        assert [i.mm.name for i in page_stable_node(kpage).items()] == ["c"]
        assert ksm_counts(host) == (1, 0, 0, 2)
    check_all(host.machine)


@pytest.mark.parametrize("kernel", DESIGNS)
def test_e_reclaimed_ksm_page_freed_in_same_pass_or_after_ksmd(kernel: str) -> None:
    host = merged_host(kernel, "pq", X)
    m = host.machine
    kpage = region_page(host, "p")
    m.clock_ns = 1 * NSEC
    freed = reclaim_one(m, kpage)
    assert m.vmstat["ksm_pages_unmapped"] == 1
    assert m.vmstat["pswpout"] == 1
    for name in "pq":
        assert is_swap_pte(host.proc(name).mm.pte_get(host.region(name, "r").address))
    if kernel == "keyhole":
        assert freed == 1
        assert m.zone.is_free(kpage) and m.swap_cache == {}
        assert m.ksm_unmapped_at == {} and m.ksm_free_delays_ns == [0]
        assert m.ksm_release_delays_ns == [0]
    else:
        assert freed == 0
        assert kpage.flags & PG_swapcache and kpage.count == 2
        assert m.ksm_unmapped_at == {kpage: 1 * NSEC} and m.ksm_free_delays_ns == []
        assert m.ksm_release_delays_ns == []
    assert host.memory()["swap_cache_pages"] == (0 if kernel == "keyhole" else 1)
    # ksmd's next pass prunes both items: that drops the pin; the next reclaim frees it.
    m.clock_ns = 2 * NSEC
    host.scan(1)
    assert ksm_counts(host) == (0, 0, 0, 0)
    # Released: freed at once (keyhole), or freeable once ksmd dropped the pin (pinned).
    assert m.ksm_release_delays_ns == ([0] if kernel == "keyhole" else [1 * NSEC])
    m.clock_ns = 3 * NSEC
    if kernel == "pinned":
        assert reclaim_one(m, kpage) == 1
        assert m.ksm_free_delays_ns == [2 * NSEC]
    assert m.zone.is_free(kpage) and m.swap_cache == {}
    assert m.ksm_unmapped_at == {}
    # The contents are safe in swap either way.
    host.read("p", "r")
    assert region_page(host, "p").data == bytes([X]) * PAGE_SIZE
    check_all(m)
