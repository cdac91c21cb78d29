"""Tests for the pinned design (db114b83): stable nodes that hold a reference on their KSM page.

The notes' section 7.2 and 7.5: the node's pin keeps an unmapped KSM page in memory (also
after reclaim has written it to swap) until ksmd removes the node's last rmap_item; that removal
erases the node, turns the page into a KSM page with a NULL node and drops the pin; and
cmp_and_merge_page breaks a KSM page its stable search could not find (7.5, 3a).
"""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine
from ksmsim.kernel.mm import is_swap_pte, swp_entry_to_pte
from ksmsim.kernel.page import PAGE_SIZE, PageAnon, PageKsm, PG_swapcache, page_stable_node
from ksmsim.workload.host import Host
from tests.helpers import (
    ksm_counts,
    merged_host,
    reclaim_one,
    region_page,
    single_page_batches,
    stable_node,
)

X = 0x5A
NSEC = 1_000_000_000


def _pte(host: Host, proc: str) -> int:
    return host.proc(proc).mm.pte_get(host.region(proc, "r").address)


def _merged(names: str = "pq", *, check: bool = True) -> Host:
    """One page of X in each process, merged by two passes: shared 1, sharing n-1."""
    return merged_host("pinned", names, X, check=check)


def test_stable_node_holds_a_reference() -> None:
    host = _merged()
    kpage = region_page(host, "p")
    node = stable_node(kpage)
    assert node.page is kpage
    assert (kpage.mapcount, kpage.count) == (2, 3)  # two ptes and the node's pin
    assert region_page(host, "q") is kpage
    check_all(host.machine)  # the checker counts the pin as a held reference


def test_unmapped_ksm_page_stays_until_last_item_goes() -> None:
    host = _merged()
    m = host.machine
    kpage = region_page(host, "p")
    node = stable_node(kpage)
    host.write("p", "r", 1)
    host.write("q", "r", 2)
    # Nothing maps it, but the pin keeps it: still KSM, still the node's, still counted.
    assert (kpage.mapcount, kpage.count) == (0, 1)
    assert not m.zone.is_free(kpage) and PageKsm(kpage) and node.page is kpage
    assert host.memory()["ksm_pages"] == 1
    assert ksm_counts(host) == (1, 1, 0, 0)
    # ksmd reaches p: one item goes, sharing falls; the page stays.
    assert single_page_batches(host, 1) == [(1, 0, 0, 1)]
    assert not m.zone.is_free(kpage) and node.page is kpage
    # ksmd reaches q: the last item goes, the node is erased and the pin dropped: freed.
    assert single_page_batches(host, 1) == [(0, 0, 0, 2)]
    assert m.zone.is_free(kpage)
    assert node.page is None and host.ksm.root_stable_tree.rb_node is None
    assert host.memory()["ksm_pages"] == 0
    check_all(m)


def test_last_item_leaves_mapped_page_ksm_with_null_node() -> None:
    # p and q share the KSM page; p's fork child c maps it without an rmap_item. When p and
    # q COW away, ksmd's removal of their items erases the node although c still maps the
    # page: the page becomes a KSM page with a NULL node, unpinned.
    host = _merged(check=False)
    host.fork("p", "c")
    kpage = region_page(host, "p")
    node = stable_node(kpage)
    host.write("p", "r", 1)
    host.write("q", "r", 2)
    assert (kpage.mapcount, kpage.count) == (1, 2)
    assert single_page_batches(host, 2) == [(1, 0, 0, 1), (0, 0, 0, 2)]
    assert region_page(host, "c") is kpage
    assert PageKsm(kpage) and page_stable_node(kpage) is None
    assert (kpage.mapcount, kpage.count) == (1, 1)
    assert node.page is None and host.ksm.root_stable_tree.rb_node is None


def test_ksm_page_not_found_by_stable_search_is_broken() -> None:
    # Continuing: ksmd reaches c. Its page is KSM but no node knows it, so the stable search
    # fails, and the pinned cmp_and_merge_page breaks COW on it (notes 7.5, 3a).
    host = _merged(check=False)
    host.fork("p", "c")
    kpage = region_page(host, "p")
    host.write("p", "r", 1)
    host.write("q", "r", 2)
    single_page_batches(host, 2)
    breaks = host.ksm.work.break_cows
    assert single_page_batches(host, 1) == [(0, 0, 0, 3)]
    assert host.ksm.work.break_cows == breaks + 1
    mine = region_page(host, "c")
    assert mine is not kpage and PageAnon(mine) and not PageKsm(mine)
    assert mine.data == bytes([X]) * PAGE_SIZE
    assert host.machine.zone.is_free(kpage)
    check_all(host.machine)


def test_reclaim_writes_pinned_ksm_page_but_cannot_free_it() -> None:
    host = _merged()
    m = host.machine
    kpage = region_page(host, "p")
    node = stable_node(kpage)
    m.clock_ns = 1 * NSEC
    assert reclaim_one(m, kpage) == 0
    # Unmapped from both ptes and written out, but the freeze of the count at 2 (cache and
    # reclaim) fails against the pin: it stays in the swap cache, on the inactive list.
    slot = kpage.private
    assert _pte(host, "p") == _pte(host, "q") == swp_entry_to_pte(slot)
    assert (kpage.mapcount, kpage.count) == (0, 2)
    assert kpage.flags & PG_swapcache and m.swap_cache[slot] is kpage
    assert m.swap is not None and m.swap.data[slot] == kpage.data
    assert kpage in m.lru.inactive
    assert m.ksm_unmapped_at == {kpage: 1 * NSEC}
    assert m.ksm_free_delays_ns == m.ksm_release_delays_ns == []
    assert m.vmstat["ksm_pages_unmapped"] == 1
    assert node.page is kpage and ksm_counts(host) == (1, 1, 0, 0)
    check_all(m)


def test_pinned_page_is_freeable_once_ksmd_removed_its_last_item() -> None:
    host = _merged()
    m = host.machine
    kpage = region_page(host, "p")
    m.clock_ns = 1 * NSEC
    reclaim_one(m, kpage)
    # A reclaim pass before ksmd has been round frees nothing either.
    m.clock_ns = 2 * NSEC
    assert reclaim_one(m, kpage) == 0
    # ksmd's pass finds both addresses swapped out and prunes their items: the node goes and
    # the pin with it. The page is left in the swap cache alone, a KSM page with no node.
    m.clock_ns = 3 * NSEC
    host.scan(1)
    assert ksm_counts(host) == (0, 0, 0, 0)
    assert (kpage.mapcount, kpage.count) == (0, 1)
    assert PageKsm(kpage) and page_stable_node(kpage) is None
    assert kpage in m.ksm_unmapped_at and m.ksm_free_delays_ns == []
    # It became freeable (released) when ksmd dropped the pin.
    assert m.ksm_release_delays_ns == [2 * NSEC]
    # Now reclaim can free it: the delay runs from the first unmap to this free.
    m.clock_ns = 5 * NSEC
    assert reclaim_one(m, kpage) == 1
    assert m.zone.is_free(kpage) and m.swap_cache == {}
    assert m.ksm_unmapped_at == {}
    assert m.ksm_free_delays_ns == [4 * NSEC]
    assert m.ksm_release_delays_ns == [2 * NSEC]  # released once, not again when freed
    # The contents live on in the slot both ptes refer to.
    assert m.swap is not None and m.swap.swap_map[1] == 2
    host.read("q", "r")
    assert region_page(host, "q").data == bytes([X]) * PAGE_SIZE
    check_all(m)


def test_swap_in_before_ksmd_remaps_the_pinned_page() -> None:
    host = _merged()
    m = host.machine
    kpage = region_page(host, "p")
    node = stable_node(kpage)
    reclaim_one(m, kpage)
    host.read("q", "r")
    # Still the node's page in the swap cache: q maps it again as the KSM page it is.
    assert region_page(host, "q") is kpage
    assert PageKsm(kpage) and page_stable_node(kpage) is node
    assert (kpage.mapcount, kpage.count) == (1, 3)
    assert is_swap_pte(_pte(host, "p"))
    assert (m.vmstat["pgmajfault"], m.vmstat["ksm_swpin_copy"]) == (0, 0)
    host.scan(1)
    # p's item was pruned (its address is swapped out); q's stays on the node.
    assert ksm_counts(host) == (1, 0, 0, 0)
    check_all(m)


def test_swapped_in_orphan_ksm_page_is_broken_by_next_pass() -> None:
    # The KSM page with a NULL node that ksmd left in the swap cache is mapped as it is by a
    # swap-in (page_anon_vma() is NULL for a KSM page), and the next pass breaks it.
    host = _merged(check=False)
    m = host.machine
    kpage = region_page(host, "p")
    reclaim_one(m, kpage)
    host.scan(1)
    host.read("p", "r")
    assert region_page(host, "p") is kpage
    assert PageKsm(kpage) and page_stable_node(kpage) is None
    assert (kpage.mapcount, kpage.count, m.vmstat["ksm_swpin_copy"]) == (1, 2, 0)
    host.scan(1)
    mine = region_page(host, "p")
    assert mine is not kpage and not PageKsm(mine)
    assert mine.data == bytes([X]) * PAGE_SIZE
    assert (kpage.mapcount, kpage.count) == (0, 1)  # the swap cache's page, q's slot
    assert is_swap_pte(_pte(host, "q"))
    check_all(m)


def _orphan_mapped_by_fork_child() -> Machine:
    host = _merged(check=False)
    host.fork("p", "c")
    host.write("p", "r", 1)
    host.write("q", "r", 2)
    single_page_batches(host, 2)  # a quiescent point between ksmd batches, before ksmd reaches c
    return host.machine


def _orphan_mapped_by_swap_in() -> Machine:
    host = _merged(check=False)
    m = host.machine
    reclaim_one(m, region_page(host, "p"))
    host.scan(1)
    host.read("p", "r")
    return host.machine


@pytest.mark.parametrize("build", [_orphan_mapped_by_fork_child, _orphan_mapped_by_swap_in])
def test_invariants_accept_pinned_orphan_ksm_page(build: object) -> None:
    assert callable(build)
    m = build()
    check_all(m)


def test_free_delay_counts_from_the_last_unmap() -> None:
    host = _merged()
    m = host.machine
    kpage = region_page(host, "p")
    m.clock_ns = 1 * NSEC
    reclaim_one(m, kpage)
    m.clock_ns = 2 * NSEC
    host.read("p", "r")
    host.read("q", "r")
    assert kpage.mapcount == 2  # in use again
    m.clock_ns = 3 * NSEC
    reclaim_one(m, kpage)
    assert m.vmstat["ksm_pages_unmapped"] == 2
    m.clock_ns = 4 * NSEC
    host.scan(1)
    m.clock_ns = 5 * NSEC
    assert reclaim_one(m, kpage) == 1
    assert m.ksm_free_delays_ns == [2 * NSEC]
