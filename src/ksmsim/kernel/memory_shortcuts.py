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
"""

from __future__ import annotations

from collections.abc import Iterable

from ksmsim.kernel.ksm_shortcuts import pause_gc
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
from ksmsim.kernel.rmap import anon_vma_prepare

__all__ = ["write_user_pages"]

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


def _write_fresh_pages(mm: MmStruct, writes: Iterable[tuple[int, bytes]]) -> int:
    """The loop of write_user_pages() (the conditions for it hold)."""
    machine = mm.machine
    zone = machine.zone
    lru_active = machine.lru.active
    pgd = mm.pgd
    lru_bits = PG_lru | PG_active
    new_bits = PG_swapbacked | PG_uptodate
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
        # Never touched: do_anonymous_page() for a write, then the store.
        anon_vma = vma.anon_vma
        if anon_vma is None:
            anon_vma = anon_vma_prepare(vma)
        page = zone.alloc_page()
        assert page is not None
        page.flags |= new_bits
        page.mapcount = 1
        page.mapping = anon_vma
        page.mapping_flags = PAGE_MAPPING_ANON
        page.index = ((address - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff
        machine.nr_anon_pages += 1
        page.flags |= lru_bits  # lru.add(page, active=True)
        lru_active[page] = None
        mm.anon_rss += 1
        mm.set_pte_at(address, (page.pfn << PAGE_SHIFT) | _NEW_PTE_BITS)
        page.data = data
    return done
