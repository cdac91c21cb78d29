"""madvise() for anonymous memory: MERGEABLE, UNMERGEABLE, DONTNEED, (NO)HUGEPAGE (mm/madvise.c).

The KSM advices go through ``ksm_madvise`` exactly as the kernel's madvise_behavior() does,
which silently refuses areas KSM cannot handle and may fail (the flag then stays as it was).
"""

from __future__ import annotations

from typing import Final

from ksmsim.kernel.memory import zap_page_range
from ksmsim.kernel.mm import VM_HUGEPAGE, VM_LOCKED, VM_NOHUGEPAGE, MmStruct, VmArea
from ksmsim.kernel.mmap import EINVAL, ENOMEM, MmapError, vma_merge, vmas_in_range
from ksmsim.kernel.page import PAGE_MASK, PAGE_SIZE

MADV_DONTNEED: Final = 4
MADV_MERGEABLE: Final = 12
MADV_UNMERGEABLE: Final = 13
MADV_HUGEPAGE: Final = 14
MADV_NOHUGEPAGE: Final = 15

ADVICE_NAMES: Final = {
    "dontneed": MADV_DONTNEED,
    "mergeable": MADV_MERGEABLE,
    "unmergeable": MADV_UNMERGEABLE,
    "hugepage": MADV_HUGEPAGE,
    "nohugepage": MADV_NOHUGEPAGE,
}


def do_madvise(mm: MmStruct, start: int, length: int, advice: int) -> None:
    """Apply ``advice`` to ``[start, start+length)``: sys_madvise() (2.6.33 with 6.x advices).

    Raises MmapError with the errno the system call would return (ENOMEM for a range with
    unmapped holes, after applying the advice to the mapped parts, as the kernel does).
    """
    if start & ~PAGE_MASK:
        raise MmapError(EINVAL, f"madvise start {start:#x} not page aligned")
    end = start + ((length + PAGE_SIZE - 1) & PAGE_MASK)
    if advice not in ADVICE_NAMES.values():
        raise MmapError(EINVAL, f"unknown advice {advice}")
    if end <= start:
        return
    covered = 0
    if advice == MADV_DONTNEED:
        for vma in _overlapping(mm, start, end):
            if vma.vm_flags & VM_LOCKED:
                raise MmapError(EINVAL, "MADV_DONTNEED on a locked area")
            lo, hi = max(start, vma.vm_start), min(end, vma.vm_end)
            zap_page_range(vma, lo, hi)
            covered += hi - lo
    else:
        changed = vmas_in_range(mm, start, end)
        for vma in changed:
            covered += vma.vm_end - vma.vm_start
            flags = vma.vm_flags
            if advice in (MADV_MERGEABLE, MADV_UNMERGEABLE):
                ksm = mm.machine.ksm
                if ksm is None:
                    raise MmapError(EINVAL, "KSM is not configured")
                err, flags = ksm.ksm_madvise(vma, vma.vm_start, vma.vm_end, advice, flags)
                if err:
                    raise MmapError(-err, f"ksm_madvise failed with {err}")
            elif advice == MADV_HUGEPAGE:
                flags = (flags | VM_HUGEPAGE) & ~VM_NOHUGEPAGE
            elif advice == MADV_NOHUGEPAGE:
                flags = (flags | VM_NOHUGEPAGE) & ~VM_HUGEPAGE
            else:
                raise MmapError(EINVAL, f"unknown advice {advice}")
            vma.vm_flags = flags
        for vma in changed:
            if vma in mm.mmap:
                vma_merge(vma)
    if covered < end - start:
        raise MmapError(ENOMEM, f"madvise range {start:#x}-{end:#x} has unmapped holes")


def _overlapping(mm: MmStruct, start: int, end: int) -> list[VmArea]:
    out: list[VmArea] = []
    vma = mm.find_vma(start)
    while vma is not None and vma.vm_start < end:
        out.append(vma)
        vma = mm.find_vma(vma.vm_end)
    return out
