"""Tests for ksmsim.kernel.page_alloc: the frame table, the free list and its reuse order."""

from __future__ import annotations

import pytest

from ksmsim.kernel.contents import ZERO_DATA
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.madvise import MADV_MERGEABLE, MADV_UNMERGEABLE, do_madvise
from ksmsim.kernel.memory import read_user_byte, write_user_bytes
from ksmsim.kernel.mmap import do_mmap_anon
from ksmsim.kernel.page import (
    PAGE_MAPPING_ANON,
    PAGE_SIZE,
    PG_dirty,
    PG_reserved,
    get_page,
    get_page_unless_zero,
    set_page_stable_node,
)
from ksmsim.kernel.page_alloc import ZERO_PFN, Zone
from ksmsim.kernel.profile import KEYHOLE


def test_zone_needs_ram() -> None:
    with pytest.raises(ValueError):
        Zone(0, ZERO_DATA)


def test_new_zone_state() -> None:
    z = Zone(4, ZERO_DATA)
    assert z.present_pages == 4
    assert z.nr_free == 4
    assert z.reuse_order == "hot"
    assert len(z.mem_map) == 5
    assert z.mem_map[1:] == [None] * 4  # frames are created lazily
    assert z.allocated_pages() == []


def test_zero_page_is_frame_zero_reserved() -> None:
    z = Zone(4, ZERO_DATA)
    zero = z.zero_page
    assert ZERO_PFN == 0
    assert zero.pfn == 0
    assert z.mem_map[0] is zero
    assert z.pfn_to_page(0) is zero
    assert zero.flags == PG_reserved
    assert zero.count == 1
    assert zero.data is ZERO_DATA
    assert not z.is_free(zero)


def test_alloc_hands_out_fresh_frames_in_pfn_order() -> None:
    z = Zone(3, ZERO_DATA)
    pages = [z.alloc_page() for _ in range(3)]
    assert [p.pfn for p in pages if p is not None] == [1, 2, 3]
    for p in pages:
        assert p is not None and p.count == 1 and p.mapcount == 0
    assert z.nr_free == 0
    assert z.mem_map[1:] == pages
    assert z.allocated_pages() == pages
    # The zero page is never handed out, even when RAM is exhausted.
    assert z.alloc_page() is None
    assert z.nr_free == 0
    assert z.zero_page.count == 1


def test_pfn_to_page_creates_lazily_and_is_stable() -> None:
    z = Zone(8, ZERO_DATA)
    p = z.pfn_to_page(6)
    assert p.pfn == 6 and p.count == 0
    assert z.mem_map[6] is p
    assert z.pfn_to_page(6) is p
    assert z.is_free(p)
    # Creating a frame record does not allocate it.
    assert z.nr_free == 8
    assert z.allocated_pages() == []


def test_put_page_frees_on_last_reference() -> None:
    z = Zone(2, ZERO_DATA)
    p = z.alloc_page()
    assert p is not None
    get_page(p)
    assert p.count == 2
    z.put_page(p)
    assert p.count == 1 and z.nr_free == 1 and not z.is_free(p)
    z.put_page(p)
    assert p.count == 0 and z.nr_free == 2 and z.is_free(p)
    assert z.allocated_pages() == []


def test_free_clears_mapping_and_state() -> None:
    z = Zone(2, ZERO_DATA)
    p = z.alloc_page()
    assert p is not None
    anon_vma = object()
    p.mapping = anon_vma
    p.mapping_flags = PAGE_MAPPING_ANON
    p.index = 1234
    p.private = 9
    p.flags = PG_dirty
    p.data = b"x" * PAGE_SIZE
    p.csum_of = p.data
    p.csum = 77
    z.put_page(p)
    assert p.mapping is None
    assert p.mapping_flags == 0
    assert p.index == 0
    assert p.private == 0
    assert p.flags == 0
    assert p.data is None
    assert p.csum_of is None


def test_free_clears_ksm_mapping() -> None:
    z = Zone(1, ZERO_DATA)
    p = z.alloc_page()
    assert p is not None
    set_page_stable_node(p, object())
    z.put_page(p)
    assert p.mapping is None and p.mapping_flags == 0


def test_put_page_on_zero_count_raises() -> None:
    z = Zone(1, ZERO_DATA)
    p = z.alloc_page()
    assert p is not None
    z.put_page(p)
    with pytest.raises(AssertionError, match="negative"):
        z.put_page(p)


def test_free_hot_cold_page_refuses_page_in_use() -> None:
    z = Zone(1, ZERO_DATA)
    p = z.alloc_page()
    assert p is not None
    with pytest.raises(AssertionError, match="in use"):
        z.free_hot_cold_page(p)
    p.count = 0
    p.mapcount = 1
    with pytest.raises(AssertionError, match="in use"):
        z.free_hot_cold_page(p)


def test_put_page_never_frees_the_reserved_zero_page() -> None:
    z = Zone(1, ZERO_DATA)
    z.zero_page.count += 2  # two get_page()s, as follow_page(FOLL_GET) takes
    z.put_page(z.zero_page)
    z.put_page(z.zero_page)
    assert z.zero_page.count == 1
    assert z.nr_free == 1
    assert z.zero_page.data is ZERO_DATA


def _three_freed(order: str) -> tuple[Zone, list[int]]:
    z = Zone(3, ZERO_DATA, order)  # type: ignore[arg-type]
    pages = [z.alloc_page() for _ in range(3)]
    for p in pages:
        assert p is not None
        z.put_page(p)  # freed in order pfn 1, 2, 3
    assert z.nr_free == 3
    return z, [p.pfn for p in pages if p is not None]


def test_hot_reuse_hands_out_last_freed_first() -> None:
    z, freed = _three_freed("hot")
    assert freed == [1, 2, 3]
    got = [z.alloc_page() for _ in range(3)]
    assert [p.pfn for p in got if p is not None] == [3, 2, 1]
    assert z.alloc_page() is None


def test_cold_reuse_hands_out_oldest_freed_first() -> None:
    z, _ = _three_freed("cold")
    got = [z.alloc_page() for _ in range(3)]
    assert [p.pfn for p in got if p is not None] == [1, 2, 3]
    assert z.alloc_page() is None


def test_free_list_is_used_before_fresh_frames() -> None:
    z = Zone(4, ZERO_DATA)
    a = z.alloc_page()
    b = z.alloc_page()
    assert a is not None and b is not None
    z.put_page(a)
    c = z.alloc_page()
    assert c is a and c.pfn == 1 and c.count == 1
    d = z.alloc_page()
    assert d is not None and d.pfn == 3
    assert z.nr_free == 1


def test_reused_frame_comes_back_clean() -> None:
    z = Zone(1, ZERO_DATA)
    p = z.alloc_page()
    assert p is not None
    p.mapping = object()
    p.mapping_flags = PAGE_MAPPING_ANON
    p.data = b"y" * PAGE_SIZE
    z.put_page(p)
    q = z.alloc_page()
    assert q is p
    assert (q.count, q.mapcount, q.flags, q.mapping, q.mapping_flags, q.data) == (
        1,
        0,
        0,
        None,
        0,
        None,
    )


def test_get_page_unless_zero_refuses_freed_frame() -> None:
    z = Zone(1, ZERO_DATA)
    p = z.alloc_page()
    assert p is not None
    assert get_page_unless_zero(p) is True
    assert p.count == 2
    z.put_page(p)
    z.put_page(p)
    assert p.count == 0
    assert get_page_unless_zero(p) is False
    assert p.count == 0
    assert z.is_free(p)


def test_allocated_pages_in_pfn_order() -> None:
    z = Zone(5, ZERO_DATA)
    pages = [z.alloc_page() for _ in range(5)]
    assert all(p is not None for p in pages)
    z.put_page(pages[1])  # type: ignore[arg-type]
    z.put_page(pages[3])  # type: ignore[arg-type]
    assert [p.pfn for p in z.allocated_pages()] == [1, 3, 5]
    assert z.nr_free == 2


def test_machine_reuse_order_reaches_the_zone() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=8, reuse_order="cold"))
    assert m.zone.reuse_order == "cold"
    assert m.zone.present_pages == 8
    assert Machine(KEYHOLE, MachineConfig(ram_pages=8)).zone.reuse_order == "hot"


def test_zero_page_refcount_balanced_across_unmergeable() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=8))
    mm = m.new_process("p")
    addr = do_mmap_anon(mm, 3 * PAGE_SIZE)
    write_user_bytes(mm, addr, b"x")  # gives the area an anon_vma, so UNMERGEABLE walks it
    for i in (1, 2):
        assert read_user_byte(mm, addr + i * PAGE_SIZE) == 0
    assert m.zone.zero_page.count == 1
    do_madvise(mm, addr, 3 * PAGE_SIZE, MADV_MERGEABLE)
    do_madvise(mm, addr, 3 * PAGE_SIZE, MADV_UNMERGEABLE)
    assert m.zone.zero_page.count == 1
