"""Tests for ksmsim.kernel.rmap: anon_vma life cycle, page (un)map hooks, reverse-map walks."""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.memory import read_user_byte, write_user_bytes, zap_page_range
from ksmsim.kernel.mm import (
    VM_ANON_DEFAULT,
    VM_DONTCOPY,
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_MAYREAD,
    VM_MERGEABLE,
    VM_READ,
    MmStruct,
    VmArea,
)
from ksmsim.kernel.mmap import do_mmap_anon, do_munmap
from ksmsim.kernel.page import PAGE_MAPPING_ANON, PAGE_SIZE, Page, get_page, set_page_stable_node
from ksmsim.kernel.profile import KEYHOLE
from ksmsim.kernel.rmap import (
    AnonVma,
    anon_vma_link,
    anon_vma_prepare,
    anon_vma_unlink,
    find_mergeable_anon_vma,
    page_add_anon_rmap,
    page_add_new_anon_rmap,
    page_address_in_vma,
    page_check_address,
    page_dup_rmap,
    page_remove_rmap,
    rmap_walk,
    rmap_walk_anon,
    vma_address,
    vma_dontcopy,
    vma_is_locked,
)

P = PAGE_SIZE
BASE = 0x7F0000000000


def _machine(ram: int = 16) -> Machine:
    return Machine(KEYHOLE, MachineConfig(ram_pages=ram))


def _vmas(mm: MmStruct, *specs: tuple[int, int, int]) -> list[VmArea]:
    """Insert VMAs (start page, end page, flags) relative to BASE, bypassing merge."""
    out = []
    for s, e, flags in specs:
        start = BASE + s * P
        vma = VmArea(mm, start, BASE + e * P, flags, start >> 12)
        mm.mmap.append(vma)
        out.append(vma)
    mm.vmas_changed()
    return out


def _page_at(mm: MmStruct, addr: int) -> Page:
    page = mm.machine.zone.mem_map[mm.pte_get(addr) >> 12]
    assert page is not None
    return page


# --- AnonVma --------------------------------------------------------------------------------
def test_anon_vma_fields_and_serials() -> None:
    a, b = AnonVma(), AnonVma()
    assert a.head == [] and a.ksm_refcount == 0 and not a.freed
    assert b.serial == a.serial + 1
    assert repr(a) == f"<AnonVma #{a.serial} vmas=0 ksm_refcount=0>"


def test_anon_vma_prepare_creates_once() -> None:
    mm = _machine().new_process("p")
    [v] = _vmas(mm, (0, 4, VM_ANON_DEFAULT))
    av = anon_vma_prepare(v)
    assert v.anon_vma is av and av.head == [v]
    assert anon_vma_prepare(v) is av and av.head == [v]


def test_anon_vma_prepare_shares_adjacent_neighbours() -> None:
    mm = _machine().new_process("p")
    low, mid, high = _vmas(
        mm,
        (0, 2, VM_ANON_DEFAULT),
        (2, 4, VM_ANON_DEFAULT | VM_MERGEABLE),  # KSM/THP flags do not obstruct sharing
        (4, 6, VM_ANON_DEFAULT | VM_HUGEPAGE),
    )
    av_low = anon_vma_prepare(low)
    assert find_mergeable_anon_vma(mid) is av_low  # only prev has one
    av_high = AnonVma()
    high.anon_vma = av_high
    anon_vma_link(high)
    assert find_mergeable_anon_vma(mid) is av_high  # next is preferred
    assert anon_vma_prepare(mid) is av_high
    assert av_high.head == [high, mid]


def test_anon_vma_not_shared_across_gap_or_flags() -> None:
    mm = _machine().new_process("p")
    low, mid, ro = _vmas(
        mm, (0, 2, VM_ANON_DEFAULT), (3, 5, VM_ANON_DEFAULT), (5, 7, VM_READ | VM_MAYREAD)
    )
    anon_vma_prepare(low)
    anon_vma_prepare(ro)
    assert find_mergeable_anon_vma(mid) is None  # a gap below, other flags above
    assert anon_vma_prepare(mid) not in (low.anon_vma, ro.anon_vma)


def test_anon_vma_not_shared_with_discontiguous_pgoff() -> None:
    mm = _machine().new_process("p")
    low, high = _vmas(mm, (0, 2, VM_ANON_DEFAULT), (2, 4, VM_ANON_DEFAULT))
    high.vm_pgoff += 7
    anon_vma_prepare(high)
    assert find_mergeable_anon_vma(low) is None


def test_anon_vma_unlink_frees_only_when_unused() -> None:
    mm = _machine().new_process("p")
    a, b = _vmas(mm, (0, 1, VM_ANON_DEFAULT), (5, 6, VM_ANON_DEFAULT))
    av = anon_vma_prepare(a)
    b.anon_vma = av
    anon_vma_link(b)
    assert av.head == [a, b]
    anon_vma_unlink(a)
    assert av.head == [b] and not av.freed
    av.ksm_refcount = 1
    anon_vma_unlink(b)
    assert av.head == [] and not av.freed  # KSM still holds it
    c = VmArea(mm, 0, P, VM_ANON_DEFAULT, 0)
    anon_vma_unlink(c)  # no anon_vma: nothing to do
    anon_vma_link(c)
    assert av.head == []


def test_anon_vma_freed_by_munmap_of_last_area() -> None:
    m = _machine()
    mm = m.new_process("p")
    a = do_mmap_anon(mm, 2 * P)
    write_user_bytes(mm, a, b"x")
    av = mm.mmap[0].anon_vma
    assert av is not None
    do_munmap(mm, a, P)
    assert not av.freed and av.head == [mm.mmap[0]]
    do_munmap(mm, a + P, P)
    assert av.freed and av.head == []


# --- page (un)map hooks ---------------------------------------------------------------------
def test_page_add_new_anon_rmap() -> None:
    m = _machine()
    mm = m.new_process("p")
    [v] = _vmas(mm, (0, 4, VM_ANON_DEFAULT))
    av = anon_vma_prepare(v)
    page = Page(3)
    page_add_new_anon_rmap(page, v, BASE + 2 * P + 17)
    assert page.mapcount == 1
    assert page.mapping is av and page.mapping_flags == PAGE_MAPPING_ANON
    assert page.index == (BASE >> 12) + 2
    assert m.nr_anon_pages == 1


def test_page_add_anon_rmap_first_and_later_mappings() -> None:
    m = _machine()
    mm = m.new_process("p")
    [v] = _vmas(mm, (0, 4, VM_ANON_DEFAULT))
    av = anon_vma_prepare(v)
    page = Page(3)
    page_add_anon_rmap(page, v, BASE + P)
    assert (page.mapcount, page.mapping, page.index) == (1, av, (BASE >> 12) + 1)
    assert m.nr_anon_pages == 1
    page_add_anon_rmap(page, v, BASE + 3 * P)
    assert (page.mapcount, page.index) == (2, (BASE >> 12) + 1)  # index set by the first
    assert m.nr_anon_pages == 1
    page_dup_rmap(page)
    assert page.mapcount == 3 and m.nr_anon_pages == 1


def test_page_add_anon_rmap_keeps_ksm_stable_node() -> None:
    m = _machine()
    mm = m.new_process("p")
    [v] = _vmas(mm, (0, 4, VM_ANON_DEFAULT))
    anon_vma_prepare(v)
    node = object()
    page = Page(3)
    set_page_stable_node(page, node)
    page_add_anon_rmap(page, v, BASE)
    assert page.mapping is node and page.mapping_flags == 3
    assert page.mapcount == 1 and m.nr_anon_pages == 1


def test_page_remove_rmap_keeps_mapping_until_free() -> None:
    m = _machine()
    mm = m.new_process("p")
    a = do_mmap_anon(mm, P)
    write_user_bytes(mm, a, b"x")
    page = _page_at(mm, a)
    av = mm.mmap[0].anon_vma
    get_page(page)  # an extra reference keeps the frame alive past its last pte
    zap_page_range(mm.mmap[0], a, a + P)
    assert page.mapcount == 0 and page.count == 1
    assert page.mapping is av and page.mapping_flags == PAGE_MAPPING_ANON
    assert m.nr_anon_pages == 0
    m.zone.put_page(page)
    assert page.mapping is None and page.mapping_flags == 0


def test_page_remove_rmap_negative_raises() -> None:
    m = _machine()
    page = Page(1)
    with pytest.raises(AssertionError, match="negative"):
        page_remove_rmap(page, m)


# --- addresses and walks --------------------------------------------------------------------
def test_vma_address_and_page_address_in_vma() -> None:
    m = _machine()
    mm = m.new_process("p")
    a = do_mmap_anon(mm, 4 * P)
    write_user_bytes(mm, a + 2 * P, b"x")
    vma = mm.mmap[0]
    page = _page_at(mm, a + 2 * P)
    assert vma_address(page, vma) == a + 2 * P
    assert page_address_in_vma(page, vma) == a + 2 * P
    assert page_check_address(page, mm, a + 2 * P) == mm.pte_get(a + 2 * P)
    assert page_check_address(page, mm, a + P) == 0
    # An area that does not cover the index, or has another anon_vma, gives -1.
    other = VmArea(mm, a + 4 * P, a + 8 * P, VM_ANON_DEFAULT, (a + 4 * P) >> 12)
    other.anon_vma = vma.anon_vma
    assert vma_address(page, other) == -1
    other2 = VmArea(mm, a, a + 4 * P, VM_ANON_DEFAULT, a >> 12)
    assert page_address_in_vma(page, other2) == -1  # no anon_vma
    other2.anon_vma = AnonVma()
    assert page_address_in_vma(page, other2) == -1
    plain = Page(9)
    assert page_address_in_vma(plain, vma) == -1  # not anonymous
    read_user_byte(mm, a)
    assert page_check_address(m.zone.zero_page, mm, a) == 0  # special ptes never match


def test_rmap_walk_finds_fork_mappings() -> None:
    m = _machine()
    mm = m.new_process("p")
    a = do_mmap_anon(mm, 2 * P)
    write_user_bytes(mm, a, b"x")
    child = m.fork(mm, "c")
    grandchild = m.fork(child, "g")
    page = _page_at(mm, a)
    walked = [(v.vm_mm, addr) for v, addr in rmap_walk_anon(page)]
    assert walked == [(mm, a), (child, a), (grandchild, a)]
    # After the child's COW, the original page is no longer mapped there.
    write_user_bytes(child, a, b"y")
    assert [v.vm_mm for v, _ in rmap_walk_anon(page)] == [mm, grandchild]
    assert [v.vm_mm for v, _ in rmap_walk_anon(_page_at(child, a))] == [child]
    seen: list[MmStruct] = []

    def visit(p: Page, v: VmArea, addr: int) -> bool:
        seen.append(v.vm_mm)
        return False

    assert rmap_walk(page, visit) is False
    assert seen == [mm]  # the walk stops at the first False
    assert rmap_walk(page, lambda p, v, addr: True) is True
    check_all(m)


def test_rmap_walk_anon_of_ksm_page_is_empty() -> None:
    page = Page(1)
    set_page_stable_node(page, object())
    assert list(rmap_walk_anon(page)) == []


def test_vma_flag_helpers() -> None:
    mm = _machine().new_process("p")
    v = VmArea(mm, 0, P, VM_ANON_DEFAULT, 0)
    assert not vma_is_locked(v) and not vma_dontcopy(v)
    v.vm_flags |= VM_LOCKED | VM_DONTCOPY
    assert vma_is_locked(v) and vma_dontcopy(v)
