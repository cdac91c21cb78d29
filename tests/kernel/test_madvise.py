"""Tests for ksmsim.kernel.madvise: splitting, re-merging, DONTNEED, KSM advice, errors."""

from __future__ import annotations

import pytest

from ksmsim.kernel.contents import ZERO_DATA
from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.madvise import (
    ADVICE_NAMES,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_MERGEABLE,
    MADV_NOHUGEPAGE,
    MADV_UNMERGEABLE,
    do_madvise,
)
from ksmsim.kernel.memory import peek_user_page, read_user_byte, write_user_bytes
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_PRESENT,
    _PAGE_SPECIAL,
    MMAP_BASE,
    MMF_VM_MERGEABLE,
    VM_ANON_DEFAULT,
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_MAYSHARE,
    VM_MERGEABLE,
    VM_NOHUGEPAGE,
    VM_SHARED,
    MmStruct,
)
from ksmsim.kernel.mmap import EINVAL, ENOMEM, MmapError, do_mmap_anon, do_munmap
from ksmsim.kernel.page import PAGE_SIZE
from ksmsim.kernel.profile import KEYHOLE

P = PAGE_SIZE
D = VM_ANON_DEFAULT
M = VM_ANON_DEFAULT | VM_MERGEABLE
ZERO_PTE = _PAGE_PRESENT | _PAGE_SPECIAL | _PAGE_ACCESSED


def _setup(npages: int = 6, ram: int = 64) -> tuple[Machine, MmStruct, int]:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=ram))
    mm = m.new_process("p")
    return m, mm, do_mmap_anon(mm, npages * P)


def _layout(mm: MmStruct) -> list[tuple[int, int, int]]:
    return [(v.vm_start, v.vm_end, v.vm_flags) for v in mm.mmap]


def _fill(mm: MmStruct, start: int, npages: int) -> None:
    for i in range(npages):
        write_user_bytes(mm, start + i * P, bytes([i + 1]))


def test_advice_values() -> None:
    assert (MADV_DONTNEED, MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_HUGEPAGE, MADV_NOHUGEPAGE) == (
        4,
        12,
        13,
        14,
        15,
    )
    assert ADVICE_NAMES["mergeable"] == MADV_MERGEABLE
    assert set(ADVICE_NAMES) == {"dontneed", "mergeable", "unmergeable", "hugepage", "nohugepage"}


# --- KSM advice: split and re-merge ---------------------------------------------------------
def test_mergeable_middle_splits_into_three() -> None:
    m, mm, a = _setup()
    _fill(mm, a, 6)
    anon_vma = mm.mmap[0].anon_vma
    do_madvise(mm, a + 2 * P, 2 * P, MADV_MERGEABLE)
    assert _layout(mm) == [
        (a, a + 2 * P, D),
        (a + 2 * P, a + 4 * P, M),
        (a + 4 * P, MMAP_BASE, D),
    ]
    assert [v.vm_pgoff for v in mm.mmap] == [(v.vm_start >> 12) for v in mm.mmap]
    assert all(v.anon_vma is anon_vma for v in mm.mmap)
    assert anon_vma is not None and len(anon_vma.head) == 3
    assert mm.flags & MMF_VM_MERGEABLE
    assert m.ksm is not None and mm in m.ksm.mm_slots
    assert mm.mm_count == 2  # KSM's slot holds the mm
    # Contents and frames are untouched by the advice.
    assert [read_user_byte(mm, a + i * P) for i in range(6)] == [1, 2, 3, 4, 5, 6]
    assert m.zone.nr_free == 58
    check_all(m)


def test_unmergeable_rejoins_the_pieces() -> None:
    m, mm, a = _setup()
    _fill(mm, a, 6)
    anon_vma = mm.mmap[0].anon_vma
    do_madvise(mm, a + 2 * P, 2 * P, MADV_MERGEABLE)
    do_madvise(mm, a + 2 * P, 2 * P, MADV_UNMERGEABLE)
    assert _layout(mm) == [(a, MMAP_BASE, D)]
    assert mm.mmap[0].anon_vma is anon_vma
    assert anon_vma is not None and anon_vma.head == [mm.mmap[0]]
    assert mm.mmap[0].vm_pgoff == a >> 12
    check_all(m)


def test_widening_the_advice_merges_everything() -> None:
    m, mm, a = _setup()
    do_madvise(mm, a + 2 * P, 2 * P, MADV_MERGEABLE)
    assert len(mm.mmap) == 3
    do_madvise(mm, a, 6 * P, MADV_MERGEABLE)
    assert _layout(mm) == [(a, MMAP_BASE, M)]
    check_all(m)


def test_mergeable_on_unwritten_area_splits_without_anon_vma() -> None:
    _, mm, a = _setup()
    do_madvise(mm, a + P, P, MADV_MERGEABLE)
    assert _layout(mm) == [(a, a + P, D), (a + P, a + 2 * P, M), (a + 2 * P, MMAP_BASE, D)]
    assert all(v.anon_vma is None for v in mm.mmap)
    # A write in the middle piece creates an anon_vma; the neighbours take it on their writes.
    write_user_bytes(mm, a + P, b"x")
    mid = mm.mmap[1].anon_vma
    assert mid is not None
    write_user_bytes(mm, a, b"y")
    write_user_bytes(mm, a + 2 * P, b"z")
    assert all(v.anon_vma is mid for v in mm.mmap)
    do_madvise(mm, a + P, P, MADV_UNMERGEABLE)
    assert _layout(mm) == [(a, MMAP_BASE, D)]


def test_mergeable_whole_area_does_not_split() -> None:
    m, mm, a = _setup()
    do_madvise(mm, a, 6 * P, MADV_MERGEABLE)
    assert _layout(mm) == [(a, MMAP_BASE, M)]
    do_madvise(mm, a, 6 * P, MADV_MERGEABLE)  # again: ignored
    assert _layout(mm) == [(a, MMAP_BASE, M)]
    assert m.ksm is not None and list(m.ksm.slots()) == [m.ksm.mm_slots[mm]]
    assert mm.mm_count == 2  # registered once


def test_unmergeable_on_plain_area_is_noop() -> None:
    m, mm, a = _setup()
    do_madvise(mm, a + P, P, MADV_UNMERGEABLE)
    assert _layout(mm) == [(a, MMAP_BASE, D)]
    assert not mm.flags & MMF_VM_MERGEABLE
    assert m.ksm is not None and mm not in m.ksm.mm_slots


def test_mergeable_refused_on_shared_area() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=8))
    mm = m.new_process("p")
    flags = D | VM_SHARED | VM_MAYSHARE
    a = do_mmap_anon(mm, 2 * P, flags)
    do_madvise(mm, a, 2 * P, MADV_MERGEABLE)
    assert _layout(mm) == [(a, MMAP_BASE, flags)]
    assert not mm.flags & MMF_VM_MERGEABLE


def test_hugepage_advice_flags() -> None:
    m, mm, a = _setup()
    do_madvise(mm, a + P, 2 * P, MADV_HUGEPAGE)
    assert _layout(mm) == [
        (a, a + P, D),
        (a + P, a + 3 * P, D | VM_HUGEPAGE),
        (a + 3 * P, MMAP_BASE, D),
    ]
    do_madvise(mm, a + P, 2 * P, MADV_NOHUGEPAGE)
    assert _layout(mm)[1] == (a + P, a + 3 * P, D | VM_NOHUGEPAGE)
    check_all(m)


def test_mergeable_across_hole_applies_then_enomem() -> None:
    m, mm, a = _setup()
    do_munmap(mm, a + 2 * P, P)
    with pytest.raises(MmapError) as ei:
        do_madvise(mm, a + P, 3 * P, MADV_MERGEABLE)
    assert ei.value.errno == ENOMEM
    assert _layout(mm) == [
        (a, a + P, D),
        (a + P, a + 2 * P, M),
        (a + 3 * P, a + 4 * P, M),
        (a + 4 * P, MMAP_BASE, D),
    ]
    check_all(m)


# --- DONTNEED -------------------------------------------------------------------------------
def test_dontneed_zaps_frees_and_reads_zero() -> None:
    m, mm, a = _setup()
    _fill(mm, a, 6)
    anon_vma = mm.mmap[0].anon_vma
    pages = [m.zone.mem_map[mm.pte_get(a + i * P) >> 12] for i in range(6)]
    do_madvise(mm, a + 2 * P, 2 * P, MADV_DONTNEED)
    assert _layout(mm) == [(a, MMAP_BASE, D)]  # DONTNEED never splits
    assert mm.mmap[0].anon_vma is anon_vma
    assert mm.pte_get(a + 2 * P) == 0 and mm.pte_get(a + 3 * P) == 0
    for i in (2, 3):
        page = pages[i]
        assert page is not None and page.count == 0 and page.mapping is None
    assert m.zone.nr_free == 60 and mm.anon_rss == 4 and m.nr_anon_pages == 4
    assert peek_user_page(mm, a + 2 * P) is ZERO_DATA
    assert read_user_byte(mm, a + 2 * P) == 0
    assert read_user_byte(mm, a + 3 * P + 99) == 0
    assert mm.pte_get(a + 2 * P) == ZERO_PTE  # a read after DONTNEED maps the zero page
    assert [read_user_byte(mm, a + i * P) for i in (0, 1, 4, 5)] == [1, 2, 5, 6]
    check_all(m)


def test_dontneed_then_write_allocates_fresh_zeroed_frame() -> None:
    m, mm, a = _setup()
    write_user_bytes(mm, a, bytes([9]) * P)
    do_madvise(mm, a, P, MADV_DONTNEED)
    write_user_bytes(mm, a + 1, b"\x05")
    data = peek_user_page(mm, a)
    assert data == b"\0\x05" + bytes(P - 2)
    check_all(m)


def test_dontneed_clears_zero_page_ptes() -> None:
    m, mm, a = _setup()
    read_user_byte(mm, a)
    assert mm.pte_get(a) == ZERO_PTE
    do_madvise(mm, a, P, MADV_DONTNEED)
    assert mm.pte_get(a) == 0
    assert m.zone.zero_page.count == 1
    check_all(m)


def test_dontneed_of_shared_page_keeps_the_other_mapping() -> None:
    m, mm, a = _setup()
    write_user_bytes(mm, a, b"p")
    child = m.fork(mm, "c")
    page = m.zone.mem_map[mm.pte_get(a) >> 12]
    assert page is not None and page.mapcount == 2
    do_madvise(child, a, P, MADV_DONTNEED)
    assert (page.count, page.mapcount) == (1, 1)
    assert read_user_byte(child, a) == 0
    assert read_user_byte(mm, a) == ord("p")
    check_all(m)


def test_dontneed_across_hole_zaps_then_enomem() -> None:
    m, mm, a = _setup()
    _fill(mm, a, 6)
    do_munmap(mm, a + 2 * P, P)
    with pytest.raises(MmapError) as ei:
        do_madvise(mm, a + P, 3 * P, MADV_DONTNEED)
    assert ei.value.errno == ENOMEM
    assert [read_user_byte(mm, a + i * P) for i in (0, 1, 3, 4, 5)] == [1, 0, 0, 5, 6]
    check_all(m)


def test_dontneed_on_locked_area_is_einval() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=8))
    mm = m.new_process("p")
    a = do_mmap_anon(mm, P, D | VM_LOCKED)
    write_user_bytes(mm, a, b"L")
    with pytest.raises(MmapError) as ei:
        do_madvise(mm, a, P, MADV_DONTNEED)
    assert ei.value.errno == EINVAL
    assert read_user_byte(mm, a) == ord("L")


# --- argument checks ------------------------------------------------------------------------
def test_unaligned_start_is_einval() -> None:
    _, mm, a = _setup()
    with pytest.raises(MmapError) as ei:
        do_madvise(mm, a + 1, P, MADV_MERGEABLE)
    assert ei.value.errno == EINVAL
    assert _layout(mm) == [(a, MMAP_BASE, D)]


def test_zero_length_is_a_noop() -> None:
    _, mm, a = _setup()
    write_user_bytes(mm, a, b"x")
    do_madvise(mm, a, 0, MADV_DONTNEED)
    do_madvise(mm, a - 10 * P, 0, MADV_MERGEABLE)  # even over a hole
    assert read_user_byte(mm, a) == ord("x")
    assert _layout(mm) == [(a, MMAP_BASE, D)]


def test_length_is_rounded_up() -> None:
    _, mm, a = _setup()
    do_madvise(mm, a, P + 1, MADV_MERGEABLE)
    assert _layout(mm) == [(a, a + 2 * P, M), (a + 2 * P, MMAP_BASE, D)]


def test_unmapped_range_is_enomem() -> None:
    _, mm, a = _setup()
    for advice in (MADV_DONTNEED, MADV_MERGEABLE):
        with pytest.raises(MmapError) as ei:
            do_madvise(mm, a - 4 * P, 2 * P, advice)
        assert ei.value.errno == ENOMEM
    assert _layout(mm) == [(a, MMAP_BASE, D)]


# --- regressions: bugs these tests found (fixed in src) -------------------------------
def test_unknown_advice_changes_nothing() -> None:
    _, mm, a = _setup(npages=3)
    with pytest.raises(MmapError) as ei:
        do_madvise(mm, a + P, P, 99)
    assert ei.value.errno == EINVAL
    assert _layout(mm) == [(a, MMAP_BASE, D)]


def test_unmergeable_over_two_pieces_merges_the_third() -> None:
    _, mm, a = _setup(npages=4)
    do_madvise(mm, a + P, 2 * P, MADV_MERGEABLE)
    assert _layout(mm) == [(a, a + P, D), (a + P, a + 3 * P, M), (a + 3 * P, MMAP_BASE, D)]
    do_madvise(mm, a, 3 * P, MADV_UNMERGEABLE)
    assert _layout(mm) == [(a, MMAP_BASE, D)]
