"""Tests for reclaim (mm/vmscan.c): watermarks, the anonymous LRU lists, aging, shrink_page_list,
direct reclaim from the allocator, kswapd, and running out of memory without swap."""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.memory import FaultError, peek_user_page, read_user_byte, write_user_bytes
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    VM_LOCKED,
    MmStruct,
    is_swap_pte,
    pte_present,
    pte_young,
)
from ksmsim.kernel.mmap import do_mmap_anon, do_munmap
from ksmsim.kernel.page import PAGE_SIZE, Page, PG_active, PG_lru, PG_swapcache
from ksmsim.kernel.profile import KEYHOLE
from ksmsim.kernel.vmscan import (
    Lru,
    balance_pgdat,
    can_reclaim_anon_pages,
    isolate_lru_pages,
    page_referenced,
    shrink_active_list,
    shrink_page_list,
    shrink_zone,
    try_to_free_pages,
    watermarks,
)
from ksmsim.workload.host import Host, HostError
from tests.helpers import mapped_page

P = PAGE_SIZE


def _data(i: int) -> bytes:
    return i.to_bytes(4, "little") * (PAGE_SIZE // 4)


def _machine(ram: int = 100, swap: int = 200) -> Machine:
    return Machine(KEYHOLE, MachineConfig(ram_pages=ram, swap_pages=swap))


def _fill(m: Machine, n: int, name: str = "a") -> tuple[MmStruct, int]:
    mm = m.new_process(name)
    a = do_mmap_anon(mm, n * P)
    for i in range(n):
        write_user_bytes(mm, a + i * P, _data(i))
    return mm, a


# -- watermarks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pages", "expected"),
    [
        (64, (32, 40, 48)),  # min_free_kbytes clamps at 128 KiB
        (100, (32, 40, 48)),
        (300, (34, 42, 51)),  # sqrt(1200 * 16) = 138 KiB
        (1000, (63, 78, 94)),
        (262144, (1024, 1280, 1536)),  # 1 GiB: 4096 KiB
        (1 << 28, (16384, 20480, 24576)),  # clamped at 64 MiB
    ],
)
def test_watermarks(pages: int, expected: tuple[int, int, int]) -> None:
    assert watermarks(pages) == expected


def test_machine_uses_its_ram_watermarks() -> None:
    assert _machine(ram=300).watermarks == (34, 42, 51)


# -- LRU lists -------------------------------------------------------------------------------


def test_lru_add_and_remove() -> None:
    lru = Lru()
    a, b = Page(1), Page(2)
    lru.add(a, active=True)
    lru.add(b, active=False)
    assert a.flags & (PG_lru | PG_active) == PG_lru | PG_active
    assert b.flags & (PG_lru | PG_active) == PG_lru
    assert (list(lru.active), list(lru.inactive), len(lru)) == ([a], [b], 2)
    lru.remove(a)
    lru.remove(b)
    assert a.flags == b.flags == 0
    assert len(lru) == 0


def test_new_pages_are_added_active_in_fault_order() -> None:
    m = _machine()
    mm, a = _fill(m, 3)
    pages = [mapped_page(mm, a + i * P) for i in range(3)]
    assert list(m.lru.active) == pages  # oldest first (the kernel's list tail)
    assert not m.lru.inactive
    assert all(p.flags & (PG_lru | PG_active) == PG_lru | PG_active for p in pages)


def test_freeing_a_page_takes_it_off_the_lru() -> None:
    m = _machine()
    mm, a = _fill(m, 3)
    middle = mapped_page(mm, a + P)
    do_munmap(mm, a + P, P)
    assert m.zone.is_free(middle)
    assert middle not in m.lru.active and len(m.lru) == 2
    assert not middle.flags & PG_lru
    check_all(m)


def test_isolate_takes_oldest_pages_with_a_reference() -> None:
    m = _machine()
    mm, a = _fill(m, 3)
    pages = [mapped_page(mm, a + i * P) for i in range(3)]
    got = isolate_lru_pages(m, 2, active=True)
    assert got == pages[:2]
    assert all(p.count == 2 and not p.flags & (PG_lru | PG_active) for p in got)
    assert list(m.lru.active) == pages[2:]


# -- aging -----------------------------------------------------------------------------------


def test_page_referenced_counts_and_clears_young_bits() -> None:
    m = _machine()
    mm, a = _fill(m, 1)
    child = m.fork(mm, "child")
    page = mapped_page(mm, a)
    # The parent's pte is young from the write; fork copies the child's pte old.
    assert pte_young(mm.pte_get(a)) and not pte_young(child.pte_get(a))
    assert page_referenced(m, page) == 1
    assert not pte_young(mm.pte_get(a))
    assert page_referenced(m, page) == 0
    child.set_pte_at(a, child.pte_get(a) | _PAGE_ACCESSED)
    mm.set_pte_at(a, mm.pte_get(a) | _PAGE_ACCESSED)
    assert page_referenced(m, page) == 2
    # An mlocked mapping always counts as a reference.
    [vma] = mm.mmap
    vma.vm_flags |= VM_LOCKED
    assert page_referenced(m, page) == 1


def test_shrink_active_list_deactivates_and_ages() -> None:
    m = _machine()
    mm, a = _fill(m, 4)
    pages = [mapped_page(mm, a + i * P) for i in range(4)]
    shrink_active_list(m, 3)
    assert list(m.lru.active) == pages[3:]
    assert list(m.lru.inactive) == pages[:3]
    for i, p in enumerate(pages):
        assert p.count == 1
        assert bool(p.flags & PG_active) == (i == 3)
        assert pte_young(mm.pte_get(a + i * P)) == (i == 3)
    check_all(m)


def test_shrink_page_list_reactivates_referenced_and_swaps_the_rest() -> None:
    m = _machine()
    mm, a = _fill(m, 4)
    pages = [mapped_page(mm, a + i * P) for i in range(4)]
    shrink_active_list(m, 4)
    # Page 1 is touched again before reclaim looks at it.
    mm.set_pte_at(a + P, mm.pte_get(a + P) | _PAGE_ACCESSED)
    batch = isolate_lru_pages(m, 4, active=False)
    assert batch == pages
    assert shrink_page_list(m, batch) == 3
    assert list(m.lru.active) == [pages[1]]
    assert not m.lru.inactive
    assert pages[1].count == 1 and pages[1].flags & PG_active
    assert not pages[1].flags & PG_swapcache
    for i in (0, 2, 3):
        assert m.zone.is_free(pages[i])
        assert is_swap_pte(mm.pte_get(a + i * P))
        assert peek_user_page(mm, a + i * P) == _data(i)
    assert pte_present(mm.pte_get(a + P))
    assert m.swap is not None and m.swap.inuse_pages == 3
    assert (m.vmstat["pswpout"], mm.anon_rss, m.nr_anon_pages) == (3, 1, 1)
    check_all(m)


def test_shrink_page_list_skips_locked_page() -> None:
    m = _machine()
    mm, a = _fill(m, 1)
    page = mapped_page(mm, a)
    shrink_active_list(m, 1)
    [got] = isolate_lru_pages(m, 1, active=False)
    page.flags |= 1  # PG_locked: somebody else holds the page lock
    assert shrink_page_list(m, [got]) == 0
    page.flags &= ~1
    assert list(m.lru.inactive) == [page] and page.count == 1
    assert pte_present(mm.pte_get(a))
    check_all(m)


def test_shrink_zone_ages_active_pages_first() -> None:
    m = _machine()
    _fill(m, 40)
    assert shrink_zone(m, 10) == 32  # a whole cluster is reclaimed at once
    assert (len(m.lru.active), len(m.lru.inactive)) == (8, 0)
    assert m.swap is not None and m.swap.inuse_pages == 32
    check_all(m)


# -- direct reclaim and kswapd ---------------------------------------------------------------


def test_shrink_zone_scans_nothing_with_swap_full() -> None:
    # get_scan_count(): with no free swap slot anonymous pages are not scanned at all, not
    # even a swap-cache page that could be unmapped and freed without a new slot.
    m = _machine(swap=2)
    mm, a = _fill(m, 10)
    assert shrink_zone(m, 10) == 2  # both slots taken, their frames freed
    assert m.swap is not None and m.swap.nr_free() == 0
    swapped = [i for i in range(10) if is_swap_pte(mm.pte_get(a + i * P))]
    assert len(swapped) == 2
    addr = a + swapped[0] * P
    m.fork(mm, "child")  # the child's swap pte keeps the slot in use after the read below
    assert read_user_byte(mm, addr) == _data(swapped[0])[0]
    page = mapped_page(mm, addr)
    assert page.flags & PG_swapcache and m.swap.nr_free() == 0
    assert not can_reclaim_anon_pages(m)
    for i in range(10):
        pte = mm.pte_get(a + i * P)
        if pte_present(pte):
            mm.set_pte_at(a + i * P, pte & ~_PAGE_ACCESSED)
    lists = (list(m.lru.active), list(m.lru.inactive))
    ptes = [mm.pte_get(a + i * P) for i in range(10)]
    assert shrink_zone(m, 10) == 0
    assert (list(m.lru.active), list(m.lru.inactive)) == lists
    assert [mm.pte_get(a + i * P) for i in range(10)] == ptes
    assert (page.count, page.mapcount) == (2, 1)
    check_all(m)


def test_alloc_page_reclaims_directly_at_min_watermark() -> None:
    m = _machine()  # 100 pages: min 32, low 40, high 48
    mm, a = _fill(m, 68)
    assert m.zone.nr_free == 32
    assert m.vmstat["allocstall"] == 0
    assert m.kswapd_wanted  # free fell below low on the way
    write_user_bytes(mm, a, b"x")  # a write to a present page allocates nothing
    mm2, b = _fill(m, 1, "b")
    # The 69th allocation found free == min: direct reclaim swapped out a cluster (the 32
    # oldest pages) before allocating.
    assert m.vmstat["allocstall"] == 1
    assert m.vmstat["pgsteal_direct"] == 32
    assert m.vmstat["pswpout"] == 32
    assert m.zone.nr_free == 32 + 32 - 1
    assert [is_swap_pte(mm.pte_get(a + i * P)) for i in range(68)] == [True] * 32 + [False] * 36
    assert pte_present(mm2.pte_get(b))
    check_all(m)


def test_try_to_free_pages_counts_a_stall() -> None:
    m = _machine()
    _fill(m, 10)
    assert try_to_free_pages(m) == 10
    assert (m.vmstat["allocstall"], m.vmstat["pgsteal_direct"]) == (1, 10)


def test_kswapd_balances_to_high_watermark() -> None:
    m = _machine()
    _fill(m, 60)
    assert m.zone.nr_free == 40 and not m.kswapd_wanted
    _fill(m, 1, "b")
    assert m.zone.nr_free == 39 and m.kswapd_wanted
    assert m.kswapd() == 32
    assert not m.kswapd_wanted
    assert m.zone.nr_free == 71 >= m.watermarks[2]
    assert (m.vmstat["pgsteal_kswapd"], m.vmstat["allocstall"]) == (32, 0)
    assert m.kswapd() == 0  # not woken again
    check_all(m)


def test_balance_pgdat_stops_when_nothing_can_be_freed() -> None:
    m = _machine(swap=4)
    _fill(m, 61)
    assert balance_pgdat(m) == 4  # swap holds only four pages
    assert m.zone.nr_free == 43 < m.watermarks[2]
    assert m.vmstat["pgsteal_kswapd"] == 4
    check_all(m)


def test_host_runs_kswapd_between_operations() -> None:
    host = Host("keyhole", ram_pages=100, swap_pages=200, check=True)
    host.spawn("a")
    host.mmap("a", "r", 61)
    host.fill("a", "r", "unique")
    m = host.machine
    assert not m.kswapd_wanted
    assert m.zone.nr_free >= m.watermarks[2]
    assert m.vmstat["pgsteal_kswapd"] == 32


# -- no swap: no anonymous reclaim -----------------------------------------------------------


def test_without_swap_nothing_is_reclaimed_and_oom_is_recorded() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=64))
    mm = m.new_process("a")
    a = do_mmap_anon(mm, 80 * P)
    written = 0
    with pytest.raises(FaultError):
        for i in range(80):
            write_user_bytes(mm, a + i * P, _data(i))
            written += 1
    assert written == 64
    assert m.zone.nr_free == 0
    assert not m.kswapd_wanted
    assert (m.vmstat["allocstall"], m.vmstat["pswpout"]) == (0, 0)
    [oom] = m.oom_events
    assert (oom.pid, oom.name, oom.address) == (mm.pid, "a", a + 64 * P)
    assert m.kswapd() == 0
    # Nothing is half done: the failed page is still untouched.
    assert mm.pte_get(a + 64 * P) == 0
    check_all(m)


def test_without_swap_shrink_page_list_keeps_anon_pages() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=64))
    mm, a = _fill(m, 3)
    shrink_active_list(m, 3)
    assert shrink_page_list(m, isolate_lru_pages(m, 3, active=False)) == 0
    assert len(m.lru.active) == 3
    assert all(pte_present(mm.pte_get(a + i * P)) for i in range(3))
    check_all(m)


def test_host_without_swap_signals_oom_through_fault_error() -> None:
    host = Host("keyhole", ram_pages=64, check=True)
    host.spawn("a")
    host.mmap("a", "r", 80)
    with pytest.raises(FaultError):
        host.fill("a", "r", "unique")
    assert host.memory()["oom_events"] == 1
    with pytest.raises(HostError, match="swap device"):
        host.pressure(10)
    check_all(host.machine)


# -- preemption points (the interleaving explorer's hook) ---------------------------------------


def test_reclaim_stops_at_its_preemption_points_in_kernel_order() -> None:
    m = _machine()
    mm, a = _fill(m, 2)
    mm.set_pte_at(a + P, mm.pte_get(a + P) | _PAGE_ACCESSED)
    points: list[str] = []
    m.preempt = points.append
    shrink_active_list(m, 2)
    batch = isolate_lru_pages(m, 2, active=False)
    shrink_page_list(m, batch)
    # Page 0: unreferenced, so swapped; page 1 was young only before aging cleared it.
    assert points == [
        "shrink_active_list:lru_lock",
        "shrink_page_list:page_referenced",
        "shrink_page_list:add_to_swap",
        "shrink_page_list:unmapped",
        "shrink_page_list:page_referenced",
        "shrink_page_list:add_to_swap",
        "shrink_page_list:unmapped",
    ]
    m.preempt = None
    check_all(m)


def test_a_referenced_page_stops_only_after_page_referenced() -> None:
    m = _machine()
    mm, a = _fill(m, 1)
    points: list[str] = []
    m.preempt = points.append
    batch = isolate_lru_pages(m, 1, active=True)
    mm.set_pte_at(a, mm.pte_get(a) | _PAGE_ACCESSED)
    assert shrink_page_list(m, batch) == 0
    assert points == ["shrink_page_list:page_referenced"]


def test_shrink_zone_stops_after_isolating_the_inactive_batch() -> None:
    m = _machine()
    _fill(m, 1)
    shrink_active_list(m, 1)
    points: list[str] = []
    m.preempt = points.append
    assert shrink_zone(m, 1) == 1
    assert points[0] == "shrink_inactive_list:lru_lock"


def test_a_reference_taken_between_unmap_and_freeze_keeps_the_page() -> None:
    # ksmd's get_ksm_page() (or a swap fault) takes the page while reclaim has it unmapped:
    # __remove_mapping() cannot freeze the count at 2, so the page stays in the swap cache.
    m = _machine()
    mm, a = _fill(m, 1)
    page = mapped_page(mm, a)
    shrink_active_list(m, 1)
    batch = isolate_lru_pages(m, 1, active=False)

    def preempt(point: str) -> None:
        if point == "shrink_page_list:unmapped":
            assert page.flags & 1  # reclaim holds the page lock here
            page.count += 1

    m.preempt = preempt
    assert shrink_page_list(m, batch) == 0
    m.preempt = None
    assert is_swap_pte(mm.pte_get(a)) and page.flags & PG_swapcache
    assert list(m.lru.inactive) == [page] and not page.flags & 1
    page.count -= 1
    check_all(m)
