"""Tests for ksmsim.kernel.mm (ptes, VMAs, mm_struct) and the Machine/profile plumbing."""

from __future__ import annotations

import re

import pytest

from ksmsim.kernel import mm as mmmod
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    MMAP_BASE,
    MMAP_MIN_ADDR,
    PTRS_PER_PTE,
    TASK_SIZE,
    VM_ANON_DEFAULT,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYWRITE,
    VM_READ,
    VM_WRITE,
    MmStruct,
    VmArea,
    describe_vma,
    is_migration_pte,
    is_swap_pte,
    migration_entry_to_pte,
    mk_pte,
    pte_dirty,
    pte_mkclean,
    pte_mkold,
    pte_pfn,
    pte_present,
    pte_special,
    pte_write,
    pte_wrprotect,
    pte_young,
    swp_entry_to_pte,
    vma_pages,
)
from ksmsim.kernel.page import PAGE_SIZE
from ksmsim.kernel.profile import KEYHOLE, PLANNED_PROFILES, PROFILES, UnknownProfile, get_profile


# --- pte encoding ---------------------------------------------------------------------------
def test_pte_bit_values() -> None:
    assert (_PAGE_PRESENT, _PAGE_RW, _PAGE_DIRTY, _PAGE_ACCESSED, _PAGE_SPECIAL) == (
        1,
        2,
        4,
        8,
        16,
    )
    assert mmmod.PTE_FLAGS_MASK == 0xFFF
    assert PTRS_PER_PTE == 512


def test_mk_pte_full() -> None:
    pte = mk_pte(0x1234, writable=True)
    assert pte == (0x1234 << 12) | _PAGE_PRESENT | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
    assert pte_present(pte) and pte_write(pte) and pte_dirty(pte) and pte_young(pte)
    assert not pte_special(pte) and not is_swap_pte(pte) and not is_migration_pte(pte)
    assert pte_pfn(pte) == 0x1234


def test_mk_pte_minimal() -> None:
    pte = mk_pte(7, writable=False, dirty=False, young=False)
    assert pte == (7 << 12) | _PAGE_PRESENT
    assert not pte_write(pte) and not pte_dirty(pte) and not pte_young(pte)


def test_pte_modifiers_clear_one_bit_each() -> None:
    pte = mk_pte(3, writable=True)
    assert pte_wrprotect(pte) == pte & ~_PAGE_RW
    assert pte_mkold(pte) == pte & ~_PAGE_ACCESSED
    assert pte_mkclean(pte) == pte & ~_PAGE_DIRTY
    assert pte_pfn(pte_wrprotect(pte_mkold(pte_mkclean(pte)))) == 3
    assert pte_wrprotect(pte_mkold(pte_mkclean(pte))) == (3 << 12) | _PAGE_PRESENT


def test_swap_and_migration_entries_are_not_present() -> None:
    swp = swp_entry_to_pte(42)
    assert not pte_present(swp) and is_swap_pte(swp) and not is_migration_pte(swp)
    assert pte_pfn(swp) == 42
    mig = migration_entry_to_pte(9, writable=True)
    assert not pte_present(mig) and is_migration_pte(mig) and not is_swap_pte(mig)
    assert pte_pfn(mig) == 9 and pte_write(mig)
    assert not pte_write(migration_entry_to_pte(9, writable=False))


# --- VMA flags and layout constants ---------------------------------------------------------
def test_anon_default_flags() -> None:
    assert VM_ANON_DEFAULT == VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC == 0x73
    assert mmmod.VM_MERGEABLE == 0x80000000


def test_address_space_layout() -> None:
    assert TASK_SIZE == 0x7FFFFFFFF000
    assert MMAP_BASE == 0x7FFFF7FFF000
    assert MMAP_MIN_ADDR == 0x10000


# --- VmArea ---------------------------------------------------------------------------------
def _machine(pages: int = 16) -> Machine:
    return Machine(KEYHOLE, MachineConfig(ram_pages=pages))


def test_vmarea_fields_and_helpers() -> None:
    m = _machine()
    mm = m.new_process("p")
    vma = VmArea(mm, 0x10000, 0x14000, VM_ANON_DEFAULT, 0x10)
    assert vma.vm_mm is mm and vma.anon_vma is None
    assert vma_pages(vma) == 4
    assert vma.linear_page_index(0x10000) == 0x10
    assert vma.linear_page_index(0x13FFF) == 0x13
    assert describe_vma(vma) == {"start": 0x10000, "end": 0x14000, "flags": 0x73}
    assert repr(vma) == "<VmArea 0x10000-0x14000 flags=0x73>"


# --- MmStruct -------------------------------------------------------------------------------
def test_new_mm_state() -> None:
    m = _machine()
    mm = m.new_process("init")
    assert mm.pid == 1001 and mm.name == "init" and mm.machine is m
    assert mm.mmap == [] and mm.pgd == {} and mm.mmap_cache is None
    assert (mm.mm_users, mm.mm_count, mm.flags, mm.anon_rss) == (1, 1, 0, 0)
    assert mm.mmap_base == MMAP_BASE
    assert (mm.ksm_rmap_items, mm.ksm_merging_pages, mm.ksm_zero_pages) == (0, 0, 0)
    assert m.tasks == {1001: mm}
    assert m.new_process("second").pid == 1002
    assert repr(mm) == "<MmStruct pid=1001 'init' vmas=0>"


def _mm_with_vmas(*ranges: tuple[int, int]) -> MmStruct:
    mm = _machine().new_process("p")
    for start, end in ranges:
        mm.mmap.append(VmArea(mm, start, end, VM_ANON_DEFAULT, start >> 12))
    mm.vmas_changed()
    return mm


def test_vmas_changed_sorts_and_resets_cache() -> None:
    mm = _mm_with_vmas((0x30000, 0x40000), (0x10000, 0x20000))
    assert [v.vm_start for v in mm.mmap] == [0x10000, 0x30000]
    assert mm.find_vma(0x10000) is mm.mmap[0]
    assert mm.mmap_cache is mm.mmap[0]
    mm.vmas_changed()
    assert mm.mmap_cache is None


def test_find_vma_semantics() -> None:
    mm = _mm_with_vmas((0x10000, 0x20000), (0x30000, 0x40000))
    low, high = mm.mmap
    assert mm.find_vma(0x0) is low  # first VMA ending above the address
    assert mm.find_vma(0x10000) is low
    assert mm.find_vma(0x1FFFF) is low
    assert mm.find_vma(0x20000) is high  # in the gap: the next VMA up
    assert mm.find_vma(0x3FFFF) is high
    assert mm.find_vma(0x40000) is None
    # The cache answers only for addresses inside the cached VMA.
    mm.mmap_cache = high
    assert mm.find_vma(0x10000) is low
    assert mm.mmap_cache is low


def test_vma_index() -> None:
    mm = _mm_with_vmas((0x10000, 0x20000), (0x20000, 0x30000), (0x50000, 0x60000))
    assert [mm.vma_index(v) for v in mm.mmap] == [0, 1, 2]


def test_pte_get_and_set() -> None:
    mm = _machine().new_process("p")
    addr = 0x7F0000123000
    assert mm.pte_get(addr) == 0
    mm.set_pte_at(addr, 0)  # clearing a pte where there is no table allocates none
    assert mm.pgd == {}
    pte = mk_pte(5, writable=True)
    mm.set_pte_at(addr, pte)
    assert mm.pte_get(addr) == pte
    assert mm.pte_get(addr + 0xABC) == pte  # any address in the page
    assert mm.pte_get(addr + PAGE_SIZE) == 0
    assert list(mm.pgd) == [addr >> 21]
    table = mm.pgd[addr >> 21]
    assert len(table) == 512 and table.typecode == "Q"
    assert table[(addr >> 12) & 511] == pte
    mm.set_pte_at(addr, 0)
    assert mm.pte_get(addr) == 0
    assert list(mm.pgd) == [addr >> 21]  # tables are not freed on clear


def test_pte_tables_are_independent() -> None:
    mm = _machine().new_process("p")
    mm.set_pte_at(0x200000, mk_pte(1, True))
    mm.set_pte_at(0x400000, mk_pte(2, True))
    mm.set_pte_at(0x200000, 0)
    assert mm.pte_get(0x400000) == mk_pte(2, True)
    assert sorted(mm.pgd) == [1, 2]


def test_ptes_iterates_range_across_table_boundary() -> None:
    mm = _machine().new_process("p")
    boundary = 0x400000  # a 2 MiB pte-table boundary
    addrs = [boundary - 2 * PAGE_SIZE, boundary - PAGE_SIZE, boundary, boundary + 5 * PAGE_SIZE]
    for i, a in enumerate(addrs, start=1):
        mm.set_pte_at(a, mk_pte(i, True))
    got = list(mm.ptes(boundary - 4 * PAGE_SIZE, boundary + 6 * PAGE_SIZE))
    assert got == [(a, mk_pte(i, True)) for i, a in enumerate(addrs, start=1)]
    # Half-open range: the end page is excluded, the start page included.
    assert [a for a, _ in mm.ptes(boundary - PAGE_SIZE, boundary + 5 * PAGE_SIZE)] == [
        boundary - PAGE_SIZE,
        boundary,
    ]
    assert list(mm.ptes(0x10000, 0x20000)) == []
    assert list(mm.all_ptes()) == got


def test_all_ptes_is_address_ordered() -> None:
    mm = _machine().new_process("p")
    mm.set_pte_at(0x7F0000000000, mk_pte(1, True))
    mm.set_pte_at(0x10000, mk_pte(2, True))
    mm.set_pte_at(0x10000 + PAGE_SIZE, mk_pte(3, False))
    assert [a for a, _ in mm.all_ptes()] == [0x10000, 0x11000, 0x7F0000000000]


# --- machine and profiles -------------------------------------------------------------------
def test_machine_config_defaults() -> None:
    cfg = MachineConfig()
    assert (cfg.ram_pages, cfg.swap_pages, cfg.hz, cfg.cpus, cfg.reuse_order) == (
        262144,
        0,
        250,
        2,
        "hot",
    )


def test_machine_with_swap_has_a_device() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=4, swap_pages=4))
    assert m.swap is not None and m.swap.nr_slots == 4 and m.swap.nr_free() == 4


def test_new_machine_state() -> None:
    m = _machine(10)
    assert m.profile is KEYHOLE
    assert m.zone.nr_free == 10
    assert m.nr_anon_pages == 0
    assert m.oom_events == []
    assert m.tasks == {}
    assert m.ksm is not None
    assert m.preempt is None
    assert m.memory_stats() == {
        "free_pages": 10,
        "anon_pages": 0,
        "ksm_pages": 0,
        "swap_cache_pages": 0,
        "swap_used_pages": 0,
        "pages_swapped_out": 0,
        "oom_events": 0,
    }


def test_get_profile() -> None:
    assert get_profile("keyhole") is KEYHOLE
    for name, profile in PROFILES.items():
        assert get_profile(name) is profile and profile.name == name
    for name, why in PLANNED_PROFILES.items():
        with pytest.raises(UnknownProfile, match=re.escape(why)):
            get_profile(name)
    with pytest.raises(UnknownProfile, match=r"unknown kernel profile 'nope' .known: "):
        get_profile("nope")
