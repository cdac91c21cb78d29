"""The swap cache: pages on their way to or from swap, found by slot (mm/swap_state.c, 2.6.33)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ksmsim.kernel.page import Page, PG_dirty, PG_swapbacked, PG_swapcache, PG_uptodate

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine


def add_to_swap_cache(machine: Machine, page: Page, slot: int) -> None:
    """Put a page in the swap cache at ``slot``, which holds a reference: add_to_swap_cache()."""
    page.count += 1
    page.flags |= PG_swapcache
    page.private = slot
    machine.swap_cache[slot] = page


def add_to_swap(machine: Machine, page: Page) -> bool:
    """Give an anonymous page a swap slot and put it in the swap cache, dirty: add_to_swap()."""
    swap = machine.swap
    if swap is None:
        return False
    slot = swap.get_swap_page()
    if not slot:
        return False
    add_to_swap_cache(machine, page, slot)
    page.flags |= PG_dirty
    return True


def delete_from_swap_cache(machine: Machine, page: Page) -> None:
    """Take a page out of the swap cache, freeing its slot's cache hold, and drop the cache's
    reference: delete_from_swap_cache()."""
    slot = page.private
    del machine.swap_cache[slot]
    page.flags &= ~PG_swapcache
    page.private = 0
    assert machine.swap is not None
    machine.swap.swapcache_free(slot)
    machine.zone.put_page(page)


def lookup_swap_cache(machine: Machine, slot: int) -> Page | None:
    """Return the swap-cache page for a slot with a reference, or None: lookup_swap_cache()."""
    page = machine.swap_cache.get(slot)
    if page is not None:
        page.count += 1
    return page


def read_swap_cache_async(machine: Machine, slot: int) -> Page | None:
    """Return the slot's page, reading it from swap into a new swap-cache page if it is not
    cached (with a reference), or None when no frame can be had: read_swap_cache_async()."""
    page = lookup_swap_cache(machine, slot)
    if page is not None:
        return page
    swap = machine.swap
    assert swap is not None
    page = machine.alloc_page()
    if page is None:
        return None
    swap.has_cache[slot] = 1
    add_to_swap_cache(machine, page, slot)
    page.data = swap.data[slot]
    page.flags |= PG_uptodate | PG_swapbacked
    machine.vmstat["pswpin"] += 1
    machine.lru_cache_add_inactive(page)
    return page
