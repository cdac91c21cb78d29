"""Process address-space life cycle: fork's dup_mm and exit's mmput (kernel/fork.c, 2.6.33)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ksmsim.kernel.memory import copy_page_range
from ksmsim.kernel.mm import MMF_VM_MERGE_ANY, VM_DONTCOPY, VM_LOCKED, MmStruct, VmArea
from ksmsim.kernel.mmap import exit_mmap
from ksmsim.kernel.rmap import anon_vma_link

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine

MMF_INIT_MASK: Final = MMF_VM_MERGE_ANY
"""mm->flags bits a child inherits; MMF_VM_MERGEABLE is not among them (ksm_fork sets it)."""


def dup_mm(machine: Machine, oldmm: MmStruct, pid: int, name: str) -> MmStruct:
    """Copy an address space for a fork child, copy-on-write: dup_mm() and dup_mmap() (2.6.33).

    Each child VMA joins its parent's anon_vma, as in 2.6.33 (no anon_vma_chain yet).
    """
    mm = MmStruct(machine, pid, name)
    mm.flags = oldmm.flags & MMF_INIT_MASK
    mm.mmap_base = oldmm.mmap_base
    # dup_mm() copies the whole mm_struct: 6.x's count of KSM zero pages comes along with
    # the ptes that copy_page_range() copies.
    mm.ksm_zero_pages = oldmm.ksm_zero_pages
    if machine.ksm is not None:
        machine.ksm.ksm_fork(mm, oldmm)
    for vma in oldmm.mmap:
        if vma.vm_flags & VM_DONTCOPY:
            continue
        tmp = VmArea(mm, vma.vm_start, vma.vm_end, vma.vm_flags & ~VM_LOCKED, vma.vm_pgoff)
        tmp.anon_vma = vma.anon_vma
        anon_vma_link(tmp)
        mm.mmap.append(tmp)
        mm.vmas_changed()
        copy_page_range(tmp, vma)
    mm.vmas_changed()
    return mm


def mmput(mm: MmStruct) -> None:
    """Drop a user of the address space; the last one tears it down: mmput() (2.6.33).

    KSM hears of the exit first (ksm_exit), then exit_mmap frees the pages.
    """
    mm.mm_users -= 1
    if mm.mm_users:
        return
    if mm.machine.ksm is not None:
        mm.machine.ksm.ksm_exit(mm)
    exit_mmap(mm)
    mm.mm_count -= 1
