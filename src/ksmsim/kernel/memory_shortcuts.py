"""Whole-page user writes in a batch: write_user_bytes() for many pages, its common cases in one loop.

``write_user_pages(mm, writes)`` stores whole pages, one ``(address, contents)`` after another,
and leaves the machine exactly as calling ``memory.write_user_bytes(mm, address, contents)``
for each, in order, would (shortcut ``fill_batch`` of ksm_shortcuts.py). It takes two cases in
its own loop and hands every other page to write_user_bytes():

* a page never touched (pte none) in a writable area: write_user_bytes() takes one write
  fault, handled by do_anonymous_page(), which gives the area an anon_vma if it has none,
  allocates a frame (alloc_page(): with no swap device there is nothing to reclaim, so this is
  the zone's allocation alone), marks it swap-backed and up to date, makes it the area's new
  anonymous page (page_add_new_anon_rmap()), puts it on the active LRU list and maps it
  writable, dirty and young; the retried access finds the pte writable and sets the dirty and
  young bits it already has; the write then stores the contents. The zeroes the fault puts in
  the frame are overwritten before anything can read them.
* a page mapped writable: no fault; the access sets the pte's young and dirty bits, and the
  write stores the contents.

The loop is taken only on a machine with no swap device and no per-CPU LRU buffers, outside
the interleaving explorer (whose preemption points are in the fault path), and while the
zone has a free frame (an allocation failure is the exact path's to report).

``write_page_run(mm, vma, address, count, source, index)`` is the same loop over a run of
consecutive pages of one area whose contents a ``PageSource`` generates (page ``k`` of the run
gets the source's page ``index + k``), so that a fill or a background writer hands a whole run
to one call: ``write_page_run_function`` returns the C version (``ksmsim._speedups``) with
``c_helpers``, else ``write_page_run_py``, its pure-Python twin. It takes the same two cases,
and stops, returning how many pages it wrote, at the first page that is in neither (or that
needs an anon_vma the area does not have yet, or finds no free frame): the caller hands that
page to the exact path. Its callers check the conditions above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from ksmsim.kernel.ksm_shortcuts import PageText, Shortcuts, pause_gc
from ksmsim.kernel.memory import write_user_bytes
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    PTRS_PER_PTE,
    VM_WRITE,
    MmStruct,
    VmArea,
)
from ksmsim.kernel.page import (
    PAGE_MAPPING_ANON,
    PAGE_SHIFT,
    PAGE_SIZE,
    PG_active,
    PG_lru,
    PG_swapbacked,
    PG_uptodate,
)
from ksmsim.kernel.rmap import AnonVma, anon_vma_prepare

__all__ = [
    "SOURCE_CONSTANT",
    "SOURCE_CYCLIC",
    "SOURCE_NUMBERED",
    "PageSource",
    "WritePageRun",
    "source_page",
    "write_page_run_function",
    "write_page_run_py",
    "write_user_pages",
]

_WRITABLE_PRESENT = _PAGE_PRESENT | _PAGE_RW
_NEW_PTE_BITS = _PAGE_PRESENT | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
_YOUNG_DIRTY = _PAGE_ACCESSED | _PAGE_DIRTY


def write_user_pages(mm: MmStruct, writes: Iterable[tuple[int, bytes]]) -> int:
    """Store whole pages at page-aligned addresses, in order, as write_user_bytes() would for
    each (see the module docstring); return how many pages were written."""
    machine = mm.machine
    ksm = machine.ksm
    fast = (
        ksm is not None
        and ksm.shortcuts.fill_batch
        and machine.swap is None
        and not machine.config.lru_pagevec
        and machine.preempt is None
    )
    if not fast:
        done = 0
        for address, data in writes:
            write_user_bytes(mm, address, data)
            done += 1
        return done
    with pause_gc(ksm):
        return _write_fresh_pages(mm, writes)


def _write_new_anon_page(
    mm: MmStruct, vma: VmArea, anon_vma: AnonVma, address: int, data: bytes
) -> None:
    """Store ``data`` at ``address``, never touched before, as a write does there:
    do_anonymous_page() for a write (a new anonymous page, on the active LRU, mapped writable,
    young and dirty), then the store. The caller has checked a frame is free."""
    machine = mm.machine
    page = machine.zone.alloc_page()
    assert page is not None
    page.flags |= PG_swapbacked | PG_uptodate
    page.mapcount = 1
    page.mapping = anon_vma
    page.mapping_flags = PAGE_MAPPING_ANON
    page.index = ((address - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff
    machine.nr_anon_pages += 1
    page.flags |= PG_lru | PG_active  # lru.add(page, active=True)
    machine.lru.active[page] = None
    mm.anon_rss += 1
    mm.set_pte_at(address, (page.pfn << PAGE_SHIFT) | _NEW_PTE_BITS)
    page.data = data


def _write_fresh_pages(mm: MmStruct, writes: Iterable[tuple[int, bytes]]) -> int:
    """The loop of write_user_pages() (the conditions for it hold)."""
    machine = mm.machine
    zone = machine.zone
    pgd = mm.pgd
    vma = None
    done = 0
    for address, data in writes:
        done += 1
        if len(data) != PAGE_SIZE or address & (PAGE_SIZE - 1):
            write_user_bytes(mm, address, data)
            continue
        if vma is None or not vma.vm_start <= address < vma.vm_end:
            vma = mm.find_vma(address)
            if vma is None or vma.vm_start > address or not vma.vm_flags & VM_WRITE:
                vma = None
                write_user_bytes(mm, address, data)
                continue
        vpn = address >> PAGE_SHIFT
        table = pgd.get(vpn >> 9)
        pte = 0 if table is None else table[vpn & (PTRS_PER_PTE - 1)]
        if pte & (_WRITABLE_PRESENT | _PAGE_SPECIAL) == _WRITABLE_PRESENT:
            # Mapped writable: no fault, the access marks the pte young and dirty.
            if pte & _YOUNG_DIRTY != _YOUNG_DIRTY:
                mm.set_pte_at(address, pte | _YOUNG_DIRTY)
            page = zone.mem_map[pte >> PAGE_SHIFT]
            assert page is not None
            page.data = data
            continue
        if pte or not zone.nr_free:
            write_user_bytes(mm, address, data)
            continue
        anon_vma = vma.anon_vma
        if anon_vma is None:
            anon_vma = anon_vma_prepare(vma)
        _write_new_anon_page(mm, vma, anon_vma, address, data)
    return done


# -- runs of generated pages -------------------------------------------------------------------
SOURCE_CONSTANT: Final = 0
SOURCE_NUMBERED: Final = 1
SOURCE_CYCLIC: Final = 2


class PageSource(NamedTuple):
    """The contents of page ``i`` of a run of writes, generated (see ``source_page``).

    ``SOURCE_CONSTANT``: ``obj`` for every page. ``SOURCE_NUMBERED``: a ``PageText`` of head
    ``head + b"%d|" % i`` and filler byte ``filler`` (a ``unique`` page). ``SOURCE_CYCLIC``:
    ``obj[i % modulus]``, ``obj`` a list of shared contents (the ``repeat:K`` pages, K the
    modulus), grown as needed with a ``PageText`` of head ``head + b"%d|" % r`` for residue r.
    """

    kind: int
    obj: Any = None
    modulus: int = 1
    head: bytes = b""
    filler: int = 0


def _numbered(head: bytes, filler: int, i: int) -> bytes | None:
    """Return a PageText of ``head + b"%d|" % i`` and ``filler``, or None when longer than a page."""
    text_head = head + b"%d|" % i
    if len(text_head) > PAGE_SIZE:
        return None
    text: bytes = PageText(text_head, filler)
    return text


def source_page(source: PageSource, i: int) -> bytes | None:
    """Return the contents ``source`` gives page ``i``, or None where it gives none (a negative
    index, a head longer than a page)."""
    kind, obj, modulus, head, filler = source
    if kind == SOURCE_CONSTANT:
        data: bytes = obj
        return data
    if i < 0:
        return None
    if kind == SOURCE_NUMBERED:
        return _numbered(head, filler, i)
    texts: list[bytes] = obj
    r = i % modulus
    while len(texts) <= r:  # grown with no gaps, as fill_batch._repeat_texts() grows it
        text = _numbered(head, filler, len(texts))
        if text is None:
            return None
        texts.append(text)
    return texts[r]


def write_page_run_py(
    mm: MmStruct, vma: VmArea, address: int, count: int, source: PageSource, index: int
) -> int:
    """Write pages ``index``, ``index + 1``, ... of ``source`` to the ``count`` pages from
    ``address`` (all inside the writable area ``vma``) as _write_fresh_pages() does, stopping
    at the first page it cannot take; return how many it wrote (pure Python)."""
    machine = mm.machine
    zone = machine.zone
    mem_map = zone.mem_map
    pgd = mm.pgd
    anon_vma = vma.anon_vma
    done = 0
    while done < count:
        data = source_page(source, index + done)
        if data is None:
            break
        addr = address + (done << PAGE_SHIFT)
        vpn = addr >> PAGE_SHIFT
        table = pgd.get(vpn >> 9)
        pte = 0 if table is None else table[vpn & (PTRS_PER_PTE - 1)]
        if pte & (_WRITABLE_PRESENT | _PAGE_SPECIAL) == _WRITABLE_PRESENT:
            # Mapped writable: no fault, the access marks the pte young and dirty.
            page = mem_map[pte >> PAGE_SHIFT]
            if page is None:
                break
            if pte & _YOUNG_DIRTY != _YOUNG_DIRTY:
                mm.set_pte_at(addr, pte | _YOUNG_DIRTY)
            page.data = data
            done += 1
            continue
        if pte or anon_vma is None or not zone.nr_free:
            break  # the exact path's: a fault of another kind, anon_vma_prepare(), or OOM
        _write_new_anon_page(mm, vma, anon_vma, addr, data)
        done += 1
    return done


WritePageRun = Callable[[MmStruct, VmArea, int, int, PageSource, int], int]
_write_page_run_c: WritePageRun | None = None
_c_setup_done = False


def _setup_c() -> WritePageRun | None:
    """Hand the frame class and the pte-table constructor to the C loop, if it was built and
    frames use the C base; return the C loop, or None."""
    global _write_page_run_c, _c_setup_done
    if _c_setup_done:
        return _write_page_run_c
    _c_setup_done = True
    try:
        from ksmsim import _speedups
    except ImportError:  # pragma: no cover - built without a compiler
        return None
    if not hasattr(_speedups, "write_page_run"):  # pragma: no cover - a stale build
        return None
    from ksmsim.kernel.mm import new_pte_table
    from ksmsim.kernel.page import Page

    if not _speedups.page_run_setup(Page, new_pte_table):
        return None  # frames on the pure-Python base (page.py): the twin runs
    _write_page_run_c = _speedups.write_page_run
    return _write_page_run_c


def write_page_run_function(shortcuts: Shortcuts) -> WritePageRun:
    """Return write_page_run(): the C loop with ``c_helpers`` (when built), else the twin."""
    if shortcuts.c_helpers:
        fn = _write_page_run_c if _c_setup_done else _setup_c()
        if fn is not None:
            return fn
    return write_page_run_py
