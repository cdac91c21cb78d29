"""Tests for ksmsim.kernel.invariants: valid states pass, each kind of corruption is named."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ksmsim.kernel.invariants import InvariantError, check_all, check_ksm, check_machine
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.madvise import MADV_DONTNEED, MADV_MERGEABLE, do_madvise
from ksmsim.kernel.memory import read_user_byte, write_user_bytes
from ksmsim.kernel.mm import (
    _PAGE_RW,
    _PAGE_SPECIAL,
    VM_ANON_DEFAULT,
    MmStruct,
    VmArea,
    migration_entry_to_pte,
    mk_pte,
)
from ksmsim.kernel.mmap import do_mmap_anon, do_munmap
from ksmsim.kernel.page import PAGE_SIZE, Page, PG_locked, set_page_stable_node
from ksmsim.kernel.profile import KEYHOLE
from ksmsim.kernel.rmap import AnonVma

P = PAGE_SIZE


@dataclass
class World:
    m: Machine
    mm: MmStruct
    child: MmStruct
    a: int  # 4 pages: a written, a+P written, a+2P zero page, a+3P untouched

    def page(self, addr: int, mm: MmStruct | None = None) -> Page:
        pte = (mm or self.mm).pte_get(addr)
        page = self.m.zone.mem_map[pte >> 12]
        assert page is not None
        return page


def _world() -> World:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=32))
    mm = m.new_process("p")
    a = do_mmap_anon(mm, 4 * P)
    write_user_bytes(mm, a, b"x")
    write_user_bytes(mm, a + P, b"y")
    read_user_byte(mm, a + 2 * P)
    child = m.fork(mm, "c")
    write_user_bytes(child, a + P, b"z")
    return World(m, mm, child, a)


def test_invariant_error_is_an_assertion() -> None:
    assert issubclass(InvariantError, AssertionError)


def test_valid_states_pass() -> None:
    w = _world()
    check_all(w.m)
    check_machine(w.m)
    assert w.m.ksm is not None
    check_ksm(w.m.ksm)
    do_madvise(w.mm, w.a, 2 * P, MADV_MERGEABLE)
    do_madvise(w.child, w.a + P, P, MADV_DONTNEED)
    do_munmap(w.mm, w.a + P, P)
    check_all(w.m)
    w.m.exit(w.mm)
    check_all(w.m)
    w.m.exit(w.child)
    check_all(w.m)
    assert w.m.zone.nr_free == 32


def test_empty_machine_passes() -> None:
    check_all(Machine(KEYHOLE, MachineConfig(ram_pages=1)))


def _overlap(w: World) -> None:
    w.mm.mmap.append(VmArea(w.mm, w.a + P, w.a + 6 * P, VM_ANON_DEFAULT, 0))
    w.mm.vmas_changed()


def _off_list(w: World) -> None:
    vma = w.mm.mmap[0]
    assert vma.anon_vma is not None
    vma.anon_vma.head.remove(vma)


def _pte_outside(w: World) -> None:
    w.mm.set_pte_at(w.a - P, mk_pte(w.page(w.a).pfn, False))


def _migration_pte(w: World) -> None:
    w.mm.set_pte_at(w.a + 3 * P, migration_entry_to_pte(3, False))


def _special_not_zero(w: World) -> None:
    w.mm.set_pte_at(w.a + 3 * P, mk_pte(1, False) | _PAGE_SPECIAL)


def _writable_zero(w: World) -> None:
    w.mm.set_pte_at(w.a + 2 * P, w.mm.pte_get(w.a + 2 * P) | _PAGE_RW)


def _free_frame(w: World) -> None:
    w.mm.set_pte_at(w.a + 3 * P, mk_pte(20, True))


def _writable_ksm(w: World) -> None:
    page = w.page(w.a + P)  # parent's, exclusive after the child's COW
    w.mm.set_pte_at(w.a + P, w.mm.pte_get(w.a + P) | _PAGE_RW)
    set_page_stable_node(page, None)


def _not_anon(w: World) -> None:
    w.page(w.a).mapping_flags = 0


def _other_anon_vma(w: World) -> None:
    w.page(w.a).mapping = AnonVma()


def _anon_rss(w: World) -> None:
    w.child.anon_rss += 1


def _mapcount(w: World) -> None:
    w.page(w.a).mapcount += 1


def _count(w: World) -> None:
    w.page(w.a).count += 1


def _locked(w: World) -> None:
    w.page(w.a).flags |= PG_locked


def _nr_anon(w: World) -> None:
    w.m.nr_anon_pages += 1


def _nr_free(w: World) -> None:
    w.m.zone.nr_free -= 1


def _ksm_items(w: World) -> None:
    assert w.m.ksm is not None
    w.m.ksm.ksm_rmap_items += 1


def _ksm_shared(w: World) -> None:
    assert w.m.ksm is not None
    w.m.ksm.ksm_pages_shared += 1


CORRUPTIONS: list[tuple[str, Callable[[World], None], str]] = [
    ("overlap", _overlap, "overlapping VMAs"),
    ("off_list", _off_list, "not on its anon_vma's list"),
    ("pte_outside", _pte_outside, "outside every VMA"),
    ("migration_pte", _migration_pte, "unexpected non-present pte"),
    ("special_not_zero", _special_not_zero, "not the zero page"),
    ("writable_zero", _writable_zero, "writable zero-page pte"),
    ("free_frame", _free_frame, "maps free frame 20"),
    ("writable_ksm", _writable_ksm, "writable pte .* maps KSM page"),
    ("not_anon", _not_anon, "is not anonymous"),
    ("other_anon_vma", _other_anon_vma, "belongs to another anon_vma"),
    ("anon_rss", _anon_rss, "c: anon_rss 3 but 2 anonymous ptes"),
    ("mapcount", _mapcount, "mapcount 3 but 2 ptes map it"),
    ("count", _count, r"count 3, expected 2 \(ptes \+ swap cache \+ pins\)"),
    ("locked", _locked, "left locked"),
    ("nr_anon", _nr_anon, "nr_anon_pages 4 but 3 mapped anonymous frames"),
    ("nr_free", _nr_free, "nr_free 28 disagrees"),
    ("ksm_items", _ksm_items, "ksm_rmap_items 1 but 0"),
    ("ksm_shared", _ksm_shared, "pages_shared/sharing 1/0 but the tree has 0/0"),
]


@pytest.mark.parametrize(
    ("corrupt", "message"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corruption_is_detected(corrupt: Callable[[World], None], message: str) -> None:
    w = _world()
    check_all(w.m)
    corrupt(w)
    with pytest.raises(InvariantError, match=message):
        check_all(w.m)


def test_exited_process_is_not_checked() -> None:
    w = _world()
    w.m.exit(w.child)
    w.child.anon_rss = 99  # a dead mm's counters are no longer part of the machine
    check_all(w.m)
