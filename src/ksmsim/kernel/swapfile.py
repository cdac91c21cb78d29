"""Swap-slot accounting used by the fault paths (mm/swapfile.c, 2.6.33).

The swap device itself (slots, writeback, the swap cache) is modelled in a later stage; until a
machine has one, no swap entry can be created, so these paths only ever see swap-less pages.
"""

from __future__ import annotations

from ksmsim.kernel.page import Page, PageKsm, PG_swapcache


def reuse_swap_page(page: Page, swapcount: int = 0) -> bool:
    """Tell whether a write may keep this anonymous page: reuse_swap_page() (2.6.33).

    ``swapcount`` is the number of swap ptes still referring to the page's slot. KSM pages are
    never reused ("ksm: let shared pages be swappable").
    """
    if PageKsm(page):
        return False
    count = page.mapcount
    if count <= 1 and page.flags & PG_swapcache:
        count += swapcount
    return count <= 1
