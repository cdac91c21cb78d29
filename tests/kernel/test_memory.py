"""Tests for ksmsim.kernel.memory (faults, COW, zap, peek), contents and swapfile.reuse_swap_page."""

from __future__ import annotations

import pytest

from ksmsim.kernel import contents
from ksmsim.kernel.contents import ZERO_DATA, write_bytes
from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.ksm import KSM_RUN_MERGE
from ksmsim.kernel.ksmd import Ksmd
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.madvise import MADV_MERGEABLE, do_madvise
from ksmsim.kernel.memory import (
    VM_FAULT_WRITE,
    FaultError,
    copy_user_highpage,
    follow_page,
    handle_mm_fault,
    is_cow_mapping,
    peek_user_page,
    read_user_byte,
    vm_normal_page,
    write_user_bytes,
    zap_page_range,
)
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    VM_ANON_DEFAULT,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    MmStruct,
    mk_pte,
    pte_mkold,
    pte_wrprotect,
)
from ksmsim.kernel.mmap import do_mmap_anon
from ksmsim.kernel.page import (
    PAGE_MAPPING_ANON,
    PAGE_SIZE,
    Page,
    PageAnon,
    PageKsm,
    PG_active,
    PG_lru,
    PG_swapbacked,
    PG_uptodate,
)
from ksmsim.kernel.profile import KEYHOLE

P = PAGE_SIZE
ZERO_PTE = _PAGE_PRESENT | _PAGE_SPECIAL | _PAGE_ACCESSED
NEW_ANON_FLAGS = PG_swapbacked | PG_uptodate | PG_lru | PG_active


def _setup(pages: int = 32, npages: int = 4) -> tuple[Machine, MmStruct, int]:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=pages))
    mm = m.new_process("p")
    return m, mm, do_mmap_anon(mm, npages * P)


def _page_at(mm: MmStruct, addr: int) -> Page:
    page = mm.machine.zone.mem_map[mm.pte_get(addr) >> 12]
    assert page is not None
    return page


# --- read faults ----------------------------------------------------------------------------
def test_read_of_untouched_page_maps_the_zero_page() -> None:
    m, mm, a = _setup()
    assert read_user_byte(mm, a + 123) == 0
    pte = mm.pte_get(a)
    assert pte == ZERO_PTE  # pfn 0, present, special, young; read-only and clean
    assert not pte & _PAGE_RW and not pte & _PAGE_DIRTY
    assert m.zone.nr_free == 32
    assert m.zone.allocated_pages() == []
    assert m.zone.zero_page.count == 1
    assert mm.anon_rss == 0 and m.nr_anon_pages == 0
    assert mm.mmap[0].anon_vma is None  # a read fault needs no anon_vma
    assert read_user_byte(mm, a + 4095) == 0
    assert mm.pte_get(a) == ZERO_PTE
    check_all(m)


def test_read_fault_return_value() -> None:
    _, mm, a = _setup()
    assert handle_mm_fault(mm.mmap[0], a + 5, write=False) == 0
    assert mm.pte_get(a) == ZERO_PTE


# --- write faults ---------------------------------------------------------------------------
def test_write_to_untouched_page_allocates_a_zeroed_frame() -> None:
    m, mm, a = _setup()
    write_user_bytes(mm, a + 10, b"hi")
    vma = mm.mmap[0]
    pte = mm.pte_get(a)
    assert pte == mk_pte(1, writable=True)  # pfn 1, present, rw, dirty, young
    page = _page_at(mm, a)
    assert page.pfn == 1
    assert (page.count, page.mapcount) == (1, 1)
    assert PageAnon(page) and not PageKsm(page)
    assert vma.anon_vma is not None and page.mapping is vma.anon_vma
    assert page.mapping_flags == PAGE_MAPPING_ANON
    assert page.index == a >> 12
    assert page.flags == NEW_ANON_FLAGS
    assert page.data == b"\0" * 10 + b"hi" + b"\0" * (P - 12)
    assert m.zone.nr_free == 31
    assert mm.anon_rss == 1 and m.nr_anon_pages == 1
    assert read_user_byte(mm, a + 11) == ord("i")
    check_all(m)


def test_write_fault_return_value() -> None:
    _, mm, a = _setup()
    assert handle_mm_fault(mm.mmap[0], a, write=True) == VM_FAULT_WRITE
    assert mm.pte_get(a) == mk_pte(1, writable=True)


def test_write_to_zero_page_mapping_allocates() -> None:
    m, mm, a = _setup()
    read_user_byte(mm, a)
    assert mm.pte_get(a) == ZERO_PTE
    write_user_bytes(mm, a, b"\x07")
    pte = mm.pte_get(a)
    assert pte == mk_pte(1, writable=True)
    page = _page_at(mm, a)
    assert (page.count, page.mapcount, page.index) == (1, 1, a >> 12)
    assert page.mapping is mm.mmap[0].anon_vma
    assert page.data is not None and page.data[0] == 7 and page.data[1:] == bytes(P - 1)
    assert m.zone.zero_page.count == 1
    assert bytes(P) == ZERO_DATA  # the zero page itself is untouched
    assert m.zone.zero_page.data is ZERO_DATA
    assert mm.anon_rss == 1 and m.nr_anon_pages == 1 and m.zone.nr_free == 31
    check_all(m)


def test_zero_page_copy_then_write_zero_byte_shares_zero_contents() -> None:
    _, mm, a = _setup()
    read_user_byte(mm, a)
    write_user_bytes(mm, a, b"\0")  # COW from the zero page; the payload changes nothing
    assert _page_at(mm, a).data is ZERO_DATA


def test_write_to_writable_page_takes_no_fault() -> None:
    m, mm, a = _setup()
    write_user_bytes(mm, a, b"a")
    page = _page_at(mm, a)
    write_user_bytes(mm, a + 1, b"b")
    assert _page_at(mm, a) is page
    assert page.data is not None and page.data[:2] == b"ab"
    assert m.zone.nr_free == 31


def test_full_page_write_replaces_contents_by_identity() -> None:
    _, mm, a = _setup()
    payload = bytes([0x5A]) * P
    write_user_bytes(mm, a, payload)
    assert _page_at(mm, a).data is payload
    write_user_bytes(mm, a + P, payload)
    assert _page_at(mm, a + P).data is _page_at(mm, a).data


def test_equal_small_writes_share_one_object() -> None:
    _, mm, a = _setup()
    write_user_bytes(mm, a + 100, b"\x01\x02")
    write_user_bytes(mm, a + P + 100, b"\x01\x02")
    assert _page_at(mm, a).data is _page_at(mm, a + P).data


def test_write_must_stay_within_one_page() -> None:
    m, mm, a = _setup()
    with pytest.raises(ValueError):
        write_user_bytes(mm, a + P - 1, b"ab")
    assert mm.pgd == {} and m.zone.nr_free == 32


def test_access_outside_any_vma_is_sigsegv() -> None:
    m, mm, a = _setup()
    for addr in (a - 1, a - P, a + 4 * P, 0):
        with pytest.raises(FaultError, match="SIGSEGV"):
            read_user_byte(mm, addr)
        with pytest.raises(FaultError, match="SIGSEGV"):
            write_user_bytes(mm, addr, b"x")
    assert m.oom_events == []
    assert mm.pgd == {}


def test_write_to_read_only_area_is_sigsegv() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=4))
    mm = m.new_process("p")
    a = do_mmap_anon(mm, P, VM_READ | VM_MAYREAD)
    with pytest.raises(FaultError, match="SIGSEGV"):
        write_user_bytes(mm, a, b"x")
    assert mm.pte_get(a) == 0 and m.zone.nr_free == 4
    assert read_user_byte(mm, a) == 0
    assert mm.pte_get(a) == ZERO_PTE
    with pytest.raises(FaultError, match="SIGSEGV"):
        write_user_bytes(mm, a, b"x")
    assert mm.pte_get(a) == ZERO_PTE
    check_all(m)


def test_access_sets_young_and_dirty_bits() -> None:
    _, mm, a = _setup()
    write_user_bytes(mm, a, b"x")
    pte = mm.pte_get(a)
    mm.set_pte_at(a, pte_mkold(pte) & ~_PAGE_DIRTY)
    read_user_byte(mm, a)
    assert mm.pte_get(a) == pte & ~_PAGE_DIRTY  # young again, still clean
    write_user_bytes(mm, a, b"y")
    assert mm.pte_get(a) == pte


# --- copy-on-write --------------------------------------------------------------------------
def test_write_to_exclusive_readonly_anon_page_reuses_it() -> None:
    m, mm, a = _setup()
    write_user_bytes(mm, a, b"x")
    page = _page_at(mm, a)
    mm.set_pte_at(a, pte_wrprotect(pte_mkold(mm.pte_get(a))) & ~_PAGE_DIRTY)
    assert page.mapcount == 1
    ret = handle_mm_fault(mm.mmap[0], a, write=True)
    assert ret == VM_FAULT_WRITE
    assert mm.pte_get(a) == mk_pte(page.pfn, writable=True)
    assert _page_at(mm, a) is page and page.count == 1
    assert m.zone.nr_free == 31
    check_all(m)


def test_write_to_shared_readonly_page_copies_it() -> None:
    m, mm, a = _setup()
    write_user_bytes(mm, a, b"orig")
    page = _page_at(mm, a)
    data = page.data
    vma = mm.mmap[0]
    # A second mapping of the frame at another address (what fork does across mms).
    ro = pte_wrprotect(mm.pte_get(a))
    mm.set_pte_at(a, ro)
    mm.set_pte_at(a + P, ro)
    page.count += 1
    page.mapcount += 1
    mm.anon_rss += 1
    assert handle_mm_fault(vma, a + P, write=True) == VM_FAULT_WRITE
    new = _page_at(mm, a + P)
    assert new is not page and new.pfn == 2
    assert new.data is data  # the copy shares the source's bytes object
    assert (new.count, new.mapcount, new.index) == (1, 1, (a + P) >> 12)
    assert new.mapping is vma.anon_vma
    assert mm.pte_get(a + P) == mk_pte(2, writable=True)
    assert (page.count, page.mapcount) == (1, 1)
    assert mm.pte_get(a) == ro  # the other mapping is untouched, still read-only
    assert m.zone.nr_free == 30


def test_cow_copy_keeps_cached_checksum() -> None:
    src, dst = Page(1), Page(2)
    src.data = b"a" * P
    src.csum, src.csum_of = 1234, src.data
    copy_user_highpage(dst, src)
    assert dst.data is src.data and dst.csum == 1234 and dst.csum_of is src.data
    stale = Page(3)
    stale.data = b"b" * P
    stale.csum, stale.csum_of = 99, b"c" * P
    dst2 = Page(4)
    copy_user_highpage(dst2, stale)
    assert dst2.data is stale.data and dst2.csum_of is None and dst2.csum == 0


def test_write_to_exclusive_ksm_page_copies_never_reuses() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=16))
    a, b = m.new_process("a"), m.new_process("b")
    data = bytes([7]) * P
    xa, xb = do_mmap_anon(a, P), do_mmap_anon(b, P)
    write_user_bytes(a, xa, data)
    write_user_bytes(b, xb, data)
    do_madvise(a, xa, P, MADV_MERGEABLE)
    do_madvise(b, xb, P, MADV_MERGEABLE)
    assert m.ksm is not None
    m.ksm.ksm_run = KSM_RUN_MERGE
    assert Ksmd(m).run_full_scans(3)
    kpage = _page_at(a, xa)
    assert PageKsm(kpage) and _page_at(b, xb) is kpage and kpage.mapcount == 2
    m.exit(b)
    check_all(m)
    assert kpage.mapcount == 1 and PageKsm(kpage)
    assert not a.pte_get(xa) & _PAGE_RW
    write_user_bytes(a, xa, b"z")
    new = _page_at(a, xa)
    assert new is not kpage
    assert not PageKsm(new) and PageAnon(new) and new.mapcount == 1
    assert a.pte_get(xa) & _PAGE_RW
    assert new.data == b"z" + data[1:]
    assert kpage.mapcount == 0
    assert m.vmstat["cow_ksm"] == 1
    check_all(m)


# --- OOM ------------------------------------------------------------------------------------
def test_oom_on_fresh_write() -> None:
    m, mm, a = _setup(pages=2)
    write_user_bytes(mm, a, b"1")
    write_user_bytes(mm, a + P, b"2")
    assert m.zone.nr_free == 0
    with pytest.raises(FaultError) as ei:
        write_user_bytes(mm, a + 2 * P, b"3")
    assert "0x1" in str(ei.value)  # VM_FAULT_OOM
    assert len(m.oom_events) == 1
    ev = m.oom_events[0]
    assert (ev.pid, ev.name, ev.address, ev.time_ns) == (mm.pid, "p", a + 2 * P, 0)
    assert mm.pte_get(a + 2 * P) == 0
    assert mm.anon_rss == 2 and m.nr_anon_pages == 2
    assert m.memory_stats()["oom_events"] == 1
    check_all(m)
    # Reads still work (the zero page needs no frame); earlier pages are intact.
    assert read_user_byte(mm, a + 2 * P) == 0
    assert read_user_byte(mm, a) == ord("1") and read_user_byte(mm, a + P) == ord("2")
    check_all(m)


def test_oom_on_zero_page_cow() -> None:
    m, mm, a = _setup(pages=1)
    write_user_bytes(mm, a, b"1")
    read_user_byte(mm, a + P)
    with pytest.raises(FaultError):
        write_user_bytes(mm, a + P, b"2")
    assert mm.pte_get(a + P) == ZERO_PTE
    assert [e.address for e in m.oom_events] == [a + P]
    assert m.zone.zero_page.count == 1
    check_all(m)


def test_oom_on_cow_after_fork_keeps_counts_balanced() -> None:
    m, mm, a = _setup(pages=2)
    write_user_bytes(mm, a, b"1")
    write_user_bytes(mm, a + P, b"2")
    child = m.fork(mm, "c")
    page = _page_at(mm, a)
    assert (page.count, page.mapcount) == (2, 2)
    with pytest.raises(FaultError):
        write_user_bytes(child, a, b"x")
    assert [(e.pid, e.address) for e in m.oom_events] == [(child.pid, a)]
    assert (page.count, page.mapcount) == (2, 2)
    assert _page_at(child, a) is page and not child.pte_get(a) & _PAGE_RW
    assert read_user_byte(child, a) == ord("1")
    check_all(m)
    # Freeing memory lets the same write succeed.
    m.exit(mm)
    write_user_bytes(child, a, b"x")
    assert _page_at(child, a) is page  # now exclusive: reused in place
    assert read_user_byte(child, a) == ord("x")
    check_all(m)


# --- zap, peek, follow_page -----------------------------------------------------------------
def test_zap_page_range_frees_and_clears() -> None:
    m, mm, a = _setup()
    write_user_bytes(mm, a, b"1")
    read_user_byte(mm, a + P)
    write_user_bytes(mm, a + 2 * P, b"3")
    p0 = _page_at(mm, a)
    zap_page_range(mm.mmap[0], a, a + 2 * P)
    assert mm.pte_get(a) == 0 and mm.pte_get(a + P) == 0
    assert mm.pte_get(a + 2 * P) == mk_pte(2, True)
    assert p0.count == 0 and p0.mapcount == 0 and p0.mapping is None and p0.data is None
    assert m.zone.nr_free == 31 and mm.anon_rss == 1 and m.nr_anon_pages == 1
    assert len(mm.mmap) == 1  # zapping leaves the VMA
    assert read_user_byte(mm, a) == 0
    check_all(m)


def test_peek_user_page_changes_nothing() -> None:
    m, mm, a = _setup()
    assert peek_user_page(mm, a - P) is None
    assert peek_user_page(mm, a + 4 * P) is None
    assert peek_user_page(mm, a) is ZERO_DATA
    assert mm.pgd == {}
    write_user_bytes(mm, a + P + 3, b"q")
    pte = mm.pte_get(a + P)
    mm.set_pte_at(a + P, pte_mkold(pte))
    got = peek_user_page(mm, a + P + 100)
    assert got is _page_at(mm, a + P).data
    assert got is not None and got[3] == ord("q")
    assert mm.pte_get(a + P) == pte_mkold(pte)  # no young bit set by a peek
    read_user_byte(mm, a + 2 * P)
    assert peek_user_page(mm, a + 2 * P) is ZERO_DATA
    assert m.zone.nr_free == 31


def test_follow_page_and_vm_normal_page() -> None:
    m, mm, a = _setup()
    vma = mm.mmap[0]
    assert follow_page(vma, a) is None
    read_user_byte(mm, a)
    assert follow_page(vma, a, foll_get=False) is m.zone.zero_page
    assert vm_normal_page(vma, a, mm.pte_get(a)) is None
    write_user_bytes(mm, a + P, b"x")
    page = _page_at(mm, a + P)
    assert vm_normal_page(vma, a + P, mm.pte_get(a + P)) is page
    assert follow_page(vma, a + P) is page
    assert page.count == 2
    m.zone.put_page(page)
    assert page.count == 1
    assert m.zone.zero_page.count == 1


def test_is_cow_mapping() -> None:
    assert is_cow_mapping(VM_ANON_DEFAULT)
    assert is_cow_mapping(VM_READ | VM_MAYWRITE)
    assert not is_cow_mapping(VM_READ | VM_MAYREAD)
    assert not is_cow_mapping(VM_ANON_DEFAULT | VM_SHARED)
    assert not is_cow_mapping(VM_READ | VM_WRITE | VM_MAYSHARE | VM_SHARED | VM_MAYWRITE)


# --- swapfile.reuse_swap_page: see tests/kernel/test_swap.py ------------------------------


# --- contents -------------------------------------------------------------------------------
def test_zero_data() -> None:
    assert bytes(P) == ZERO_DATA and isinstance(ZERO_DATA, bytes)


def test_write_bytes_semantics_and_sharing() -> None:
    base = bytes(P)
    out = write_bytes(base, 10, b"xyz")
    assert len(out) == P
    assert out[:10] == bytes(10) and out[10:13] == b"xyz" and out[13:] == bytes(P - 13)
    assert write_bytes(base, 10, b"xyz") is out
    assert write_bytes(bytes(P), 10, b"xyz") is out  # keyed by value, not identity
    assert write_bytes(out, 10, b"xyz") is out  # no change: same object
    assert write_bytes(base, 0, b"\0\0") is base
    assert write_bytes(base, P - 1, b"\xff")[-1] == 0xFF


def test_write_bytes_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contents, "_write_cache", {})
    monkeypatch.setattr(contents, "_WRITE_CACHE_MAX", 4)
    base = bytes(P)
    results = [write_bytes(base, i, b"\x01") for i in range(10)]
    assert len(contents._write_cache) <= 4
    for i, r in enumerate(results):
        assert r[i] == 1 and r.count(0) == P - 1
