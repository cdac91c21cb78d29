"""The kernel selftests' KSM cases that apply to the keyhole commit (tools/testing/selftests/mm).

ksm_tests.c: -M (merge), -U (unmerge by writing), -Z with use_zero_pages=0 (this commit has no
use_zero_pages, so zero pages merge like any other); ksm_functional_tests.c: test_unmerge and
test_unmerge_discarded, whose criterion is that no two virtual pages map the same frame.
"""

from __future__ import annotations

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.mm import pte_pfn, pte_present
from ksmsim.workload.host import Host

TWO_MIB_PAGES = 512


def merged_host(pages: int, value: int, scans: int = 2) -> Host:
    host = Host("keyhole", ram_pages=8192, check=True)
    host.set_tunable("pages_to_scan", pages)
    host.set_tunable("sleep_millisecs", 0)
    host.spawn("t")
    host.mmap("t", "r", pages)
    host.fill("t", "r", value)
    assert host.scan(scans)
    return host


def range_maps_duplicates(host: Host) -> bool:
    """Tell whether two virtual pages of the region map the same frame (the pagemap check)."""
    proc = host.proc("t")
    r = proc.regions["r"]
    pfns = []
    for i in range(r.pages):
        pte = proc.mm.pte_get(r.page_address(i))
        if pte_present(pte):
            pfns.append(pte_pfn(pte))
    return len(pfns) != len(set(pfns))


def test_check_ksm_merge() -> None:
    host = merged_host(10, ord("*"))
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"]) == (1, 9)


def test_check_ksm_unmerge() -> None:
    host = merged_host(2, ord("*"))
    host.write("t", "r", ord("-"), offset=0, start=0, count=1)
    host.write("t", "r", ord("+"), offset=0, start=1, count=1)
    assert host.scan(1)
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"]) == (0, 0)


def test_check_ksm_zero_page_merge_without_use_zero_pages() -> None:
    host = merged_host(10, 0)
    c = host.counters()
    assert (c["pages_shared"], c["pages_sharing"]) == (1, 9)


def test_unmerge() -> None:
    host = merged_host(TWO_MIB_PAGES, 0xCF)
    assert range_maps_duplicates(host)
    host.madvise("t", "r", "unmergeable")
    assert not range_maps_duplicates(host)
    check_all(host.machine)


def test_unmerge_discarded() -> None:
    host = merged_host(TWO_MIB_PAGES, 0xCF)
    host.madvise("t", "r", "dontneed", count=TWO_MIB_PAGES // 2)
    host.madvise("t", "r", "unmergeable")
    assert not range_maps_duplicates(host)
    check_all(host.machine)
