"""Address spaces: mm_struct, vm_area_struct and page tables (include/linux/mm_types.h, 2.6.33).

Page-table entries are plain integers, so that a page table is a compact ``array`` of 512
entries like the kernel's pte pages: ``pfn << PAGE_SHIFT`` plus the bits below. A zero entry is
``pte_none``. Swap and migration entries are non-present entries carrying an offset.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from ksmsim.kernel.page import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine
    from ksmsim.kernel.rmap import AnonVma

# --- pte bits -------------------------------------------------------------------------------
_PAGE_PRESENT: Final = 1 << 0
_PAGE_RW: Final = 1 << 1
_PAGE_DIRTY: Final = 1 << 2
_PAGE_ACCESSED: Final = 1 << 3
_PAGE_SPECIAL: Final = 1 << 4
_PAGE_SWP: Final = 1 << 5
_PAGE_MIGRATION: Final = 1 << 6
PTE_FLAGS_MASK: Final = PAGE_SIZE - 1

PTRS_PER_PTE: Final = 512
_PTE_MAPPING_BITS: Final = ~(_PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED)
"""The pte bits that say what an entry maps (all but write, dirty and young)."""
_PTE_TABLE_SHIFT: Final = 9
_EMPTY_PTE_TABLE: Final = array("Q", bytes(8 * PTRS_PER_PTE))


def new_pte_table() -> array[int]:
    """Return a new pte table of 512 none entries (as set_pte_at() allocates one)."""
    return array("Q", _EMPTY_PTE_TABLE)


def pte_present(pte: int) -> bool:
    """Tell whether the entry maps a frame."""
    return bool(pte & _PAGE_PRESENT)


def pte_write(pte: int) -> bool:
    """Tell whether the entry is writable."""
    return bool(pte & _PAGE_RW)


def pte_pfn(pte: int) -> int:
    """Return the frame number of a present entry (or the offset of a swap entry)."""
    return pte >> PAGE_SHIFT


def pte_special(pte: int) -> bool:
    """Tell whether a present entry is special (the zero page: no struct page refcounting)."""
    return bool(pte & _PAGE_SPECIAL)


def is_swap_pte(pte: int) -> bool:
    """Tell whether the entry holds a swap entry."""
    return bool(pte & _PAGE_SWP)


def is_migration_pte(pte: int) -> bool:
    """Tell whether the entry holds a migration entry."""
    return bool(pte & _PAGE_MIGRATION)


def mk_pte(pfn: int, writable: bool, dirty: bool = True, young: bool = True) -> int:
    """Build a present entry: mk_pte() plus pte_mkwrite/mkdirty/mkyoung."""
    pte = (pfn << PAGE_SHIFT) | _PAGE_PRESENT
    if writable:
        pte |= _PAGE_RW
    if dirty:
        pte |= _PAGE_DIRTY
    if young:
        pte |= _PAGE_ACCESSED
    return pte


def pte_wrprotect(pte: int) -> int:
    """Clear the write bit: pte_wrprotect()."""
    return pte & ~_PAGE_RW


def pte_mkold(pte: int) -> int:
    """Clear the young bit: pte_mkold()."""
    return pte & ~_PAGE_ACCESSED


def pte_mkclean(pte: int) -> int:
    """Clear the dirty bit: pte_mkclean()."""
    return pte & ~_PAGE_DIRTY


def pte_dirty(pte: int) -> bool:
    """Tell whether the dirty bit is set."""
    return bool(pte & _PAGE_DIRTY)


def pte_young(pte: int) -> bool:
    """Tell whether the accessed bit is set."""
    return bool(pte & _PAGE_ACCESSED)


def swp_entry_to_pte(offset: int) -> int:
    """Encode a swap slot as a non-present entry: swp_entry_to_pte()."""
    return (offset << PAGE_SHIFT) | _PAGE_SWP


def migration_entry_to_pte(pfn: int, writable: bool) -> int:
    """Encode a migration entry for the frame under migration: make_migration_entry()."""
    return (pfn << PAGE_SHIFT) | _PAGE_MIGRATION | (_PAGE_RW if writable else 0)


# --- VMA flags (include/linux/mm.h, 2.6.33 values where they existed) ------------------------
VM_READ: Final = 0x00000001
VM_WRITE: Final = 0x00000002
VM_EXEC: Final = 0x00000004
VM_SHARED: Final = 0x00000008
VM_MAYREAD: Final = 0x00000010
VM_MAYWRITE: Final = 0x00000020
VM_MAYEXEC: Final = 0x00000040
VM_MAYSHARE: Final = 0x00000080
VM_GROWSDOWN: Final = 0x00000100
VM_PFNMAP: Final = 0x00000400
VM_LOCKED: Final = 0x00002000
VM_IO: Final = 0x00004000
VM_DONTCOPY: Final = 0x00020000
VM_DONTEXPAND: Final = 0x00040000
VM_RESERVED: Final = 0x00080000
VM_HUGETLB: Final = 0x00400000
VM_NONLINEAR: Final = 0x00800000
VM_INSERTPAGE: Final = 0x02000000
VM_MIXEDMAP: Final = 0x10000000
VM_SAO: Final = 0x20000000
VM_MERGEABLE: Final = 0x80000000
VM_HUGEPAGE: Final = 0x100000000
VM_NOHUGEPAGE: Final = 0x200000000
VM_DROPPABLE: Final = 0x400000000

VM_ANON_DEFAULT: Final = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC

# mm->flags bits
MMF_VM_MERGEABLE: Final = 1 << 0
MMF_VM_MERGE_ANY: Final = 1 << 1

# x86-64 without randomisation: TASK_SIZE less the minimum stack gap.
TASK_SIZE: Final = (1 << 47) - PAGE_SIZE
MMAP_BASE: Final = TASK_SIZE - (128 << 20)
MMAP_MIN_ADDR: Final = 0x10000


class VmArea:
    """One virtual memory area (vm_area_struct)."""

    __slots__ = ("anon_vma", "vm_end", "vm_flags", "vm_mm", "vm_pgoff", "vm_start")

    def __init__(self, mm: MmStruct, start: int, end: int, flags: int, pgoff: int) -> None:
        self.vm_mm = mm
        self.vm_start = start
        self.vm_end = end
        self.vm_flags = flags
        self.vm_pgoff = pgoff
        self.anon_vma: AnonVma | None = None

    def __repr__(self) -> str:
        return f"<VmArea {self.vm_start:#x}-{self.vm_end:#x} flags={self.vm_flags:#x}>"

    def linear_page_index(self, address: int) -> int:
        """Return the page index of ``address`` in this area's object: linear_page_index()."""
        return ((address - self.vm_start) >> PAGE_SHIFT) + self.vm_pgoff


class MmStruct:
    """An address space (mm_struct): its VMAs in address order, its page table and counters.

    ``pgd`` maps the upper bits of a virtual page number to a 512-entry pte table. ``mm_users``
    counts the tasks using the address space; KSM's ``ksm_test_exit`` is ``mm_users == 0``.
    The ``ksm_*`` fields are the per-mm KSM statistics of 6.x kernels.
    """

    __slots__ = (
        "_ends",
        "anon_rss",
        "flags",
        "ksm_merging_pages",
        "ksm_rmap_items",
        "ksm_zero_pages",
        "machine",
        "mm_count",
        "mm_users",
        "mmap",
        "mmap_base",
        "mmap_cache",
        "name",
        "pgd",
        "pid",
    )

    def __init__(self, machine: Machine, pid: int, name: str) -> None:
        self.machine = machine
        self.pid = pid
        self.name = name
        self.mmap: list[VmArea] = []
        self._ends: list[int] = []
        self.mmap_cache: VmArea | None = None
        self.pgd: dict[int, array[int]] = {}
        self.mm_users = 1
        self.mm_count = 1
        self.flags = 0
        self.mmap_base = MMAP_BASE
        self.anon_rss = 0
        self.ksm_rmap_items = 0
        self.ksm_merging_pages = 0
        self.ksm_zero_pages = 0

    def __repr__(self) -> str:
        return f"<MmStruct pid={self.pid} {self.name!r} vmas={len(self.mmap)}>"

    # -- VMAs ----------------------------------------------------------------------------------
    def vmas_changed(self) -> None:
        """Re-sort the VMA list after an insert, removal, split or merge."""
        self.machine.zone.map_generation += 1
        self.mmap.sort(key=_vm_start)
        self._ends = [v.vm_end for v in self.mmap]
        self.mmap_cache = None

    def find_vma(self, addr: int) -> VmArea | None:
        """Return the first VMA that ends above ``addr``, or None: find_vma()."""
        vma = self.mmap_cache
        if vma is not None and vma.vm_start <= addr < vma.vm_end:
            return vma
        i = bisect_right(self._ends, addr)
        if i == len(self.mmap):
            return None
        vma = self.mmap[i]
        self.mmap_cache = vma
        return vma

    def vma_index(self, vma: VmArea) -> int:
        """Return the position of ``vma`` in the address-ordered list."""
        return bisect_right(self._ends, vma.vm_start)

    # -- page table ----------------------------------------------------------------------------
    def pte_get(self, addr: int) -> int:
        """Read the pte for a virtual address (0 if there is no page table there)."""
        vpn = addr >> PAGE_SHIFT
        table = self.pgd.get(vpn >> _PTE_TABLE_SHIFT)
        if table is None:
            return 0
        return table[vpn & (PTRS_PER_PTE - 1)]

    def set_pte_at(self, addr: int, pte: int) -> None:
        """Write the pte for a virtual address, allocating the pte table: set_pte_at().

        A change of what the entry maps moves the zone's ``map_generation`` (ksm_shortcuts.py).
        """
        vpn = addr >> PAGE_SHIFT
        key = vpn >> _PTE_TABLE_SHIFT
        table = self.pgd.get(key)
        if table is None:
            if not pte:
                return
            table = self.pgd[key] = array("Q", _EMPTY_PTE_TABLE)
        idx = vpn & (PTRS_PER_PTE - 1)
        if (table[idx] ^ pte) & _PTE_MAPPING_BITS:
            self.machine.zone.map_generation += 1
        table[idx] = pte

    def set_pte_at_by_ksmd(self, addr: int, pte: int) -> None:
        """Write a pte for ksmd's write_protect_page() and replace_page(): set_pte_at(),
        leaving ``map_generation`` alone, as the unstable-tree shortcut allows for exactly
        these (they change only ptes of items that are not, or are no longer, in the tree)."""
        vpn = addr >> PAGE_SHIFT
        key = vpn >> _PTE_TABLE_SHIFT
        table = self.pgd.get(key)
        if table is None:
            if not pte:
                return
            table = self.pgd[key] = array("Q", _EMPTY_PTE_TABLE)
        table[vpn & (PTRS_PER_PTE - 1)] = pte

    def ptes(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Yield ``(address, pte)`` for every non-none pte in ``[start, end)``, in order."""
        pgd = self.pgd
        vpn = start >> PAGE_SHIFT
        last = end >> PAGE_SHIFT
        while vpn < last:
            key = vpn >> _PTE_TABLE_SHIFT
            stop = min(last, (key + 1) << _PTE_TABLE_SHIFT)
            table = pgd.get(key)
            if table is not None:
                base = key << _PTE_TABLE_SHIFT
                for i in range(vpn - base, stop - base):
                    pte = table[i]
                    if pte:
                        yield (base + i) << PAGE_SHIFT, pte
            vpn = stop

    def all_ptes(self) -> Iterator[tuple[int, int]]:
        """Yield ``(address, pte)`` for every non-none pte of the address space."""
        for key in sorted(self.pgd):
            table = self.pgd[key]
            base = key << _PTE_TABLE_SHIFT
            for i, pte in enumerate(table):
                if pte:
                    yield (base + i) << PAGE_SHIFT, pte


def _vm_start(vma: VmArea) -> int:
    return vma.vm_start


def vma_pages(vma: VmArea) -> int:
    """Return the number of pages the VMA spans: vma_pages()."""
    return (vma.vm_end - vma.vm_start) >> PAGE_SHIFT


def describe_vma(vma: VmArea) -> dict[str, Any]:
    """Return a JSON-able description of a VMA for reports and traces."""
    return {"start": vma.vm_start, "end": vma.vm_end, "flags": vma.vm_flags}
