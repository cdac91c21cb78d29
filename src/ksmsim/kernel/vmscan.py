"""Page reclaim: the anonymous LRU lists, kswapd and direct reclaim (mm/vmscan.c, 2.6.33).

The active and inactive anonymous lists are insertion-ordered dicts: the oldest page is first
(the kernel's list tail), a newly added page last (its head). Reclaim ages the active list into
the inactive one, and frees inactive pages: unreferenced ones are given a swap slot, unmapped
(``try_to_unmap``, through the stable node for a KSM page), written out, and freed once their
references can be frozen. A KSM page that the pinned design's stable node still holds fails
that last step and stays in the swap cache, unmapped, until ksmd lets it go.

Under the interleaving explorer reclaim stops where the kernel can race with ksmd and faults
(``machine.preempt``): after isolating a batch, once the LRU lock is dropped
(``shrink_active_list:lru_lock``, ``shrink_inactive_list:lru_lock``), and in shrink_page_list()
with the page locked: after page_referenced() (``shrink_page_list:page_referenced``), after
add_to_swap() (``shrink_page_list:add_to_swap``) and between try_to_unmap() and the freeze of
the references (``shrink_page_list:unmapped``). The page lock is the page's PG_locked bit:
reclaim only trylocks, and ksmd's trylock fails or its lock_page() sleeps meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    VM_LOCKED,
    VmArea,
    pte_pfn,
    pte_present,
    pte_special,
    swp_entry_to_pte,
)
from ksmsim.kernel.page import (
    Page,
    PageAnon,
    PageKsm,
    PG_active,
    PG_dirty,
    PG_lru,
    PG_swapcache,
    page_freeze_refs,
    page_unfreeze_refs,
    trylock_page,
    unlock_page,
)
from ksmsim.kernel.rmap import page_remove_rmap, rmap_walk_anon
from ksmsim.kernel.swap_state import add_to_swap, delete_from_swap_cache

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine

SWAP_SUCCESS: Final = 0
SWAP_AGAIN: Final = 1
SWAP_FAIL: Final = 2
SWAP_MLOCK: Final = 3

SWAP_CLUSTER_MAX: Final = 32


class Lru:
    """The zone's active and inactive anonymous LRU lists."""

    __slots__ = ("active", "inactive")

    def __init__(self) -> None:
        self.active: dict[Page, None] = {}
        self.inactive: dict[Page, None] = {}

    def add(self, page: Page, active: bool) -> None:
        """Add a page at the head of a list: add_page_to_lru_list()."""
        page.flags |= PG_lru
        if active:
            page.flags |= PG_active
            self.active[page] = None
        else:
            page.flags &= ~PG_active
            self.inactive[page] = None

    def remove(self, page: Page) -> None:
        """Take a page off whichever list holds it: del_page_from_lru()."""
        if page.flags & PG_active:
            self.active.pop(page, None)
        else:
            self.inactive.pop(page, None)
        page.flags &= ~(PG_lru | PG_active)

    def __len__(self) -> int:
        return len(self.active) + len(self.inactive)


def watermarks(present_pages: int) -> tuple[int, int, int]:
    """Return the zone's (min, low, high) free-page watermarks: setup_per_zone_wmarks().

    min follows min_free_kbytes = sqrt(lowmem_kbytes * 16), clamped to [128 KiB, 64 MiB];
    low is min * 5/4 and high min * 3/2.
    """
    kbytes = present_pages * 4
    min_kbytes = max(128, min(65536, int((kbytes * 16) ** 0.5)))
    wmin = max(1, min_kbytes // 4)
    return wmin, wmin + wmin // 4, wmin + wmin // 2


def _mappings(machine: Machine, page: Page) -> Iterator[tuple[VmArea, int]]:
    """Yield (vma, address) for each pte mapping an anonymous or KSM page (rmap_walk)."""
    if PageKsm(page):
        assert machine.ksm is not None
        yield from machine.ksm.rmap_walk_ksm(page)
    else:
        yield from rmap_walk_anon(page)


def page_referenced(machine: Machine, page: Page) -> int:
    """Count and clear the young bits of the ptes mapping a page: page_referenced() (2.6.33),
    through page_referenced_ksm() for a KSM page."""
    referenced = 0
    for vma, address in list(_mappings(machine, page)):
        mm = vma.vm_mm
        pte = mm.pte_get(address)
        if pte & _PAGE_ACCESSED:
            mm.set_pte_at(address, pte & ~_PAGE_ACCESSED)
            referenced += 1
        if vma.vm_flags & VM_LOCKED:
            referenced += 1
    return referenced


def try_to_unmap_one(machine: Machine, page: Page, vma: VmArea, address: int) -> int:
    """Replace one pte of a swap-cache page by its swap entry: try_to_unmap_one() (2.6.33)."""
    if vma.vm_flags & VM_LOCKED:
        return SWAP_MLOCK
    mm = vma.vm_mm
    pte = mm.pte_get(address)
    if not pte_present(pte) or pte_special(pte) or pte_pfn(pte) != page.pfn:
        return SWAP_AGAIN
    if pte & _PAGE_DIRTY:
        page.flags |= PG_dirty
    slot = page.private
    assert machine.swap is not None
    machine.swap.swap_duplicate(slot)
    mm.set_pte_at(address, swp_entry_to_pte(slot))
    mm.anon_rss -= 1
    page_remove_rmap(page, machine)
    machine.zone.put_page(page)
    return SWAP_AGAIN


def try_to_unmap(machine: Machine, page: Page) -> int:
    """Unmap every pte of a page in the swap cache: try_to_unmap() (2.6.33), through
    try_to_unmap_ksm()'s two rounds over the stable node for a KSM page."""
    if PageKsm(page):
        assert machine.ksm is not None
        if machine.ksm.page_stable_node_of(page) is None:
            return SWAP_FAIL
    for vma, address in list(_mappings(machine, page)):
        ret = try_to_unmap_one(machine, page, vma, address)
        if ret != SWAP_AGAIN:
            return ret
        if not page.mapcount:
            break
    return SWAP_SUCCESS if not page.mapcount else SWAP_AGAIN


def pageout(machine: Machine, page: Page) -> None:
    """Write a dirty swap-cache page to its slot (the write completes at once): pageout()."""
    assert machine.swap is not None and page.data is not None
    machine.swap.data[page.private] = page.data
    page.flags &= ~PG_dirty
    machine.vmstat["pswpout"] += 1


def __remove_mapping(machine: Machine, page: Page) -> bool:
    """Free an unmapped, written swap-cache page if only the cache and reclaim hold it:
    __remove_mapping() (2.6.33), which freezes the count at 2 or gives up."""
    if not page_freeze_refs(page, 2):
        return False
    if page.flags & PG_dirty:
        page_unfreeze_refs(page, 2)
        return False
    page_unfreeze_refs(page, 2)
    delete_from_swap_cache(machine, page)
    return True


def shrink_page_list(machine: Machine, pages: list[Page]) -> int:
    """Try to free each isolated inactive page; put back the ones that stay: shrink_page_list().

    Each page arrives with reclaim's isolation reference. Returns the number freed.
    """
    freed = 0
    lru = machine.lru
    # Read once: None in sequential runs, so each point costs one test.
    preempt = machine.preempt
    for page in pages:
        keep_active = False
        if not trylock_page(page):
            lru.add(page, active=False)
            machine.zone.put_page(page)
            continue
        referenced = page_referenced(machine, page)
        if preempt is not None:
            # The young bits are read and cleared under the page lock only: faults and ksmd
            # may map or unmap the page before reclaim acts on what it saw.
            preempt("shrink_page_list:page_referenced")
        if referenced and page.mapcount:
            keep_active = True
        elif PageAnon(page) and not page.flags & PG_swapcache:
            if not add_to_swap(machine, page):
                keep_active = True
            elif preempt is not None:
                # In the swap cache, still mapped: a fault or a merge may find it there.
                preempt("shrink_page_list:add_to_swap")
        if not keep_active and page.mapcount:
            ret = try_to_unmap(machine, page)
            if ret == SWAP_SUCCESS and PageKsm(page):
                machine.note_ksm_unmapped(page)
            if ret != SWAP_SUCCESS:
                keep_active = ret != SWAP_AGAIN
            if preempt is not None:
                # Unmapped but not yet frozen: ksmd may take a reference through the stable
                # node (get_ksm_page()) or a fault through the swap cache before the freeze.
                preempt("shrink_page_list:unmapped")
        if not keep_active and not page.mapcount and page.flags & PG_swapcache:
            if page.flags & PG_dirty:
                pageout(machine, page)
            if __remove_mapping(machine, page):
                unlock_page(page)
                # The isolation reference is the last: the frame goes back to the allocator.
                page.flags &= ~(PG_lru | PG_active)
                machine.zone.put_page(page)
                freed += 1
                continue
        unlock_page(page)
        lru.add(page, active=keep_active)
        machine.zone.put_page(page)
    return freed


def isolate_lru_pages(machine: Machine, nr: int, active: bool) -> list[Page]:
    """Take up to ``nr`` pages off a list's tail with a reference each: isolate_lru_pages()."""
    lst = machine.lru.active if active else machine.lru.inactive
    out = []
    for page in list(lst)[:nr]:
        if page.count == 0:
            continue
        del lst[page]
        page.flags &= ~(PG_lru | PG_active)
        page.count += 1
        out.append(page)
    return out


def shrink_active_list(machine: Machine, nr: int) -> None:
    """Age active anonymous pages onto the inactive list: shrink_active_list() (2.6.33 moves
    every anonymous page it scans, clearing the young bits of its ptes)."""
    isolated = isolate_lru_pages(machine, nr, active=True)
    if isolated and machine.preempt is not None:
        # spin_unlock_irq(&zone->lru_lock): the isolated pages hold reclaim's references only.
        machine.preempt("shrink_active_list:lru_lock")
    for page in isolated:
        page_referenced(machine, page)
        machine.lru.add(page, active=False)
        machine.zone.put_page(page)


def can_reclaim_anon_pages(machine: Machine) -> bool:
    """Tell whether reclaim may scan the anonymous lists: only while a swap slot is free
    (nr_swap_pages > 0): get_scan_count()'s test (get_scan_ratio() in 2.6.33),
    can_reclaim_anon_pages() in 6.x."""
    swap = machine.swap
    return swap is not None and swap.nr_free() > 0


def shrink_zone(machine: Machine, nr_to_reclaim: int) -> int:
    """Reclaim up to ``nr_to_reclaim`` pages, a cluster at a time: shrink_zone().

    With swap full the kernel does not scan anonymous pages at all (get_scan_count() gives
    them no share, and the closing shrink_active_list() wants nr_swap_pages > 0). Every LRU
    page of the model is anonymous, so such a reclaim does nothing.
    """
    if not can_reclaim_anon_pages(machine):
        # Scanning anyway would unmap swap-cache pages it cannot free: among them the page a
        # write fault is copying, so the fault's retry would meet a swap entry again, forever.
        return 0
    lru = machine.lru
    freed = 0
    budget = 2 * len(lru) + SWAP_CLUSTER_MAX
    while freed < nr_to_reclaim and budget > 0:
        if len(lru.inactive) < len(lru.active):
            shrink_active_list(machine, SWAP_CLUSTER_MAX)
        batch = isolate_lru_pages(machine, SWAP_CLUSTER_MAX, active=False)
        if batch and machine.preempt is not None:
            # shrink_inactive_list() drops the LRU lock before shrink_page_list().
            machine.preempt("shrink_inactive_list:lru_lock")
        if not batch:
            if not lru.active:
                break
            shrink_active_list(machine, SWAP_CLUSTER_MAX)
            budget -= SWAP_CLUSTER_MAX
            continue
        budget -= len(batch)
        freed += shrink_page_list(machine, batch)
    return freed


def try_to_free_pages(machine: Machine) -> int:
    """Direct reclaim by an allocation that found no free frame: try_to_free_pages()."""
    machine.vmstat["allocstall"] += 1
    freed = shrink_zone(machine, SWAP_CLUSTER_MAX)
    machine.vmstat["pgsteal_direct"] += freed
    return freed


def balance_pgdat(machine: Machine) -> int:
    """kswapd's work: reclaim until free memory is back above the high watermark:
    balance_pgdat()."""
    _wmin, _low, high = machine.watermarks
    zone = machine.zone
    total = 0
    while zone.nr_free < high:
        freed = shrink_zone(machine, high - zone.nr_free)
        total += freed
        if not freed:
            break
    machine.vmstat["pgsteal_kswapd"] += total
    return total
