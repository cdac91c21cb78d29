"""Tests for ksmsim.kernel.fork and Machine.fork/exit: COW page-table copies and teardown."""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.madvise import MADV_MERGEABLE, do_madvise
from ksmsim.kernel.memory import copy_page_range, read_user_byte, write_user_bytes
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    MMF_VM_MERGEABLE,
    VM_ANON_DEFAULT,
    VM_DONTCOPY,
    VM_LOCKED,
    VM_MAYSHARE,
    VM_MERGEABLE,
    VM_SHARED,
    MmStruct,
    VmArea,
    mk_pte,
    pte_mkold,
    pte_wrprotect,
)
from ksmsim.kernel.mmap import do_mmap_anon, do_munmap
from ksmsim.kernel.page import PAGE_SIZE, Page
from ksmsim.kernel.profile import KEYHOLE

P = PAGE_SIZE
ZERO_PTE = _PAGE_PRESENT | _PAGE_SPECIAL | _PAGE_ACCESSED


def _setup(ram: int = 32) -> tuple[Machine, MmStruct, int]:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=ram))
    mm = m.new_process("parent")
    a = do_mmap_anon(mm, 4 * P)
    write_user_bytes(mm, a, b"A")  # pfn 1
    write_user_bytes(mm, a + P, b"B")  # pfn 2
    read_user_byte(mm, a + 2 * P)  # zero page; a + 3P untouched
    return m, mm, a


def _page_at(mm: MmStruct, addr: int) -> Page:
    page = mm.machine.zone.mem_map[mm.pte_get(addr) >> 12]
    assert page is not None
    return page


def test_fork_copies_areas_and_joins_anon_vma() -> None:
    m, mm, _a = _setup()
    child = m.fork(mm, "child")
    assert child.pid == mm.pid + 1 and child.name == "child"
    assert m.tasks == {mm.pid: mm, child.pid: child}
    assert child.mmap_base == mm.mmap_base
    assert (child.mm_users, child.mm_count) == (1, 1)
    [pv] = mm.mmap
    [cv] = child.mmap
    assert cv is not pv and cv.vm_mm is child
    assert (cv.vm_start, cv.vm_end, cv.vm_flags, cv.vm_pgoff) == (
        pv.vm_start,
        pv.vm_end,
        pv.vm_flags,
        pv.vm_pgoff,
    )
    assert pv.anon_vma is not None and cv.anon_vma is pv.anon_vma
    assert pv.anon_vma.head == [pv, cv]
    check_all(m)


def test_fork_write_protects_both_sides() -> None:
    m, mm, a = _setup()
    before = {addr: mm.pte_get(addr) for addr in (a, a + P, a + 2 * P, a + 3 * P)}
    assert before[a] == mk_pte(1, writable=True)
    child = m.fork(mm, "child")
    for addr in (a, a + P):
        ro = pte_wrprotect(before[addr])
        assert mm.pte_get(addr) == ro  # parent: read-only, still young and dirty
        assert child.pte_get(addr) == pte_mkold(ro)  # child: read-only and old
        page = _page_at(mm, addr)
        assert _page_at(child, addr) is page
        assert (page.count, page.mapcount) == (2, 2)
    # The zero page is shared through its special pte, with no refcounting.
    assert mm.pte_get(a + 2 * P) == ZERO_PTE
    assert child.pte_get(a + 2 * P) == ZERO_PTE & ~_PAGE_ACCESSED
    assert m.zone.zero_page.count == 1
    assert mm.pte_get(a + 3 * P) == 0 and child.pte_get(a + 3 * P) == 0
    assert child.anon_rss == mm.anon_rss == 2
    assert m.nr_anon_pages == 2
    assert m.zone.nr_free == 30  # fork allocates no frames
    check_all(m)


def test_child_sees_parent_contents() -> None:
    m, mm, a = _setup()
    child = m.fork(mm, "child")
    assert [read_user_byte(child, a + i * P) for i in range(4)] == [ord("A"), ord("B"), 0, 0]
    assert m.zone.nr_free == 30
    check_all(m)


def test_child_write_copies_and_parent_keeps_its_page() -> None:
    m, mm, a = _setup()
    child = m.fork(mm, "child")
    orig = _page_at(mm, a)
    write_user_bytes(child, a, b"c")
    new = _page_at(child, a)
    assert new is not orig and new.pfn == 3
    assert child.pte_get(a) == mk_pte(3, writable=True)
    assert (new.count, new.mapcount) == (1, 1)
    assert new.mapping is orig.mapping is mm.mmap[0].anon_vma
    assert _page_at(mm, a) is orig
    assert (orig.count, orig.mapcount) == (1, 1)
    assert mm.pte_get(a) & _PAGE_RW == 0  # the parent's pte stays read-only until it writes
    assert read_user_byte(mm, a) == ord("A") and read_user_byte(child, a) == ord("c")
    assert m.zone.nr_free == 29 and m.nr_anon_pages == 3
    check_all(m)
    # The parent's page is now exclusive: its own write reuses it in place.
    write_user_bytes(mm, a, b"p")
    assert _page_at(mm, a) is orig and mm.pte_get(a) == mk_pte(orig.pfn, writable=True)
    assert m.zone.nr_free == 29
    assert read_user_byte(child, a) == ord("c")
    check_all(m)


def test_parent_write_after_fork_copies() -> None:
    m, mm, a = _setup()
    child = m.fork(mm, "child")
    orig = _page_at(mm, a + P)
    write_user_bytes(mm, a + P, b"x")
    assert _page_at(mm, a + P) is not orig
    assert _page_at(child, a + P) is orig and orig.mapcount == 1
    assert read_user_byte(child, a + P) == ord("B")
    check_all(m)


def test_child_write_to_shared_zero_page_allocates() -> None:
    m, mm, a = _setup()
    child = m.fork(mm, "child")
    write_user_bytes(child, a + 2 * P, b"z")
    assert child.pte_get(a + 2 * P) == mk_pte(3, writable=True)
    assert mm.pte_get(a + 2 * P) == ZERO_PTE
    assert child.anon_rss == 3 and mm.anon_rss == 2
    check_all(m)


def test_exit_of_parent_lets_child_reuse_in_place() -> None:
    m, mm, a = _setup()
    child = m.fork(mm, "child")
    page = _page_at(child, a)
    m.exit(mm)
    assert (page.count, page.mapcount) == (1, 1)
    assert child.pte_get(a) & _PAGE_RW == 0
    write_user_bytes(child, a, b"r")
    assert _page_at(child, a) is page
    assert child.pte_get(a) == mk_pte(page.pfn, writable=True)
    assert m.zone.nr_free == 30
    assert read_user_byte(child, a) == ord("r")
    check_all(m)


def test_exit_tears_down_and_frees() -> None:
    m, mm, a = _setup()
    anon_vma = mm.mmap[0].anon_vma
    assert anon_vma is not None
    pages = [_page_at(mm, a), _page_at(mm, a + P)]
    m.exit(mm)
    assert mm.pid not in m.tasks
    assert mm.mmap == [] and mm.pgd == {} and mm.anon_rss == 0
    assert (mm.mm_users, mm.mm_count) == (0, 0)
    assert m.zone.nr_free == 32 and m.nr_anon_pages == 0
    for p in pages:
        assert p.count == 0 and p.mapcount == 0 and p.mapping is None and p.data is None
    assert anon_vma.head == [] and anon_vma.freed
    check_all(m)


def test_anon_vma_lives_until_last_sharer_exits() -> None:
    m, mm, a = _setup()
    child = m.fork(mm, "child")
    grandchild = m.fork(child, "grandchild")
    anon_vma = mm.mmap[0].anon_vma
    assert anon_vma is not None
    assert anon_vma.head == [mm.mmap[0], child.mmap[0], grandchild.mmap[0]]
    page = _page_at(mm, a)
    assert (page.count, page.mapcount) == (3, 3)
    m.exit(child)
    assert not anon_vma.freed and len(anon_vma.head) == 2
    assert (page.count, page.mapcount) == (2, 2)
    m.exit(mm)
    assert not anon_vma.freed and anon_vma.head == [grandchild.mmap[0]]
    check_all(m)
    m.exit(grandchild)
    assert anon_vma.freed
    assert m.zone.nr_free == 32 and m.tasks == {}
    check_all(m)


def test_fork_of_unwritten_area_has_no_anon_vma() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=8))
    mm = m.new_process("p")
    a = do_mmap_anon(mm, 2 * P)
    read_user_byte(mm, a)
    child = m.fork(mm, "c")
    assert child.mmap[0].anon_vma is None
    write_user_bytes(child, a, b"x")
    write_user_bytes(mm, a, b"y")
    assert child.mmap[0].anon_vma is not None and mm.mmap[0].anon_vma is not None
    assert child.mmap[0].anon_vma is not mm.mmap[0].anon_vma
    check_all(m)


def test_fork_skips_dontcopy_and_clears_locked() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=8))
    mm = m.new_process("p")
    locked = do_mmap_anon(mm, P, VM_ANON_DEFAULT | VM_LOCKED)
    private = do_mmap_anon(mm, P, VM_ANON_DEFAULT | VM_DONTCOPY)
    write_user_bytes(mm, locked, b"L")
    write_user_bytes(mm, private, b"D")
    child = m.fork(mm, "c")
    assert [(v.vm_start, v.vm_flags) for v in child.mmap] == [(locked, VM_ANON_DEFAULT)]
    assert child.pte_get(private) == 0
    assert _page_at(mm, private).mapcount == 1
    assert mm.pte_get(private) & _PAGE_RW  # not write-protected: nothing shares it
    assert child.anon_rss == 1
    check_all(m)


def test_fork_of_shared_mapping_keeps_ptes_writable() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=8))
    mm = m.new_process("p")
    flags = VM_ANON_DEFAULT | VM_SHARED | VM_MAYSHARE
    a = do_mmap_anon(mm, P, flags)
    write_user_bytes(mm, a, b"S")
    child = m.fork(mm, "c")
    assert mm.pte_get(a) == mk_pte(1, writable=True)
    assert child.pte_get(a) == pte_mkold(mk_pte(1, writable=True))


def test_copy_page_range_direct() -> None:
    m, mm, a = _setup()
    other = m.new_process("other")
    src = mm.mmap[0]
    dst = VmArea(other, src.vm_start, src.vm_end, src.vm_flags, src.vm_pgoff)
    copy_page_range(dst, src)
    assert [addr for addr, _ in other.all_ptes()] == [a, a + P, a + 2 * P]
    assert other.anon_rss == 2
    assert _page_at(other, a).mapcount == 2


def test_fork_and_exit_errors() -> None:
    m, mm, _ = _setup()
    m.exit(mm)
    with pytest.raises(ValueError, match="exited"):
        m.fork(mm, "late")
    with pytest.raises(ValueError, match="already exited"):
        m.exit(mm)


def test_fork_of_ksm_registered_mm_registers_child() -> None:
    m, mm, a = _setup()
    do_madvise(mm, a, 2 * P, MADV_MERGEABLE)
    child = m.fork(mm, "c")
    assert m.ksm is not None
    assert child.flags & MMF_VM_MERGEABLE and child in m.ksm.mm_slots
    assert child.mm_count == 2
    assert [v.vm_flags & VM_MERGEABLE for v in child.mmap] == [VM_MERGEABLE, 0]
    assert [s.mm for s in m.ksm.slots()] == [mm, child]
    check_all(m)
    m.exit(child)
    assert child not in m.ksm.mm_slots and child.mm_count == 0
    assert not child.flags & MMF_VM_MERGEABLE
    check_all(m)


def test_fork_of_unregistered_mm_does_not_register() -> None:
    m, mm, _ = _setup()
    child = m.fork(mm, "c")
    assert m.ksm is not None and child not in m.ksm.mm_slots
    assert child.flags == 0


def test_munmap_in_child_leaves_parent_alone() -> None:
    m, mm, a = _setup()
    child = m.fork(mm, "c")
    do_munmap(child, a, 2 * P)
    assert len(child.mmap) == 1 and len(mm.mmap) == 1
    assert _page_at(mm, a).mapcount == 1
    assert read_user_byte(mm, a) == ord("A")
    anon_vma = mm.mmap[0].anon_vma
    assert anon_vma is not None and child.mmap[0].anon_vma is anon_vma
    assert anon_vma.head == [mm.mmap[0], child.mmap[0]]
    check_all(m)
