"""Tests for the per-CPU LRU add pagevecs (notes 11.1): with ``lru_pagevec`` a newly faulted page
keeps an extra reference until 14 pages have been added on its CPU, and write_protect_page()
refuses to merge it meanwhile; 6.x drains every pagevec at the start of each pass."""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import PAGEVEC_SIZE, Machine, MachineConfig
from ksmsim.kernel.memory import write_user_bytes
from ksmsim.kernel.mm import MmStruct, pte_pfn, pte_write
from ksmsim.kernel.mmap import do_mmap_anon
from ksmsim.kernel.page import PAGE_SIZE, Page, PageKsm, PG_active, PG_lru
from ksmsim.kernel.profile import V2_6_33
from ksmsim.workload.host import Host
from tests.helpers import ksm_counts

P = PAGE_SIZE


def _pages(mm: MmStruct, addr: int, n: int) -> list[Page]:
    out = []
    for i in range(n):
        page = mm.machine.zone.mem_map[pte_pfn(mm.pte_get(addr + i * P))]
        assert page is not None
        out.append(page)
    return out


def _host(kernel: str, procs: dict[str, int]) -> Host:
    host = Host(kernel, ram_pages=500, check=True, lru_pagevec=True)
    for name, pages in procs.items():
        host.spawn(name)
        host.mmap(name, "r", pages)
        host.fill(name, "r", 0x5A)
    return host


def test_thirteen_pages_stay_buffered_and_the_fourteenth_drains() -> None:
    assert PAGEVEC_SIZE == 14
    m = Machine(V2_6_33, MachineConfig(ram_pages=128, lru_pagevec=True))
    mm = m.new_process("a")
    a = do_mmap_anon(mm, 14 * P)
    for i in range(13):
        write_user_bytes(mm, a + i * P, bytes([i + 1]))
    pages = _pages(mm, a, 13)
    assert m.pagevecs == [pages, []]
    for page in pages:
        # The pagevec's reference; not yet on an LRU list, but marked for the active one.
        assert (page.count, page.mapcount) == (2, 1)
        assert page.flags & (PG_lru | PG_active) == PG_active
    assert len(m.lru) == 0
    check_all(m)  # the checker counts pagevec references as held
    write_user_bytes(mm, a + 13 * P, b"\x0e")
    pages = _pages(mm, a, 14)
    assert m.pagevecs == [[], []]
    assert list(m.lru.active) == pages
    assert all(p.count == 1 and p.flags & PG_lru for p in pages)
    check_all(m)


def test_lru_add_drain_frees_a_page_only_the_pagevec_held() -> None:
    m = Machine(V2_6_33, MachineConfig(ram_pages=128, lru_pagevec=True))
    mm = m.new_process("a")
    a = do_mmap_anon(mm, P)
    write_user_bytes(mm, a, b"\x01")
    [page] = _pages(mm, a, 1)
    m.exit(mm)
    assert (page.count, page.mapcount) == (1, 0)  # only the pagevec holds it now
    assert not m.zone.is_free(page)
    m.lru_add_drain(0)
    assert m.zone.is_free(page) and len(m.lru) == 0
    check_all(m)


def test_v2633_buffered_pages_never_merge_until_drained() -> None:
    host = _host("v2.6.33", {"a": 7, "b": 6})
    m = host.machine
    assert [len(v) for v in m.pagevecs] == [13, 0]
    host.scan(3)
    # a's first page entered the unstable tree; every merge with it failed the count check
    # in write_protect_page() (mapcount 1 + ksmd's reference + the pagevec's): no KSM page.
    assert ksm_counts(host) == (0, 0, 1, 12)
    assert host.memory()["ksm_pages"] == 0
    a = host.region("a", "r").address
    assert all(pte_write(host.proc("a").mm.pte_get(a + i * P)) for i in range(7))
    assert [len(v) for v in m.pagevecs] == [13, 0]  # v2.6.33 allocates nothing to merge
    # A 14th page faulted on the CPU (anywhere) drains the pagevec; the next pass merges all.
    host.spawn("c")
    host.mmap("c", "r", 1, mergeable=False)
    host.fill("c", "r", 1)
    assert [len(v) for v in m.pagevecs] == [0, 0]
    host.scan(1)
    assert ksm_counts(host) == (1, 12, 0, 0)
    assert host.memory()["ksm_pages"] == 1


def test_keyhole_kpage_allocations_fill_the_pagevec() -> None:
    # At the keyhole each failed two-page merge allocates a kpage, which goes through the
    # pagevec too and stays there (held only by it) after the merge is undone.
    host = _host("keyhole", {"a": 3, "b": 3})
    m = host.machine
    assert [len(v) for v in m.pagevecs] == [6, 0]
    host.scan(1)
    assert ksm_counts(host) == (0, 0, 0, 6)
    host.scan(1)
    # a0 went into the unstable tree; a1, a2, b0, b1, b2 matched it and failed: five kpages.
    assert ksm_counts(host) == (0, 0, 1, 5)
    assert [len(v) for v in m.pagevecs] == [11, 0]
    assert m.zone.nr_free == 500 - 6 - 5
    host.scan(1)
    # The third failed attempt of this pass (b0's) was the 14th add: the drain freed the
    # stale kpages and let b0 merge with a0 into its new kpage; b1 and b2 then joined it.
    assert ksm_counts(host) == (1, 3, 0, 2)
    assert [len(v) for v in m.pagevecs] == [0, 0]
    assert m.zone.nr_free == 500 - 3  # a1, a2 and the KSM page
    host.scan(1)
    assert ksm_counts(host) == (1, 5, 0, 0)


@pytest.mark.parametrize("kernel", ["keyhole", "v2.6.33"])
def test_without_pagevecs_the_same_pages_merge_at_once(kernel: str) -> None:
    host = Host(kernel, ram_pages=500, check=True)
    for name in "ab":
        host.spawn(name)
        host.mmap(name, "r", 3)
        host.fill(name, "r", 0x5A)
    host.scan(2)
    assert ksm_counts(host) == (1, 5, 0, 0)


def test_v618_drains_at_each_pass_start() -> None:
    host = _host("v6.18", {"a": 3, "b": 3})
    m = host.machine
    assert [len(v) for v in m.pagevecs] == [6, 0]
    host.scan(1)
    assert [len(v) for v in m.pagevecs] == [0, 0]
    assert ksm_counts(host) == (0, 0, 0, 6)
    host.scan(1)
    assert ksm_counts(host) == (1, 5, 0, 0)
    a = host.region("a", "r").address
    [page] = _pages(host.proc("a").mm, a, 1)
    assert PageKsm(page)
