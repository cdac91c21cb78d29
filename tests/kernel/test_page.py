"""Tests for ksmsim.kernel.page: struct page fields, the tagged mapping pointer, locks, refs."""

from __future__ import annotations

import pytest

from ksmsim.kernel import page as pg
from ksmsim.kernel.page import (
    PAGE_MAPPING_ANON,
    PAGE_MAPPING_FLAGS,
    PAGE_MAPPING_KSM,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    Page,
    PageAnon,
    PageKsm,
    PageLocked,
    PageSwapCache,
    PG_dirty,
    PG_locked,
    PG_swapcache,
    get_page,
    get_page_unless_zero,
    page_anon_vma,
    page_freeze_refs,
    page_stable_node,
    page_unfreeze_refs,
    set_page_stable_node,
    trylock_page,
    unlock_page,
)


def test_page_geometry() -> None:
    assert PAGE_SHIFT == 12
    assert PAGE_SIZE == 4096
    assert PAGE_MASK == -4096
    assert 0x12345 & PAGE_MASK == 0x12000
    assert PAGE_MAPPING_ANON == 1
    assert PAGE_MAPPING_KSM == 2
    assert PAGE_MAPPING_FLAGS == 3


def test_page_flag_bits_are_distinct_single_bits() -> None:
    bits = list(pg.PAGE_FLAG_NAMES)
    assert len(bits) == len(set(bits)) == 11
    for bit in bits:
        assert bit > 0 and bit & (bit - 1) == 0
    assert pg.PAGE_FLAG_NAMES[PG_locked] == "locked"
    assert pg.PAGE_FLAG_NAMES[pg.PG_reserved] == "reserved"


def test_new_page_is_blank() -> None:
    p = Page(7)
    assert p.pfn == 7
    assert (p.count, p.mapcount, p.index, p.flags, p.private) == (0, 0, 0, 0, 0)
    assert p.mapping is None and p.mapping_flags == 0
    assert p.data is None and p.csum == 0 and p.csum_of is None
    assert not PageAnon(p) and not PageKsm(p)
    assert page_anon_vma(p) is None and page_stable_node(p) is None


def test_page_has_slots_only() -> None:
    p = Page(1)
    with pytest.raises(AttributeError):
        p.something_else = 1  # type: ignore[attr-defined]


def test_anon_mapping_encoding() -> None:
    p = Page(1)
    anon_vma = object()
    p.mapping = anon_vma
    p.mapping_flags = PAGE_MAPPING_ANON
    assert PageAnon(p)
    assert not PageKsm(p)
    assert page_anon_vma(p) is anon_vma
    assert page_stable_node(p) is None


def test_ksm_mapping_encoding() -> None:
    p = Page(1)
    node = object()
    set_page_stable_node(p, node)
    assert p.mapping is node
    assert p.mapping_flags == PAGE_MAPPING_FLAGS
    assert PageKsm(p)
    assert PageAnon(p)  # a KSM page is anonymous too
    assert page_stable_node(p) is node
    assert page_anon_vma(p) is None  # 2.6.33: no anon_vma for a KSM page


def test_set_page_stable_node_none_keeps_ksm_bits() -> None:
    p = Page(1)
    set_page_stable_node(p, None)
    assert PageKsm(p)
    assert p.mapping is None
    assert page_stable_node(p) is None


def test_ksm_bit_alone_is_neither_anon_nor_ksm() -> None:
    p = Page(1)
    p.mapping = object()
    p.mapping_flags = PAGE_MAPPING_KSM
    assert not PageAnon(p)
    assert not PageKsm(p)
    assert page_anon_vma(p) is None
    assert page_stable_node(p) is None


def test_trylock_and_unlock() -> None:
    p = Page(1)
    p.flags = PG_dirty
    assert not PageLocked(p)
    assert trylock_page(p) is True
    assert PageLocked(p)
    assert p.flags == PG_dirty | PG_locked
    assert trylock_page(p) is False
    assert p.flags == PG_dirty | PG_locked
    unlock_page(p)
    assert not PageLocked(p)
    assert p.flags == PG_dirty
    unlock_page(p)  # unlocking an unlocked page leaves the flags alone
    assert p.flags == PG_dirty


def test_page_swapcache_flag() -> None:
    p = Page(1)
    assert not PageSwapCache(p)
    p.flags |= PG_swapcache
    assert PageSwapCache(p)


def test_get_page_counts_up() -> None:
    p = Page(1)
    p.count = 1
    get_page(p)
    get_page(p)
    assert p.count == 3


def test_get_page_unless_zero_refuses_zero() -> None:
    p = Page(1)
    assert get_page_unless_zero(p) is False
    assert p.count == 0
    p.count = 2
    assert get_page_unless_zero(p) is True
    assert p.count == 3


def test_freeze_and_unfreeze_refs() -> None:
    p = Page(1)
    p.count = 2
    assert page_freeze_refs(p, 3) is False
    assert p.count == 2
    assert page_freeze_refs(p, 2) is True
    assert p.count == 0
    # A frozen page cannot be speculatively referenced.
    assert get_page_unless_zero(p) is False
    page_unfreeze_refs(p, 2)
    assert p.count == 2
    assert get_page_unless_zero(p) is True
    assert p.count == 3


def test_repr_names_kind_and_flags() -> None:
    p = Page(5)
    assert repr(p) == "<Page pfn=5 count=0 mapcount=0 - flags=->"
    p.count = 2
    p.mapcount = 1
    p.mapping_flags = PAGE_MAPPING_ANON
    p.flags = PG_locked | PG_dirty
    assert repr(p) == "<Page pfn=5 count=2 mapcount=1 anon flags=locked,dirty>"
    set_page_stable_node(p, None)
    assert "ksm" in repr(p)
