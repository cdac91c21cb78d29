"""Mapping and unmapping anonymous regions: placement, split and merge (mm/mmap.c).

Placement follows x86-64's top-down allocator: a new mapping goes at the top of the highest
free gap below ``mmap_base`` that fits it, so holes left by munmap are reused.
"""

from __future__ import annotations

from typing import Final

from ksmsim.kernel.memory import zap_page_range
from ksmsim.kernel.mm import (
    MMAP_MIN_ADDR,
    VM_ANON_DEFAULT,
    MmStruct,
    VmArea,
)
from ksmsim.kernel.page import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ksmsim.kernel.rmap import anon_vma_link, anon_vma_unlink

ENOMEM: Final = 12
EINVAL: Final = 22


class MmapError(Exception):
    """A mapping call refused with an errno, as the system call would return it."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


def get_unmapped_area(mm: MmStruct, length: int) -> int:
    """Find the highest free gap below mmap_base that fits: arch_get_unmapped_area_topdown()."""
    top = mm.mmap_base
    for vma in reversed(mm.mmap):
        if vma.vm_start >= top:
            continue
        if vma.vm_end <= top - length:
            return top - length
        top = vma.vm_start
    if top - length >= MMAP_MIN_ADDR:
        return top - length
    raise MmapError(ENOMEM, f"no room for {length} bytes in {mm.name}")


def _is_mergeable_vma(a: VmArea, b: VmArea) -> bool:
    """Tell whether two areas touch, have equal flags, compatible anon_vmas and contiguous offsets."""
    return (
        a.vm_end == b.vm_start
        and a.vm_flags == b.vm_flags
        and (a.anon_vma is None or b.anon_vma is None or a.anon_vma is b.anon_vma)
        and b.vm_pgoff == a.vm_pgoff + ((a.vm_end - a.vm_start) >> PAGE_SHIFT)
    )


def _absorb(lower: VmArea, upper: VmArea) -> VmArea:
    """Merge ``upper`` into ``lower`` (they are mergeable) and return the survivor."""
    mm = lower.vm_mm
    lower.vm_end = upper.vm_end
    if lower.anon_vma is None and upper.anon_vma is not None:
        lower.anon_vma = upper.anon_vma
        anon_vma_link(lower)
    anon_vma_unlink(upper)
    mm.mmap.remove(upper)
    mm.vmas_changed()
    return lower


def vma_merge(vma: VmArea) -> VmArea:
    """Merge ``vma`` into its previous neighbour, then its next ones into the result, where
    they are compatible; return the surviving area: vma_merge() (2.6.33).

    As in the kernel, the lower area survives, so an area between two neighbours whose
    anon_vmas differ joins the lower one.
    """
    mm = vma.vm_mm
    i = mm.vma_index(vma)
    if i > 0 and _is_mergeable_vma(mm.mmap[i - 1], vma):
        vma = _absorb(mm.mmap[i - 1], vma)
    while True:
        i = mm.vma_index(vma)
        if i + 1 < len(mm.mmap) and _is_mergeable_vma(vma, mm.mmap[i + 1]):
            vma = _absorb(vma, mm.mmap[i + 1])
        else:
            return vma


def do_mmap_anon(mm: MmStruct, length: int, flags: int = VM_ANON_DEFAULT) -> int:
    """Map ``length`` bytes of private anonymous memory and return the address: do_mmap_pgoff()."""
    if length <= 0 or length & ~PAGE_MASK:
        raise MmapError(EINVAL, f"bad mmap length {length}")
    addr = get_unmapped_area(mm, length)
    if mm.machine.ksm is not None:
        flags = mm.machine.ksm.ksm_vma_flags(mm, flags)
    vma = VmArea(mm, addr, addr + length, flags, addr >> PAGE_SHIFT)
    mm.mmap.append(vma)
    mm.vmas_changed()
    vma_merge(vma)
    return addr


def split_vma(vma: VmArea, addr: int) -> VmArea:
    """Split a VMA at ``addr`` and return the upper part: split_vma()."""
    mm = vma.vm_mm
    if not vma.vm_start < addr < vma.vm_end:
        raise ValueError("split address outside the area")
    upper = VmArea(
        mm, addr, vma.vm_end, vma.vm_flags, vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT)
    )
    upper.anon_vma = vma.anon_vma
    anon_vma_link(upper)
    vma.vm_end = addr
    mm.mmap.append(upper)
    mm.vmas_changed()
    return upper


def vmas_in_range(mm: MmStruct, start: int, end: int) -> list[VmArea]:
    """Return the areas overlapping ``[start, end)``, split so that each lies inside it."""
    out: list[VmArea] = []
    vma = mm.find_vma(start)
    while vma is not None and vma.vm_start < end:
        if vma.vm_start < start:
            vma = split_vma(vma, start)
            continue
        if vma.vm_end > end:
            split_vma(vma, end)
        out.append(vma)
        vma = mm.find_vma(vma.vm_end)
    return out


def do_munmap(mm: MmStruct, start: int, length: int) -> None:
    """Unmap ``[start, start+length)``, splitting areas at the edges: do_munmap()."""
    if start & ~PAGE_MASK or length <= 0:
        raise MmapError(EINVAL, f"bad munmap range {start:#x}+{length}")
    end = start + ((length + PAGE_SIZE - 1) & PAGE_MASK)
    for vma in vmas_in_range(mm, start, end):
        zap_page_range(vma, vma.vm_start, vma.vm_end)
        anon_vma_unlink(vma)
        mm.mmap.remove(vma)
    mm.vmas_changed()


def exit_mmap(mm: MmStruct) -> None:
    """Tear down every area and page table of an address space: exit_mmap()."""
    for vma in list(mm.mmap):
        zap_page_range(vma, vma.vm_start, vma.vm_end)
        anon_vma_unlink(vma)
    mm.mmap.clear()
    mm.pgd.clear()
    mm.vmas_changed()
