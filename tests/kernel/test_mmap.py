"""Tests for ksmsim.kernel.mmap: top-down placement, hole reuse, split and merge, munmap."""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.memory import FaultError, read_user_byte, write_user_bytes
from ksmsim.kernel.mm import (
    MMAP_BASE,
    MMAP_MIN_ADDR,
    VM_ANON_DEFAULT,
    VM_MAYREAD,
    VM_READ,
    MmStruct,
    pte_pfn,
)
from ksmsim.kernel.mmap import (
    EINVAL,
    ENOMEM,
    MmapError,
    do_mmap_anon,
    do_munmap,
    exit_mmap,
    get_unmapped_area,
    split_vma,
    vma_merge,
    vmas_in_range,
)
from ksmsim.kernel.page import PAGE_SIZE
from ksmsim.kernel.profile import KEYHOLE

P = PAGE_SIZE
RO = VM_READ | VM_MAYREAD  # a flag set that never merges with the anonymous default


def _setup(pages: int = 64) -> tuple[Machine, MmStruct]:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=pages))
    return m, m.new_process("p")


def _layout(mm: MmStruct) -> list[tuple[int, int, int]]:
    return [(v.vm_start, v.vm_end, v.vm_flags) for v in mm.mmap]


def _fill(mm: MmStruct, start: int, npages: int) -> None:
    for i in range(npages):
        write_user_bytes(mm, start + i * P, bytes([i + 1]))


# --- placement ------------------------------------------------------------------------------
def test_first_mapping_sits_just_below_mmap_base() -> None:
    m, mm = _setup()
    addr = do_mmap_anon(mm, 4 * P)
    assert addr == MMAP_BASE - 4 * P
    [vma] = mm.mmap
    assert (vma.vm_start, vma.vm_end, vma.vm_flags) == (addr, MMAP_BASE, VM_ANON_DEFAULT)
    assert vma.vm_pgoff == addr >> 12
    assert vma.anon_vma is None  # no anon_vma until the first write fault
    assert mm.pgd == {}  # mmap populates nothing
    assert m.zone.nr_free == 64
    check_all(m)


def test_successive_compatible_mappings_grow_down_and_merge() -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 2 * P)
    b = do_mmap_anon(mm, 3 * P)
    assert a == MMAP_BASE - 2 * P
    assert b == a - 3 * P
    assert _layout(mm) == [(b, MMAP_BASE, VM_ANON_DEFAULT)]
    assert mm.mmap[0].vm_pgoff == b >> 12


def test_incompatible_mappings_stack_top_down() -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 2 * P)
    b = do_mmap_anon(mm, P, RO)
    c = do_mmap_anon(mm, 3 * P)
    assert (a, b, c) == (MMAP_BASE - 2 * P, MMAP_BASE - 3 * P, MMAP_BASE - 6 * P)
    assert _layout(mm) == [
        (c, b, VM_ANON_DEFAULT),
        (b, a, RO),
        (a, MMAP_BASE, VM_ANON_DEFAULT),
    ]


def test_hole_left_by_munmap_is_reused_top_first() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 4 * P)
    b = do_mmap_anon(mm, 4 * P, RO)
    c = do_mmap_anon(mm, 4 * P)
    assert (b, c) == (a - 4 * P, a - 8 * P)
    do_munmap(mm, b, 4 * P)
    assert _layout(mm) == [(c, c + 4 * P, VM_ANON_DEFAULT), (a, MMAP_BASE, VM_ANON_DEFAULT)]
    # The hole [b, a) is the highest gap that fits: a new area goes at its top and joins a.
    d = do_mmap_anon(mm, 2 * P)
    assert d == a - 2 * P
    assert _layout(mm) == [(c, c + 4 * P, VM_ANON_DEFAULT), (d, MMAP_BASE, VM_ANON_DEFAULT)]
    # What is left of the hole exactly fits a 2-page read-only area.
    e = do_mmap_anon(mm, 2 * P, RO)
    assert e == b
    # Nothing fits in the holes any more: the next area goes below everything.
    f = do_mmap_anon(mm, P, RO)
    assert f == c - P
    assert _layout(mm) == [
        (f, c, RO),
        (c, b, VM_ANON_DEFAULT),
        (b, d, RO),
        (d, MMAP_BASE, VM_ANON_DEFAULT),
    ]
    check_all(m)


def test_hole_too_small_is_skipped() -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 4 * P)
    do_munmap(mm, a + P, P)  # a one-page hole
    assert _layout(mm) == [(a, a + P, VM_ANON_DEFAULT), (a + 2 * P, MMAP_BASE, VM_ANON_DEFAULT)]
    b = do_mmap_anon(mm, 2 * P, RO)
    assert b == a - 2 * P
    c = do_mmap_anon(mm, P, RO)
    assert c == a + P  # the one-page hole is the highest gap that fits a page
    assert _layout(mm) == [
        (b, a, RO),
        (a, a + P, VM_ANON_DEFAULT),
        (c, c + P, RO),
        (a + 2 * P, MMAP_BASE, VM_ANON_DEFAULT),
    ]


def test_filling_a_hole_exactly_merges_three_areas() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 6 * P)
    do_munmap(mm, a + 2 * P, 2 * P)
    assert len(mm.mmap) == 2
    b = do_mmap_anon(mm, 2 * P)
    assert b == a + 2 * P
    assert _layout(mm) == [(a, MMAP_BASE, VM_ANON_DEFAULT)]
    assert mm.mmap[0].vm_pgoff == a >> 12
    check_all(m)


def test_filling_a_hole_between_written_halves_joins_their_anon_vma() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 6 * P)
    _fill(mm, a, 6)
    anon_vma = mm.mmap[0].anon_vma
    assert anon_vma is not None
    do_munmap(mm, a + 2 * P, 2 * P)
    low, high = mm.mmap
    assert low.anon_vma is anon_vma and high.anon_vma is anon_vma
    b = do_mmap_anon(mm, 2 * P)
    assert b == a + 2 * P
    [vma] = mm.mmap
    assert (vma.vm_start, vma.vm_end) == (a, MMAP_BASE)
    assert vma.anon_vma is anon_vma
    assert anon_vma.head == [vma]
    check_all(m)


def test_areas_with_different_anon_vmas_do_not_merge() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 2 * P)
    write_user_bytes(mm, a, b"a")
    b = do_mmap_anon(mm, 2 * P, RO)
    c = do_mmap_anon(mm, 2 * P)
    write_user_bytes(mm, c, b"c")
    va, vc = mm.mmap[2], mm.mmap[0]
    assert va.anon_vma is not None and vc.anon_vma is not None
    assert va.anon_vma is not vc.anon_vma
    do_munmap(mm, b, 2 * P)
    d = do_mmap_anon(mm, 2 * P)
    assert d == b
    # The new area may join one neighbour but never both: their anon_vmas differ.
    assert len(mm.mmap) == 2
    assert mm.mmap[0].vm_start == c and mm.mmap[1].vm_end == MMAP_BASE
    assert mm.mmap[0].vm_end == mm.mmap[1].vm_start
    assert mm.mmap[0].anon_vma is vc.anon_vma and mm.mmap[1].anon_vma is va.anon_vma
    check_all(m)


def test_hole_filler_between_incompatible_neighbours_joins_prev_like_linux() -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 2 * P)
    write_user_bytes(mm, a, b"a")
    b = do_mmap_anon(mm, 2 * P, RO)
    c = do_mmap_anon(mm, 2 * P)
    write_user_bytes(mm, c, b"c")
    do_munmap(mm, b, 2 * P)
    do_mmap_anon(mm, 2 * P)
    assert [(v.vm_start, v.vm_end) for v in mm.mmap] == [(c, a), (a, MMAP_BASE)]


def test_get_unmapped_area_does_not_change_state() -> None:
    _, mm = _setup()
    assert get_unmapped_area(mm, 3 * P) == MMAP_BASE - 3 * P
    assert mm.mmap == []


def test_mmap_enomem_when_no_room_below_base() -> None:
    _, mm = _setup()
    mm.mmap_base = MMAP_MIN_ADDR + 4 * P
    with pytest.raises(MmapError) as ei:
        do_mmap_anon(mm, 5 * P)
    assert ei.value.errno == ENOMEM
    assert mm.mmap == []
    assert do_mmap_anon(mm, 4 * P) == MMAP_MIN_ADDR
    with pytest.raises(MmapError) as ei:
        do_mmap_anon(mm, P)
    assert ei.value.errno == ENOMEM
    assert _layout(mm) == [(MMAP_MIN_ADDR, MMAP_MIN_ADDR + 4 * P, VM_ANON_DEFAULT)]


@pytest.mark.parametrize("length", [0, -P, 1, P + 1, P - 1])
def test_mmap_bad_length_is_einval(length: int) -> None:
    _, mm = _setup()
    with pytest.raises(MmapError) as ei:
        do_mmap_anon(mm, length)
    assert ei.value.errno == EINVAL
    assert mm.mmap == []


# --- munmap and splitting -------------------------------------------------------------------
def test_munmap_middle_splits_and_frees() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 4 * P)
    _fill(mm, a, 4)
    anon_vma = mm.mmap[0].anon_vma
    assert m.zone.nr_free == 60 and mm.anon_rss == 4 and m.nr_anon_pages == 4
    middle = [m.zone.mem_map[pte_pfn(mm.pte_get(a + i * P))] for i in (1, 2)]
    do_munmap(mm, a + P, 2 * P)
    lo, hi = mm.mmap
    assert (lo.vm_start, lo.vm_end, lo.vm_pgoff) == (a, a + P, a >> 12)
    assert (hi.vm_start, hi.vm_end, hi.vm_pgoff) == (a + 3 * P, a + 4 * P, (a + 3 * P) >> 12)
    assert lo.anon_vma is anon_vma and hi.anon_vma is anon_vma
    assert anon_vma is not None and sorted(anon_vma.head, key=lambda v: v.vm_start) == [lo, hi]
    assert m.zone.nr_free == 62 and mm.anon_rss == 2 and m.nr_anon_pages == 2
    for page in middle:
        assert page is not None and page.count == 0 and page.mapping is None
    assert mm.pte_get(a + P) == 0 and mm.pte_get(a + 2 * P) == 0
    assert read_user_byte(mm, a) == 1 and read_user_byte(mm, a + 3 * P) == 4
    for addr in (a + P, a + 2 * P + 100):
        with pytest.raises(FaultError, match="SIGSEGV"):
            read_user_byte(mm, addr)
    check_all(m)


def test_munmap_head_and_tail() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 6 * P)
    _fill(mm, a, 6)
    do_munmap(mm, a, P)
    assert _layout(mm) == [(a + P, MMAP_BASE, VM_ANON_DEFAULT)]
    assert mm.mmap[0].vm_pgoff == (a + P) >> 12
    do_munmap(mm, MMAP_BASE - P, P)
    assert _layout(mm) == [(a + P, MMAP_BASE - P, VM_ANON_DEFAULT)]
    assert m.zone.nr_free == 60
    assert [read_user_byte(mm, a + i * P) for i in range(1, 5)] == [2, 3, 4, 5]
    check_all(m)


def test_munmap_across_areas_and_holes() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 3 * P)
    b = do_mmap_anon(mm, 3 * P, RO)
    c = do_mmap_anon(mm, 3 * P)
    _fill(mm, a, 3)
    _fill(mm, c, 3)
    do_munmap(mm, b + P, P)  # punch a hole in the middle area
    assert len(mm.mmap) == 4
    # One call from inside c to inside a, over b's pieces and the hole.
    do_munmap(mm, c + 2 * P, 5 * P)
    assert _layout(mm) == [(c, c + 2 * P, VM_ANON_DEFAULT), (a + P, MMAP_BASE, VM_ANON_DEFAULT)]
    assert m.zone.nr_free == 64 - 4
    assert mm.anon_rss == 4
    check_all(m)


def test_munmap_of_unmapped_range_is_a_noop() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 2 * P)
    do_munmap(mm, a - 16 * P, 8 * P)
    assert _layout(mm) == [(a, MMAP_BASE, VM_ANON_DEFAULT)]
    check_all(m)


def test_munmap_rounds_length_up() -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 4 * P)
    do_munmap(mm, a, P + 1)
    assert _layout(mm) == [(a + 2 * P, MMAP_BASE, VM_ANON_DEFAULT)]


@pytest.mark.parametrize(("offset", "length"), [(1, P), (0, 0), (0, -P), (P // 2, P)])
def test_munmap_einval(offset: int, length: int) -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 4 * P)
    with pytest.raises(MmapError) as ei:
        do_munmap(mm, a + offset, length)
    assert ei.value.errno == EINVAL
    assert _layout(mm) == [(a, MMAP_BASE, VM_ANON_DEFAULT)]


def test_munmap_whole_area_frees_anon_vma() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 2 * P)
    _fill(mm, a, 2)
    anon_vma = mm.mmap[0].anon_vma
    assert anon_vma is not None and not anon_vma.freed
    do_munmap(mm, a, 2 * P)
    assert mm.mmap == []
    assert anon_vma.head == [] and anon_vma.freed
    assert m.zone.nr_free == 64 and m.nr_anon_pages == 0 and mm.anon_rss == 0
    check_all(m)


def test_split_vma() -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 4 * P)
    write_user_bytes(mm, a, b"x")
    vma = mm.mmap[0]
    upper = split_vma(vma, a + P)
    assert (vma.vm_start, vma.vm_end, vma.vm_pgoff) == (a, a + P, a >> 12)
    assert (upper.vm_start, upper.vm_end, upper.vm_pgoff) == (a + P, MMAP_BASE, (a + P) >> 12)
    assert upper.vm_flags == vma.vm_flags and upper.anon_vma is vma.anon_vma
    assert vma.anon_vma is not None and upper in vma.anon_vma.head
    assert mm.mmap == [vma, upper]
    for bad in (a, MMAP_BASE, a - P, MMAP_BASE + P):
        with pytest.raises(ValueError):
            split_vma(vma if bad < a + P else upper, bad)
    # vma_merge joins the pieces back.
    assert vma_merge(upper) is vma
    assert mm.mmap == [vma] and (vma.vm_start, vma.vm_end) == (a, MMAP_BASE)
    assert vma.anon_vma.head == [vma]


def test_vmas_in_range_splits_at_both_edges() -> None:
    _, mm = _setup()
    a = do_mmap_anon(mm, 8 * P)
    got = vmas_in_range(mm, a + 2 * P, a + 5 * P)
    assert [(v.vm_start, v.vm_end) for v in got] == [(a + 2 * P, a + 5 * P)]
    assert [(v.vm_start, v.vm_end) for v in mm.mmap] == [
        (a, a + 2 * P),
        (a + 2 * P, a + 5 * P),
        (a + 5 * P, MMAP_BASE),
    ]
    # Aligned to existing boundaries: no further split, several areas returned.
    got = vmas_in_range(mm, a, MMAP_BASE)
    assert len(got) == 3 and len(mm.mmap) == 3


def test_exit_mmap_tears_down_everything() -> None:
    m, mm = _setup()
    a = do_mmap_anon(mm, 4 * P)
    do_mmap_anon(mm, 2 * P, RO)
    _fill(mm, a, 4)
    assert read_user_byte(mm, a - P) == 0
    exit_mmap(mm)
    assert mm.mmap == [] and mm.pgd == {} and mm.anon_rss == 0
    assert m.zone.nr_free == 64 and m.nr_anon_pages == 0
