"""The page allocator: a frame table and its free list (mm/page_alloc.c, 2.6.33).

Frames are created lazily, the first time the allocator hands them out, so a large simulated
host costs memory only for the frames it uses. Freed frames go on a free list whose reuse
order is a setting: ``hot`` hands out the frame freed last (the per-CPU hot lists), so a frame
freed under a stale pointer is reused at once; ``cold`` hands out the one freed longest ago.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final, Literal

from ksmsim.kernel.page import Page, PG_reserved

ReuseOrder = Literal["hot", "cold"]

ZERO_PFN: Final = 0
"""The shared zero page is frame 0, reserved and never allocated."""


class Zone:
    """All of the machine's RAM as one zone: the frame table (mem_map) and the free pages."""

    __slots__ = (
        "_free",
        "_fresh",
        "map_generation",
        "mem_map",
        "nr_free",
        "on_free",
        "present_pages",
        "reuse_order",
        "zero_page",
    )

    def __init__(
        self, present_pages: int, zero_data: bytes, reuse_order: ReuseOrder = "hot"
    ) -> None:
        if present_pages < 1:
            raise ValueError("a machine needs at least one page of RAM")
        self.present_pages = present_pages
        self.reuse_order: ReuseOrder = reuse_order
        zero = Page(ZERO_PFN)
        zero.flags = PG_reserved
        zero.data = zero_data
        zero.count = 1
        self.zero_page = zero
        # mem_map[pfn] for pfn in 1..present_pages; None until first handed out.
        self.mem_map: list[Page | None] = [zero] + [None] * present_pages
        self._fresh = 1
        self._free: deque[Page] = deque()
        self.nr_free = present_pages
        self.on_free: Callable[[Page], None] | None = None
        """Called with each frame about to be freed, before its fields are reset (the LRU and
        the statistics of the machine hook in here, as __page_cache_release() does)."""
        self.map_generation = 0
        """Not the kernel's: bumped whenever a pte starts or stops mapping a frame (other than
        by ksmd's own merging) or an mm's areas change; the unstable-tree shortcut is exact
        while it stays where it was when the tree was emptied (ksm_shortcuts.py)."""

    def pfn_to_page(self, pfn: int) -> Page:
        """Return the frame with this pfn, creating it if it was never handed out: pfn_to_page()."""
        page = self.mem_map[pfn]
        if page is None:
            page = self.mem_map[pfn] = Page(pfn)
        return page

    def alloc_page(self) -> Page | None:
        """Take a free frame with one reference, or None if none is free: alloc_page()."""
        if self._free:
            page = self._free.pop() if self.reuse_order == "hot" else self._free.popleft()
        elif self._fresh <= self.present_pages:
            page = self.pfn_to_page(self._fresh)
            self._fresh += 1
        else:
            return None
        self.nr_free -= 1
        page.count = 1
        return page

    def free_hot_cold_page(self, page: Page) -> None:
        """Return a frame whose count reached zero to the free list: free_hot_cold_page().

        As in the kernel, an anonymous (or KSM) page's mapping is cleared here and not when its
        last pte goes: the keyhole relies on exactly this.
        """
        if page.mapcount or page.count:
            raise AssertionError(f"freeing a frame still in use: {page!r}")
        if self.on_free is not None:
            self.on_free(page)
        page.mapping = None
        page.mapping_flags = 0
        page.flags = 0
        page.private = 0
        page.index = 0
        page.data = None
        page.csum_of = None
        self._free.append(page)
        self.nr_free += 1

    def put_page(self, page: Page) -> None:
        """Drop a reference and free the frame when it was the last one: put_page()."""
        page.count -= 1
        if page.flags & PG_reserved:
            return  # the zero page: counted, never freed
        if page.count == 0:
            self.free_hot_cold_page(page)
        elif page.count < 0:
            raise AssertionError(f"page count went negative: {page!r}")

    def allocated_pages(self) -> list[Page]:
        """Return every frame currently allocated (count > 0), in pfn order; for checkers."""
        return [p for p in self.mem_map[1 : self._fresh] if p is not None and p.count > 0]

    def is_free(self, page: Page) -> bool:
        """Tell whether a frame is free (never handed out, or freed and not reused)."""
        return page.count == 0 and not page.flags & PG_reserved
