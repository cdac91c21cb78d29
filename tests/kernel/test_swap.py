"""Tests for swap: slots, the swap cache, pageout, do_swap_page and KSM pages going to swap.

The machine-level tests drive reclaim's own functions on one page at a time (``reclaim_one``
clears the young bits and hands the page to shrink_page_list, as reclaim does once the page
has aged), so every count, flag, pte and slot can be asserted exactly. The KSM tests follow
the notes' section 9: try_to_unmap through the stable node's items in two rounds, and
ksm_might_need_to_copy on swap-in.
"""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.memory import (
    VM_FAULT_OOM,
    FaultError,
    handle_mm_fault,
    peek_user_page,
    read_user_byte,
    write_user_bytes,
)
from ksmsim.kernel.mm import (
    MmStruct,
    is_swap_pte,
    pte_dirty,
    pte_pfn,
    pte_present,
    pte_write,
    swp_entry_to_pte,
)
from ksmsim.kernel.mmap import do_mmap_anon, do_munmap
from ksmsim.kernel.page import (
    Page,
    PageAnon,
    PageKsm,
    PG_active,
    PG_dirty,
    PG_lru,
    PG_swapcache,
    page_anon_vma,
    page_stable_node,
)
from ksmsim.kernel.profile import KEYHOLE
from ksmsim.kernel.swap_state import add_to_swap, delete_from_swap_cache
from ksmsim.kernel.swapfile import (
    SwapInfo,
    free_swap_and_cache,
    reuse_swap_page,
    try_to_free_swap,
)
from ksmsim.kernel.vmscan import (
    SWAP_FAIL,
    SWAP_SUCCESS,
    page_referenced,
    pageout,
    try_to_unmap,
)
from ksmsim.workload.host import Host
from tests.helpers import (
    P,
    filled,
    mapped_page,
    merged_host,
    process_with_pages,
    reclaim_one,
    region_page,
    small_machine,
)

X = 0x5A


def _slot(mm: MmStruct, addr: int) -> int:
    pte = mm.pte_get(addr)
    assert is_swap_pte(pte), f"{pte:#x} is not a swap entry"
    return pte_pfn(pte)


# -- the swap device ---------------------------------------------------------------------------


def test_swap_info_allocates_slots_in_order_until_full() -> None:
    swap = SwapInfo(3)
    assert (swap.nr_slots, swap.inuse_pages, swap.nr_free()) == (3, 0, 3)
    assert [swap.get_swap_page() for _ in range(4)] == [1, 2, 3, 0]
    assert list(swap.has_cache) == [0, 1, 1, 1]
    assert swap.swap_map == [0, 0, 0, 0]
    assert (swap.inuse_pages, swap.nr_free()) == (3, 0)


def test_swap_info_slot_is_free_only_without_ptes_and_cache() -> None:
    swap = SwapInfo(3)
    for _ in range(3):
        swap.get_swap_page()
    swap.data[2] = filled(2)
    swap.swap_duplicate(2)
    swap.swap_duplicate(2)
    assert swap.page_swapcount(2) == 2
    swap.swapcache_free(2)
    assert (swap.has_cache[2], swap.inuse_pages, 2 in swap.data) == (0, 3, True)
    swap.swap_free(2)
    assert (swap.swap_map[2], swap.inuse_pages, 2 in swap.data) == (1, 3, True)
    swap.swap_free(2)
    assert (swap.swap_map[2], swap.inuse_pages, 2 in swap.data) == (0, 2, False)
    with pytest.raises(AssertionError, match="no references"):
        swap.swap_free(2)
    # The next allocation scans on from the last one (slot 4 wraps to 1, taken) and finds 2.
    assert swap.get_swap_page() == 2
    assert swap.inuse_pages == 3


def test_swap_info_without_slots_and_vm_swap_full() -> None:
    assert SwapInfo(0).get_swap_page() == 0
    swap = SwapInfo(4)
    swap.get_swap_page()
    swap.get_swap_page()
    assert not swap.vm_swap_full()  # 2 of 4: not more than half
    swap.get_swap_page()
    assert swap.vm_swap_full()


def test_add_to_swap_gives_a_cached_dirty_slot() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x11])
    page = mapped_page(mm, a)
    assert page.count == 1
    assert add_to_swap(m, page)
    assert page.flags & (PG_swapcache | PG_dirty) == PG_swapcache | PG_dirty
    assert (page.private, page.count, page.mapcount) == (1, 2, 1)
    assert m.swap_cache == {1: page}
    assert m.swap is not None
    assert (m.swap.has_cache[1], m.swap.swap_map[1], m.swap.inuse_pages) == (1, 0, 1)
    assert 1 not in m.swap.data
    pageout(m, page)
    assert m.swap.data[1] == filled(0x11)
    assert not page.flags & PG_dirty
    assert m.vmstat["pswpout"] == 1
    check_all(m)


def test_add_to_swap_fails_without_swap_or_free_slot() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=128))
    mm, a = process_with_pages(m, "a", [1])
    assert m.swap is None
    assert not add_to_swap(m, mapped_page(mm, a))
    m = small_machine(swap=1)
    mm, a = process_with_pages(m, "a", [1, 2])
    assert add_to_swap(m, mapped_page(mm, a))
    assert not add_to_swap(m, mapped_page(mm, a + P))
    assert not mapped_page(mm, a + P).flags & PG_swapcache


def test_delete_from_swap_cache_frees_slot_and_drops_reference() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [1])
    page = mapped_page(mm, a)
    add_to_swap(m, page)
    delete_from_swap_cache(m, page)
    assert m.swap is not None
    assert (page.count, page.private, m.swap_cache, m.swap.inuse_pages) == (1, 0, {}, 0)
    assert not page.flags & PG_swapcache
    check_all(m)


# -- swap-out and swap-in of ordinary pages ------------------------------------------------------


def test_reclaim_writes_page_to_swap_and_frees_frame() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x42])
    page = mapped_page(mm, a)
    nr_free = m.zone.nr_free
    assert reclaim_one(m, page) == 1
    assert mm.pte_get(a) == swp_entry_to_pte(1)
    assert m.swap is not None
    assert (m.swap.swap_map[1], m.swap.has_cache[1], m.swap.inuse_pages) == (1, 0, 1)
    assert m.swap.data[1] == filled(0x42)
    assert m.swap_cache == {}
    assert m.zone.is_free(page) and page.data is None
    assert m.zone.nr_free == nr_free + 1
    assert (mm.anon_rss, m.nr_anon_pages, len(m.lru)) == (0, 0, 0)
    assert m.vmstat["pswpout"] == 1
    assert peek_user_page(mm, a) == filled(0x42)
    check_all(m)


def test_read_fault_on_swap_entry_misses_cache_and_reads_slot() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x42])
    reclaim_one(m, mapped_page(mm, a))
    assert read_user_byte(mm, a + 7) == 0x42
    page = mapped_page(mm, a)
    pte = mm.pte_get(a)
    assert not pte_write(pte) and not pte_dirty(pte)
    assert (m.vmstat["pgmajfault"], m.vmstat["pswpin"]) == (1, 1)
    # The page stays in the swap cache (swap is not full); the pte's slot reference is gone.
    assert m.swap_cache == {1: page}
    assert m.swap is not None
    assert (m.swap.swap_map[1], m.swap.has_cache[1], m.swap.inuse_pages) == (0, 1, 1)
    assert (page.count, page.mapcount, page.private) == (2, 1, 1)
    assert PageAnon(page) and not PageKsm(page)
    [vma] = mm.mmap
    assert page_anon_vma(page) is vma.anon_vma
    assert page.data == filled(0x42)
    # A page read from swap goes on the inactive list.
    assert page.flags & (PG_lru | PG_active) == PG_lru
    assert page in m.lru.inactive
    assert mm.anon_rss == 1 and m.nr_anon_pages == 1
    check_all(m)


def test_read_fault_hits_page_still_in_swap_cache() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x42])
    page = mapped_page(mm, a)
    # Unmapped but not yet freed: add_to_swap and try_to_unmap without the pageout.
    assert add_to_swap(m, page)
    assert try_to_unmap(m, page) == SWAP_SUCCESS
    assert (page.count, page.mapcount) == (1, 0)
    assert mm.pte_get(a) == swp_entry_to_pte(1)
    assert read_user_byte(mm, a) == 0x42
    assert mapped_page(mm, a) is page
    assert (m.vmstat["pgmajfault"], m.vmstat["pswpin"]) == (0, 0)
    assert (page.count, page.mapcount) == (2, 1)
    assert m.swap is not None
    assert (m.swap.swap_map[1], m.swap.has_cache[1]) == (0, 1)
    check_all(m)


def test_write_fault_of_last_user_reuses_page_and_frees_slot() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x42])
    reclaim_one(m, mapped_page(mm, a))
    write_user_bytes(mm, a + 1, b"\x99")
    page = mapped_page(mm, a)
    pte = mm.pte_get(a)
    assert pte_write(pte) and pte_dirty(pte)
    assert m.vmstat["pgmajfault"] == 1
    # reuse_swap_page() took the page out of the swap cache: its slot is free again.
    assert not page.flags & PG_swapcache
    assert m.swap_cache == {}
    assert m.swap is not None
    assert (m.swap.swap_map[1], m.swap.has_cache[1], m.swap.inuse_pages) == (0, 0, 0)
    assert m.swap.data == {}
    assert (page.count, page.mapcount) == (1, 1)
    assert page.data == filled(0x42)[:1] + b"\x99" + filled(0x42)[2:]
    check_all(m)


def test_fork_duplicates_swap_entries() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "parent", [0x42, 0x43])
    reclaim_one(m, mapped_page(mm, a))
    child = m.fork(mm, "child")
    assert child.pte_get(a) == mm.pte_get(a) == swp_entry_to_pte(1)
    assert m.swap is not None
    assert m.swap.swap_map[1] == 2
    assert child.anon_rss == 1  # only the present page
    assert peek_user_page(child, a) == filled(0x42)
    check_all(m)


def test_write_fault_with_shared_slot_copies_and_leaves_cache_page() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "parent", [0x42])
    reclaim_one(m, mapped_page(mm, a))
    child = m.fork(mm, "child")
    write_user_bytes(mm, a, b"\x01")
    assert m.swap is not None
    # The parent's fault read the slot into the cache, mapped it read-only (the child still
    # refers to the slot, so no reuse), then copied it on the write.
    [cached] = m.swap_cache.values()
    mine = mapped_page(mm, a)
    assert mine is not cached
    assert pte_write(mm.pte_get(a))
    assert (mine.count, mine.mapcount, mine.flags & PG_swapcache) == (1, 1, 0)
    assert (cached.count, cached.mapcount) == (1, 0)
    assert (m.swap.swap_map[1], m.swap.has_cache[1]) == (1, 1)
    assert m.vmstat["pgmajfault"] == 1
    # The child's read now hits the cache: no second major fault.
    assert read_user_byte(child, a) == 0x42
    assert mapped_page(child, a) is cached
    assert (cached.count, cached.mapcount, m.swap.swap_map[1]) == (2, 1, 0)
    assert m.vmstat["pgmajfault"] == 1
    check_all(m)


def test_munmap_of_swap_pte_frees_its_slot() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x42, 0x43])
    reclaim_one(m, mapped_page(mm, a))
    assert m.swap is not None and m.swap.inuse_pages == 1
    do_munmap(mm, a, P)
    assert mm.pte_get(a) == 0
    assert (m.swap.swap_map[1], m.swap.has_cache[1], m.swap.inuse_pages) == (0, 0, 0)
    assert m.swap.data == {}
    check_all(m)


def test_zap_frees_unmapped_swap_cache_page() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x42])
    page = mapped_page(mm, a)
    add_to_swap(m, page)
    try_to_unmap(m, page)
    nr_free = m.zone.nr_free
    do_munmap(mm, a, P)
    # free_swap_and_cache(): the last pte went and nothing maps the cached page: both go.
    assert m.zone.is_free(page)
    assert m.zone.nr_free == nr_free + 1
    assert m.swap_cache == {}
    assert m.swap is not None and m.swap.inuse_pages == 0
    check_all(m)


@pytest.mark.parametrize(("nr_slots", "keeps_cache"), [(8, True), (1, False)])
def test_zap_keeps_mapped_swap_cache_page_unless_swap_full(
    nr_slots: int, keeps_cache: bool
) -> None:
    # Parent and child share a slot; the parent reads it back (the page is mapped and cached),
    # then the child's swap pte is zapped by its exit.
    m = small_machine(swap=nr_slots)
    mm, a = process_with_pages(m, "parent", [0x42])
    reclaim_one(m, mapped_page(mm, a))
    child = m.fork(mm, "child")
    read_user_byte(mm, a)
    page = mapped_page(mm, a)
    assert m.swap is not None
    # Even with swap full the swap-in could not free the slot: the child's pte needs it.
    assert (m.swap.swap_map[1], m.swap.has_cache[1]) == (1, 1)
    assert m.swap.vm_swap_full() == (not keeps_cache)
    m.exit(child)
    # free_swap_and_cache(): the slot's last pte went; the mapped page keeps its cache slot
    # unless swap is full.
    assert m.swap.swap_map[1] == 0
    assert bool(page.flags & PG_swapcache) == keeps_cache
    assert m.swap.inuse_pages == (1 if keeps_cache else 0)
    assert (page.count, page.mapcount) == ((2, 1) if keeps_cache else (1, 1))
    check_all(m)


def test_exit_frees_every_swap_slot() -> None:
    m = small_machine(swap=8)
    mm, a = process_with_pages(m, "a", [1, 2, 3])
    for i in range(3):
        reclaim_one(m, mapped_page(mm, a + i * P))
    assert m.swap is not None and m.swap.inuse_pages == 3
    m.exit(mm)
    assert m.swap.inuse_pages == 0
    assert m.swap.swap_map == [0] * 9
    assert m.swap.data == {}
    check_all(m)


@pytest.mark.parametrize(("nr_slots", "full"), [(2, True), (8, False)])
def test_swap_in_frees_swap_when_swap_is_full(nr_slots: int, full: bool) -> None:
    m = small_machine(swap=nr_slots)
    mm, a = process_with_pages(m, "a", [1, 2])
    reclaim_one(m, mapped_page(mm, a))
    reclaim_one(m, mapped_page(mm, a + P))
    assert m.swap is not None
    assert m.swap.vm_swap_full() == full
    read_user_byte(mm, a)
    page = mapped_page(mm, a)
    # vm_swap_full(): try_to_free_swap() drops the cache's slot at once, leaving the page
    # dirty (its only copy is in memory now).
    assert bool(page.flags & PG_swapcache) == (not full)
    assert bool(page.flags & PG_dirty) == full
    assert m.swap.inuse_pages == (1 if full else 2)
    assert (page.count, page.mapcount) == ((1, 1) if full else (2, 1))
    check_all(m)


def test_try_to_free_swap_needs_no_swap_pte_left() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "parent", [1])
    reclaim_one(m, mapped_page(mm, a))
    child = m.fork(mm, "child")
    read_user_byte(mm, a)
    page = mapped_page(mm, a)
    assert not try_to_free_swap(m, page)  # the child's pte still refers to the slot
    read_user_byte(child, a)
    assert try_to_free_swap(m, page)
    assert m.swap is not None
    assert (m.swap.inuse_pages, page.count, page.mapcount) == (0, 2, 2)
    assert page.flags & PG_dirty
    assert not try_to_free_swap(m, page)  # no longer in the swap cache
    check_all(m)


def test_free_swap_and_cache_of_last_reference() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [1])
    page = mapped_page(mm, a)
    add_to_swap(m, page)
    assert m.swap is not None
    m.swap.swap_duplicate(1)  # a pte that is about to be zapped
    free_swap_and_cache(m, 1)
    # The page is still mapped and swap is not full: the cache keeps it.
    assert (m.swap.swap_map[1], m.swap.has_cache[1]) == (0, 1)
    assert page.flags & PG_swapcache


def test_peek_user_page_reads_swapped_contents() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [0x61, 0x62])
    page = mapped_page(mm, a + P)
    reclaim_one(m, mapped_page(mm, a))
    # From the slot: the page is gone from memory.
    assert m.swap_cache == {}
    assert peek_user_page(mm, a) == filled(0x61)
    # From the swap cache: unmapped but still cached.
    add_to_swap(m, page)
    try_to_unmap(m, page)
    assert m.swap is not None and 2 not in m.swap.data  # never written out
    assert peek_user_page(mm, a + P) == filled(0x62)
    assert m.swap_peek(mm.pte_get(a + P)) == filled(0x62)
    # Peeking changes nothing.
    assert is_swap_pte(mm.pte_get(a)) and is_swap_pte(mm.pte_get(a + P))
    assert m.vmstat["pgmajfault"] == 0
    check_all(m)


def test_reclaim_with_swap_full_keeps_page_active() -> None:
    m = small_machine(swap=1)
    mm, a = process_with_pages(m, "a", [1, 2])
    reclaim_one(m, mapped_page(mm, a))
    page = mapped_page(mm, a + P)
    assert reclaim_one(m, page) == 0
    assert page.flags & (PG_lru | PG_active) == PG_lru | PG_active
    assert not page.flags & PG_swapcache
    assert pte_present(mm.pte_get(a + P))
    assert (page.count, page.mapcount) == (1, 1)
    check_all(m)


def test_write_fault_on_shared_slot_resolves_with_swap_full_below_min() -> None:
    # Regression: with swap full and free memory at the min watermark, the copy's allocation in
    # do_wp_page ran direct reclaim, which unmapped the swap-cache page just mapped read-only
    # (and could free nothing): the fault met the same swap entry on every retry and never
    # resolved. With no free slot the kernel does not scan anonymous pages at all.
    m = small_machine(swap=1)
    assert m.swap is not None
    mm, a = process_with_pages(m, "parent", [0x42])
    assert reclaim_one(m, mapped_page(mm, a)) == 1
    child = m.fork(mm, "child")
    assert (m.swap.nr_free(), m.swap.swap_map[1]) == (0, 2)
    other = m.new_process("other")
    b = do_mmap_anon(other, 128 * P)
    wmin = m.watermarks[0]
    n = 0
    while m.zone.nr_free > wmin:
        write_user_bytes(other, b + n * P, filled(n))
        n += 1
    write_user_bytes(mm, a, b"\x01")
    mine = mapped_page(mm, a)
    [cached] = m.swap_cache.values()
    assert mine is not cached and pte_write(mm.pte_get(a))
    assert mine.data == b"\x01" + filled(0x42)[1:]
    assert (cached.count, cached.mapcount, m.swap.swap_map[1]) == (1, 0, 1)
    # Both allocations (the swap-in and the copy) stalled at min, and reclaim touched nothing.
    assert m.vmstat["allocstall"] == 2 and m.vmstat["pgsteal_direct"] == 0
    assert all(pte_present(other.pte_get(b + i * P)) for i in range(n))
    assert m.zone.nr_free == wmin - 2 and not m.oom_events
    assert peek_user_page(child, a) == filled(0x42)
    check_all(m)


def test_swap_in_whose_copy_fails_returns_oom_alone() -> None:
    # do_swap_page(): the swap-in takes the last free frame (a major fault), the write's copy
    # finds none; the kernel returns the error bits alone, so VM_FAULT_MAJOR is dropped.
    m = small_machine(swap=1)
    mm, a = process_with_pages(m, "parent", [0x42])
    assert reclaim_one(m, mapped_page(mm, a)) == 1
    m.fork(mm, "child")
    other = m.new_process("other")
    b = do_mmap_anon(other, 128 * P)
    n = 0
    while m.zone.nr_free > 1:
        write_user_bytes(other, b + n * P, filled(n))
        n += 1
    vma = mm.find_vma(a)
    assert vma is not None
    assert handle_mm_fault(vma, a, write=True) == VM_FAULT_OOM
    assert m.vmstat["pgmajfault"] == 1 and m.zone.nr_free == 0
    # The page stays mapped read-only from the swap cache, so a read now succeeds.
    assert not pte_write(mm.pte_get(a)) and read_user_byte(mm, a) == 0x42
    with pytest.raises(FaultError, match="fault error 0x1 "):
        write_user_bytes(mm, a, b"\x01")
    check_all(m)


def test_swap_full_pressure_ends_in_oom_event() -> None:
    host = Host("keyhole", ram_pages=100, swap_pages=8, check=True)
    written = host.pressure(200)
    m = host.machine
    assert m.swap is not None
    assert m.swap.inuse_pages == m.swap.nr_slots == 8
    assert m.vmstat["pswpout"] == 8
    # Every frame is in use when the allocation fails: 100 frames, 8 pages in swap.
    assert written == 108
    assert m.zone.nr_free == 0
    [oom] = m.oom_events
    assert oom.name == "[pressure]"
    assert host.memory()["oom_events"] == 1
    assert host.memory()["swap_used_pages"] == 8


def test_user_write_after_oom_raises_fault_error() -> None:
    m = small_machine(swap=1, ram=64)
    mm = m.new_process("a")
    a = do_mmap_anon(mm, 80 * P)
    with pytest.raises(FaultError, match="fault error 0x1"):
        for i in range(80):
            write_user_bytes(mm, a + i * P, filled(i))
    [oom] = m.oom_events
    assert (oom.pid, oom.name) == (mm.pid, "a")
    assert m.zone.nr_free == 0
    assert m.swap is not None and m.swap.inuse_pages == 1
    check_all(m)


# -- KSM pages and swap (notes section 9) ------------------------------------------------------


def _addr(host: Host, proc: str) -> int:
    return host.region(proc, "r").address


def _walk(host: Host, page: Page) -> list[tuple[str, int]]:
    return [(v.vm_mm.name, a) for v, a in host.ksm.rmap_walk_ksm(page)]


def test_try_to_unmap_ksm_page_finds_forked_child_in_second_round() -> None:
    host = merged_host("keyhole", "pq", X)
    host.fork("p", "c")
    kpage = region_page(host, "p")
    assert PageKsm(kpage) and kpage.mapcount == 3
    addr = _addr(host, "p")
    node = page_stable_node(kpage)
    # The hlist is q, p (the scanned item is added at the head); c has no rmap_item: only
    # the second round, over the other mms on p's anon_vma, finds it.
    assert [i.mm.name for i in node.items()] == ["q", "p"]
    assert _walk(host, kpage) == [("q", addr), ("p", addr), ("c", addr)]
    m = host.machine
    assert add_to_swap(m, kpage)
    assert try_to_unmap(m, kpage) == SWAP_SUCCESS
    slot = kpage.private
    for name in "pqc":
        mm = host.proc(name).mm
        assert mm.pte_get(addr) == swp_entry_to_pte(slot)
        assert mm.anon_rss == 0
    assert m.swap is not None and m.swap.swap_map[slot] == 3
    assert (kpage.mapcount, kpage.count) == (0, 1)
    # Swap-out changes no KSM counter: ksmd finds out when it passes the addresses.
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"]) == (1, 1)
    check_all(m)


def test_try_to_unmap_fails_for_ksm_page_without_stable_node() -> None:
    host = merged_host("keyhole", "pq", X)
    kpage = region_page(host, "p")
    node = page_stable_node(kpage)
    m = host.machine
    add_to_swap(m, kpage)
    kpage.mapping = None  # a KSM page with a NULL node
    assert try_to_unmap(m, kpage) == SWAP_FAIL
    assert page_referenced(m, kpage) == 0
    assert kpage.mapcount == 2
    kpage.mapping = node


@pytest.mark.parametrize("kernel", ["keyhole", "v2.6.33"])
def test_swapin_after_ksm_page_freed_first_gets_it_others_copy(kernel: str) -> None:
    host = merged_host(kernel, "pqr", X)
    m = host.machine
    kpage = region_page(host, "p")
    # Reclaim unmaps the KSM page through its stable node, writes it and frees it at once.
    assert reclaim_one(m, kpage) == 1
    assert m.zone.is_free(kpage)
    slot = _slot(host.proc("p").mm, _addr(host, "p"))
    assert m.swap is not None and m.swap.swap_map[slot] == 3
    assert m.ksm_free_delays_ns == [0] and m.ksm_unmapped_at == {}
    # The first mapping to fault gets the page read from swap as its own anonymous page.
    host.read("p", "r")
    first = region_page(host, "p")
    p_vma = host.proc("p").mm.find_vma(_addr(host, "p"))
    assert p_vma is not None
    assert PageAnon(first) and not PageKsm(first)
    assert page_anon_vma(first) is p_vma.anon_vma
    assert first.flags & PG_swapcache and first.private == slot
    assert (m.vmstat["pgmajfault"], m.vmstat["ksm_swpin_copy"]) == (1, 0)
    # Every other mapping (another anon_vma) gets a private copy; the cache page stays p's.
    host.read("q", "r")
    host.read("r", "r")
    copies = [region_page(host, n) for n in "qr"]
    assert all(c is not first and not c.flags & PG_swapcache for c in copies)
    assert all(not PageKsm(c) and c.data == filled(X) for c in copies)
    assert (m.vmstat["pgmajfault"], m.vmstat["ksm_swpin_copy"]) == (1, 2)
    assert (first.count, first.mapcount) == (2, 1)
    assert (m.swap.swap_map[slot], m.swap.has_cache[slot]) == (0, 1)
    assert host.memory()["ksm_pages"] == 0
    # Counters are unchanged until ksmd passes; one pass then merges all three again.
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"]) == (1, 2)
    host.scan(1)
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"], c["pages_unshared"]) == (1, 2, 0)
    assert c["pages_volatile"] == 0
    assert host.memory()["ksm_pages"] == 1


@pytest.mark.parametrize("kernel", ["keyhole", "v2.6.33"])
def test_swapin_of_ksm_page_still_in_swap_cache_remaps_it(kernel: str) -> None:
    host = merged_host(kernel, "pq", X)
    m = host.machine
    kpage = region_page(host, "p")
    node = page_stable_node(kpage)
    assert add_to_swap(m, kpage)
    assert try_to_unmap(m, kpage) == SWAP_SUCCESS
    assert (kpage.count, kpage.mapcount) == (1, 0)
    host.read("p", "r")
    host.read("q", "r")
    # page_anon_vma() is NULL for a KSM page: it is simply mapped again, still KSM, and the
    # node's page is the same frame.
    assert region_page(host, "p") is kpage and region_page(host, "q") is kpage
    assert PageKsm(kpage) and page_stable_node(kpage) is node and node.page is kpage
    assert (kpage.count, kpage.mapcount) == (3, 2)
    assert (m.vmstat["pgmajfault"], m.vmstat["ksm_swpin_copy"]) == (0, 0)
    assert not pte_write(host.proc("p").mm.pte_get(_addr(host, "p")))
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"]) == (1, 1)
    host.scan(1)
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"], c["pages_volatile"]) == (1, 1, 0)


@pytest.mark.parametrize("kernel", ["keyhole", "v2.6.33"])
def test_write_after_ksm_swapin_still_copies(kernel: str) -> None:
    host = merged_host(kernel, "pq", X)
    m = host.machine
    kpage = region_page(host, "p")
    add_to_swap(m, kpage)
    try_to_unmap(m, kpage)
    assert m.swap is not None
    slot = kpage.private
    # p: swap-in by a read, then a write: do_wp_page never reuses a KSM page.
    host.read("p", "r")
    host.write("p", "r", 1)
    mine = region_page(host, "p")
    assert mine is not kpage and not PageKsm(mine)
    assert pte_write(host.proc("p").mm.pte_get(_addr(host, "p")))
    # q: a write fault straight on the swap entry: reuse_swap_page() refuses the KSM page
    # (although q's is the last swap reference), so it is mapped read-only and then copied.
    assert m.swap.swap_map[slot] == 1
    assert not reuse_swap_page(kpage, m)
    host.write("q", "r", 2)
    theirs = region_page(host, "q")
    assert theirs is not kpage and not PageKsm(theirs)
    assert m.vmstat["cow_ksm"] == 2
    assert m.vmstat["ksm_swpin_copy"] == 0
    # The KSM page is left in the swap cache alone, its slot now only the cache's.
    assert (kpage.count, kpage.mapcount) == (1, 0)
    assert PageKsm(kpage) and kpage.flags & PG_swapcache
    assert (m.swap.swap_map[slot], m.swap.has_cache[slot]) == (0, 1)


def test_reuse_swap_page_decisions() -> None:
    m = small_machine(swap=4)
    mm, a = process_with_pages(m, "a", [1])
    page = mapped_page(mm, a)
    assert reuse_swap_page(page, m)  # mapped once, not in the swap cache
    add_to_swap(m, page)
    swap = m.swap
    assert swap is not None
    swap.swap_duplicate(page.private)
    # mapcount 1 + one swap reference elsewhere: not exclusive.
    assert not reuse_swap_page(page, m)
    assert page.flags & PG_swapcache
    swap.swap_free(page.private)
    assert reuse_swap_page(page, m)
    assert not page.flags & PG_swapcache and page.flags & PG_dirty
    assert swap.inuse_pages == 0
    check_all(m)
