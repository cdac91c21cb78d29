"""Reverse maps for anonymous memory: anon_vma and the page (un)map hooks (mm/rmap.c, 2.6.33).

In 2.6.33 a forked child's VMA joins its parent's anon_vma (one list of VMAs per anon_vma,
no anon_vma_chain yet), so a frame's ``mapping`` leads to every VMA that might map it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ksmsim.kernel.mm import (
    VM_DONTCOPY,
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_MERGEABLE,
    VM_NOHUGEPAGE,
    MmStruct,
    VmArea,
    pte_pfn,
    pte_present,
    pte_special,
)
from ksmsim.kernel.page import PAGE_MAPPING_ANON, PAGE_SHIFT, Page, PageAnon, PageKsm, page_anon_vma

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine

# Flags that do not stop two adjacent VMAs from sharing an anon_vma or merging.
_VMA_MERGE_IGNORED = 0


class AnonVma:
    """An anon_vma: the list of VMAs whose anonymous pages point here (struct anon_vma, 2.6.33).

    ``ksm_refcount`` is the reference KSM's stable rmap_items hold ("ksm: hold anon_vma in
    rmap_item"); the anon_vma is freed only when it has no VMA and no KSM reference.
    """

    __slots__ = ("freed", "head", "ksm_refcount", "serial")

    _next_serial = 0

    def __init__(self) -> None:
        self.head: list[VmArea] = []
        self.ksm_refcount = 0
        self.freed = False
        AnonVma._next_serial += 1
        self.serial = AnonVma._next_serial

    def __repr__(self) -> str:
        return f"<AnonVma #{self.serial} vmas={len(self.head)} ksm_refcount={self.ksm_refcount}>"


def _anon_mergeable(a: VmArea, b: VmArea) -> bool:
    """Tell whether two adjacent areas are alike enough to share an anon_vma."""
    ignore = VM_MERGEABLE | VM_HUGEPAGE | VM_NOHUGEPAGE | _VMA_MERGE_IGNORED
    return (a.vm_flags | ignore) == (b.vm_flags | ignore)


def find_mergeable_anon_vma(vma: VmArea) -> AnonVma | None:
    """Return a neighbour's anon_vma that ``vma`` may share: find_mergeable_anon_vma() (2.6.33)."""
    mm = vma.vm_mm
    i = mm.vma_index(vma)
    if i + 1 < len(mm.mmap):
        near = mm.mmap[i + 1]
        if (
            near.anon_vma is not None
            and near.vm_start == vma.vm_end
            and _anon_mergeable(vma, near)
            and near.vm_pgoff == vma.vm_pgoff + ((vma.vm_end - vma.vm_start) >> PAGE_SHIFT)
        ):
            return near.anon_vma
    if i > 0:
        near = mm.mmap[i - 1]
        if (
            near.anon_vma is not None
            and near.vm_end == vma.vm_start
            and _anon_mergeable(vma, near)
            and vma.vm_pgoff == near.vm_pgoff + ((near.vm_end - near.vm_start) >> PAGE_SHIFT)
        ):
            return near.anon_vma
    return None


def anon_vma_prepare(vma: VmArea) -> AnonVma:
    """Give the VMA an anon_vma (a neighbour's or a new one) if it has none: anon_vma_prepare()."""
    anon_vma = vma.anon_vma
    if anon_vma is None:
        anon_vma = find_mergeable_anon_vma(vma) or AnonVma()
        anon_vma.head.append(vma)
        vma.anon_vma = anon_vma
    return anon_vma


def anon_vma_link(vma: VmArea) -> None:
    """Add a VMA (a fork copy or a split piece) to its anon_vma's list: anon_vma_link()."""
    if vma.anon_vma is not None:
        vma.anon_vma.head.append(vma)


def anon_vma_unlink(vma: VmArea) -> None:
    """Take a VMA off its anon_vma, freeing the anon_vma when nothing needs it: anon_vma_unlink()."""
    anon_vma = vma.anon_vma
    if anon_vma is None:
        return
    anon_vma.head.remove(vma)
    if not anon_vma.head and anon_vma.ksm_refcount == 0:
        anon_vma.freed = True


def page_add_new_anon_rmap(page: Page, vma: VmArea, address: int) -> None:
    """Map a freshly allocated page at ``address`` as its first mapping: page_add_new_anon_rmap()."""
    assert vma.anon_vma is not None
    page.mapcount = 1
    page.mapping = vma.anon_vma
    page.mapping_flags = PAGE_MAPPING_ANON
    page.index = vma.linear_page_index(address)
    vma.vm_mm.machine.nr_anon_pages += 1


def page_add_anon_rmap(page: Page, vma: VmArea, address: int) -> None:
    """Add a mapping of an existing anonymous (or KSM) page: page_add_anon_rmap() (2.6.33).

    The first mapping of a non-KSM page points its mapping at the VMA's anon_vma; a KSM page
    keeps its stable node whatever maps it.
    """
    page.mapcount += 1
    if page.mapcount == 1:
        vma.vm_mm.machine.nr_anon_pages += 1
        if not PageKsm(page):
            assert vma.anon_vma is not None
            page.mapping = vma.anon_vma
            page.mapping_flags = PAGE_MAPPING_ANON
            page.index = vma.linear_page_index(address)


def page_dup_rmap(page: Page) -> None:
    """Add a mapping made by fork's copy of a pte: page_dup_rmap()."""
    page.mapcount += 1


def page_remove_rmap(page: Page, machine: Machine) -> None:
    """Drop one mapping; the last one leaves ``mapping`` as it is: page_remove_rmap() (2.6.33)."""
    page.mapcount -= 1
    if page.mapcount == 0:
        machine.nr_anon_pages -= 1
    elif page.mapcount < 0:
        raise AssertionError(f"mapcount went negative: {page!r}")


def vma_address(page: Page, vma: VmArea) -> int:
    """Return where ``page`` would sit in ``vma`` by its index, or -1 if outside: vma_address()."""
    address = vma.vm_start + ((page.index - vma.vm_pgoff) << PAGE_SHIFT)
    if address < vma.vm_start or address >= vma.vm_end:
        return -1
    return address


def page_address_in_vma(page: Page, vma: VmArea) -> int:
    """Return the page's address in ``vma`` if its anon_vma is the VMA's: page_address_in_vma()."""
    if PageAnon(page):
        if vma.anon_vma is None or page_anon_vma(page) is not vma.anon_vma:
            return -1
    else:
        return -1
    return vma_address(page, vma)


def page_check_address(page: Page, mm: MmStruct, address: int) -> int:
    """Return the pte at ``address`` if it maps ``page``, else 0: page_check_address()."""
    pte = mm.pte_get(address)
    if pte_present(pte) and not pte_special(pte) and pte_pfn(pte) == page.pfn:
        return pte
    return 0


def rmap_walk_anon(page: Page) -> Iterator[tuple[VmArea, int]]:
    """Yield every (vma, address) whose pte maps an ordinary anonymous page: rmap_walk_anon()."""
    anon_vma = page_anon_vma(page)
    if anon_vma is None:
        return
    for vma in list(anon_vma.head):
        address = vma_address(page, vma)
        if address >= 0 and page_check_address(page, vma.vm_mm, address):
            yield vma, address


def rmap_walk(page: Page, visit: Callable[[Page, VmArea, int], bool]) -> bool:
    """Call ``visit`` on each mapping of an anonymous page until it returns False: rmap_walk().

    KSM pages are walked by ksm.rmap_walk_ksm through their stable node instead.
    """
    return all(visit(page, vma, address) for vma, address in rmap_walk_anon(page))


def vma_is_locked(vma: VmArea) -> bool:
    """Tell whether the VMA is mlocked."""
    return bool(vma.vm_flags & VM_LOCKED)


def vma_dontcopy(vma: VmArea) -> bool:
    """Tell whether fork leaves the VMA out of the child."""
    return bool(vma.vm_flags & VM_DONTCOPY)
