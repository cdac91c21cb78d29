"""A swap device: slots with reference counts and their written contents (mm/swapfile.c, 2.6.33).

Slot 0 is the header, as on a real swap area, so slots are 1..nr_slots. ``swap_map[slot]`` counts
the swap ptes that refer to the slot; ``has_cache`` says whether a swap-cache page holds it
(2.6.33's SWAP_HAS_CACHE bit). A slot is free when neither is set. Its contents are the bytes
written out by the last pageout, kept until the slot is freed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ksmsim.kernel.page import Page, PageKsm, PG_dirty, PG_swapcache, PG_writeback

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine


class SwapInfo:
    """One swap area (struct swap_info_struct)."""

    __slots__ = ("cluster_next", "data", "has_cache", "inuse_pages", "nr_slots", "swap_map")

    def __init__(self, nr_slots: int) -> None:
        self.nr_slots = nr_slots
        self.swap_map = [0] * (nr_slots + 1)
        self.has_cache = bytearray(nr_slots + 1)
        self.data: dict[int, bytes] = {}
        self.inuse_pages = 0
        self.cluster_next = 1

    def get_swap_page(self) -> int:
        """Allocate a free slot for the swap cache, or return 0 when swap is full:
        get_swap_page()/scan_swap_map(), which scan on from where they last allocated."""
        if not self.nr_slots or self.inuse_pages >= self.nr_slots:
            return 0
        n = self.nr_slots
        slot = self.cluster_next
        for _ in range(n):
            if slot > n:
                slot = 1
            if not self.swap_map[slot] and not self.has_cache[slot]:
                self.has_cache[slot] = 1
                self.inuse_pages += 1
                self.cluster_next = slot + 1
                return slot
            slot += 1
        return 0

    def _maybe_free(self, slot: int) -> None:
        if not self.swap_map[slot] and not self.has_cache[slot]:
            self.inuse_pages -= 1
            self.data.pop(slot, None)

    def swap_duplicate(self, slot: int) -> None:
        """Count one more pte referring to the slot: swap_duplicate()."""
        self.swap_map[slot] += 1

    def swap_free(self, slot: int) -> None:
        """Drop one pte's reference to the slot: swap_free()."""
        if self.swap_map[slot] <= 0:
            raise AssertionError(f"swap_free of slot {slot} with no references")
        self.swap_map[slot] -= 1
        self._maybe_free(slot)

    def swapcache_free(self, slot: int) -> None:
        """Drop the swap cache's hold on the slot: swapcache_free()."""
        self.has_cache[slot] = 0
        self._maybe_free(slot)

    def page_swapcount(self, slot: int) -> int:
        """Return how many ptes still refer to the slot: page_swapcount()."""
        return self.swap_map[slot]

    def vm_swap_full(self) -> bool:
        """Tell whether more than half of swap is in use: vm_swap_full()."""
        return self.inuse_pages * 2 > self.nr_slots

    def nr_free(self) -> int:
        """Return the number of free slots (nr_swap_pages)."""
        return self.nr_slots - self.inuse_pages


def reuse_swap_page(page: Page, machine: Machine | None = None) -> bool:
    """Tell whether a write may keep this anonymous page, dropping its swap slot if it is the
    last user: reuse_swap_page() (2.6.33). KSM pages are never reused."""
    if PageKsm(page):
        return False
    count = page.mapcount
    if (
        count <= 1
        and page.flags & PG_swapcache
        and machine is not None
        and machine.swap is not None
    ):
        count += machine.swap.page_swapcount(page.private)
        if count == 1 and not page.flags & PG_writeback:
            from ksmsim.kernel.swap_state import delete_from_swap_cache

            delete_from_swap_cache(machine, page)
            page.flags |= PG_dirty
    return count <= 1


def try_to_free_swap(machine: Machine, page: Page) -> bool:
    """Free the swap slot of a swap-cache page no pte refers to any more: try_to_free_swap()."""
    swap = machine.swap
    if swap is None or not page.flags & PG_swapcache or page.flags & PG_writeback:
        return False
    if swap.page_swapcount(page.private):
        return False
    from ksmsim.kernel.swap_state import delete_from_swap_cache

    delete_from_swap_cache(machine, page)
    page.flags |= PG_dirty
    return True


def free_swap_and_cache(machine: Machine, slot: int) -> None:
    """Drop a zapped swap pte's reference, and the cached page too if nothing else needs it:
    free_swap_and_cache() (2.6.33)."""
    swap = machine.swap
    assert swap is not None
    swap.swap_free(slot)
    if swap.swap_map[slot] or not swap.has_cache[slot]:
        return
    page = machine.swap_cache.get(slot)
    if page is None or page.flags & PG_writeback:
        return
    if page.mapcount and not swap.vm_swap_full():
        return
    from ksmsim.kernel.page import trylock_page, unlock_page
    from ksmsim.kernel.swap_state import delete_from_swap_cache

    if trylock_page(page):
        delete_from_swap_cache(machine, page)
        page.flags |= PG_dirty
        unlock_page(page)
