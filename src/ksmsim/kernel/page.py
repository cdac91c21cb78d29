"""Page frames: struct page and the page->mapping encoding (include/linux/mm.h, 2.6.33).

A frame carries exactly the fields KSM's correctness depends on. ``mapping`` is the object the
kernel's ``page->mapping`` points at (an anon_vma or a KSM stable node) and ``mapping_flags``
holds the two low bits the kernel packs into that pointer, so that ``(mapping, mapping_flags)``
is the kernel's tagged pointer: PageAnon iff bit 0, PageKsm iff both bits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
PAGE_MASK: Final = ~(PAGE_SIZE - 1)

PAGE_MAPPING_ANON: Final = 1
PAGE_MAPPING_KSM: Final = 2
PAGE_MAPPING_FLAGS: Final = PAGE_MAPPING_ANON | PAGE_MAPPING_KSM

# Page flags (a subset of include/linux/page-flags.h), as plain bits for speed.
PG_locked: Final = 1 << 0
PG_referenced: Final = 1 << 1
PG_uptodate: Final = 1 << 2
PG_dirty: Final = 1 << 3
PG_lru: Final = 1 << 4
PG_active: Final = 1 << 5
PG_swapcache: Final = 1 << 6
PG_swapbacked: Final = 1 << 7
PG_mlocked: Final = 1 << 8
PG_reserved: Final = 1 << 9
PG_writeback: Final = 1 << 10

PAGE_FLAG_NAMES: Final = {
    PG_locked: "locked",
    PG_referenced: "referenced",
    PG_uptodate: "uptodate",
    PG_dirty: "dirty",
    PG_lru: "lru",
    PG_active: "active",
    PG_swapcache: "swapcache",
    PG_swapbacked: "swapbacked",
    PG_mlocked: "mlocked",
    PG_reserved: "reserved",
    PG_writeback: "writeback",
}


class PageFields:
    """The fields of a page frame, in pure Python (see ``Page``)."""

    __slots__ = (
        "count",
        "csum",
        "csum_of",
        "data",
        "flags",
        "index",
        "mapcount",
        "mapping",
        "mapping_flags",
        "pfn",
        "private",
    )

    def __init__(self, pfn: int) -> None:
        self.pfn = pfn
        self.count = 0
        self.mapcount = 0
        self.mapping: Any = None
        self.mapping_flags = 0
        self.index = 0
        self.flags = 0
        self.private = 0
        self.data: bytes | None = None
        self.csum = 0
        self.csum_of: bytes | None = None


def _fields_base() -> type[PageFields]:
    """Return the base that holds a frame's fields: the C extension's ``PageBase`` (the same
    attributes, with pfn, index and private held as C integers, so that a frame needs no int
    objects of its own for them) when it is built and ``c_helpers`` is on in KSMSIM_SHORTCUTS
    at import, else ``PageFields``."""
    from ksmsim.kernel.ksm_shortcuts import default_shortcuts

    if not default_shortcuts().c_helpers:
        return PageFields
    try:
        from ksmsim._speedups import PageBase
    except ImportError:  # pragma: no cover - built without a compiler, or a stale build
        return PageFields
    base: type[PageFields] = PageBase
    return base


if TYPE_CHECKING:
    _Fields = PageFields
else:
    _Fields = _fields_base()


class Page(_Fields):
    """One page frame (struct page): counts, mapping, index, flags, private and contents.

    ``count`` is page_count() and ``mapcount`` is page_mapcount() (the kernel stores
    ``_mapcount`` biased by -1; the model stores the true number). ``data`` is the frame's
    4096 bytes, an immutable ``bytes`` shared by identity with every frame of equal contents;
    it is None while the frame is free. ``csum``/``csum_of`` cache a checksum of ``data``:
    ``csum_of`` is the ``data`` object the cached value was computed for, so a write (which
    rebinds ``data``) invalidates the cache without any bookkeeping on the write path.
    The fields live in the base (``_fields_base``); ``Page(pfn)`` is a free frame.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        flags = ",".join(n for bit, n in PAGE_FLAG_NAMES.items() if self.flags & bit)
        kind = "ksm" if PageKsm(self) else "anon" if PageAnon(self) else "-"
        return (
            f"<Page pfn={self.pfn} count={self.count} mapcount={self.mapcount} "
            f"{kind} flags={flags or '-'}>"
        )


def PageAnon(page: Page) -> bool:
    """Tell whether the page is anonymous (KSM pages are too): PageAnon()."""
    return bool(page.mapping_flags & PAGE_MAPPING_ANON)


def PageKsm(page: Page) -> bool:
    """Tell whether the page is a KSM page (both low mapping bits set): PageKsm()."""
    return page.mapping_flags == PAGE_MAPPING_FLAGS


def page_stable_node(page: Page) -> Any:
    """Return the KSM stable node the page's mapping points at, or None: page_stable_node()."""
    return page.mapping if page.mapping_flags == PAGE_MAPPING_FLAGS else None


def set_page_stable_node(page: Page, stable_node: Any) -> None:
    """Make the page a KSM page keyed to ``stable_node`` (None allowed): set_page_stable_node()."""
    page.mapping = stable_node
    page.mapping_flags = PAGE_MAPPING_FLAGS


def page_anon_vma(page: Page) -> Any:
    """Return the page's anon_vma, or None for KSM and non-anon pages: page_anon_vma() (2.6.33)."""
    return page.mapping if page.mapping_flags == PAGE_MAPPING_ANON else None


def PageLocked(page: Page) -> bool:
    """Tell whether the page lock is held."""
    return bool(page.flags & PG_locked)


def PageSwapCache(page: Page) -> bool:
    """Tell whether the page is in the swap cache."""
    return bool(page.flags & PG_swapcache)


def trylock_page(page: Page) -> bool:
    """Take the page lock if it is free and say whether it was taken: trylock_page()."""
    if page.flags & PG_locked:
        return False
    page.flags |= PG_locked
    return True


def unlock_page(page: Page) -> None:
    """Release the page lock: unlock_page()."""
    page.flags &= ~PG_locked


def get_page(page: Page) -> None:
    """Take a reference on a page known to be in use: get_page()."""
    page.count += 1


def get_page_unless_zero(page: Page) -> bool:
    """Take a reference unless the count is zero (free or frozen): get_page_unless_zero()."""
    if page.count == 0:
        return False
    page.count += 1
    return True


def page_freeze_refs(page: Page, count: int) -> bool:
    """Drop the count from exactly ``count`` to zero, or fail: page_freeze_refs() (2.6.33)."""
    if page.count != count:
        return False
    page.count = 0
    return True


def page_unfreeze_refs(page: Page, count: int) -> None:
    """Restore a count frozen by page_freeze_refs(): page_unfreeze_refs()."""
    page.count = count
