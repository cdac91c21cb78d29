"""Helpers shared by the kernel and conformance tests: small machines and hosts, the page a pte
maps, reclaim of one chosen page, KSM's counters, and ksmd one page at a time.

Machine-level helpers build on ``Machine`` directly (every fault an explicit call); host-level
ones on ``Host``, with one-page regions named ``r`` as the KSM tests use them.
"""

from __future__ import annotations

from ksmsim.kernel.ksm import StableNode
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.memory import write_user_bytes
from ksmsim.kernel.mm import MmStruct, pte_pfn, pte_present
from ksmsim.kernel.mmap import do_mmap_anon
from ksmsim.kernel.page import PAGE_SIZE, Page, page_stable_node
from ksmsim.kernel.profile import KEYHOLE
from ksmsim.kernel.vmscan import page_referenced, shrink_page_list
from ksmsim.workload.host import Host

P = PAGE_SIZE

Counts = tuple[int, int, int, int]


# -- machines ----------------------------------------------------------------------------------


def filled(byte: int) -> bytes:
    """Return a page of ``byte`` repeated."""
    return bytes([byte]) * PAGE_SIZE


def small_machine(*, ram: int = 128, swap: int = 16) -> Machine:
    """Return a keyhole machine with ``ram`` frames and ``swap`` slots.

    With 128 frames the min watermark is 32 (min_free_kbytes clamps at 128 KiB), so up to 96
    allocations never reach reclaim and a test drives every step with one explicit call.
    """
    return Machine(KEYHOLE, MachineConfig(ram_pages=ram, swap_pages=swap))


def process_with_pages(m: Machine, name: str, pages: list[int]) -> tuple[MmStruct, int]:
    """Start a process with one area whose pages hold the given bytes (one full page each);
    return its mm and the area's address."""
    mm = m.new_process(name)
    addr = do_mmap_anon(mm, len(pages) * P)
    for i, byte in enumerate(pages):
        write_user_bytes(mm, addr + i * P, filled(byte))
    return mm, addr


def mapped_page(mm: MmStruct, addr: int) -> Page:
    """Return the frame a present pte maps at ``addr``."""
    pte = mm.pte_get(addr)
    assert pte_present(pte), f"{pte:#x} at {addr:#x} is not present"
    page = mm.machine.zone.mem_map[pte_pfn(pte)]
    assert page is not None
    return page


def reclaim_one(m: Machine, page: Page) -> int:
    """Age one page and reclaim it alone, as reclaim does once the page is old: clear its young
    bits, isolate it (a reference) and hand it to shrink_page_list; return the pages freed."""
    page_referenced(m, page)
    m.lru.remove(page)
    page.count += 1  # reclaim's isolation reference
    return shrink_page_list(m, [page])


# -- hosts and KSM -------------------------------------------------------------------------------


def ksm_counts(host: Host) -> Counts:
    """Return (pages_shared, pages_sharing, pages_unshared, pages_volatile)."""
    c = host.counters()
    return c["pages_shared"], c["pages_sharing"], c["pages_unshared"], c["pages_volatile"]


def add_process(host: Host, name: str, fill: int | None) -> None:
    """Start a process with a one-page mergeable region ``r``, filled if ``fill`` is given."""
    host.spawn(name)
    host.mmap(name, "r", 1)
    if fill is not None:
        host.fill(name, "r", fill)


def merged_host(kernel: str, names: str, fill: int, *, swap: int = 64, check: bool = True) -> Host:
    """Return a host (200 frames, ``swap`` slots) where each process of ``names`` has one page
    of ``fill``, merged by two passes into one KSM page: shared 1, sharing len(names) - 1."""
    host = Host(kernel, ram_pages=200, swap_pages=swap, check=check)
    for name in names:
        add_process(host, name, fill)
    assert host.scan(2)
    assert ksm_counts(host) == (1, len(names) - 1, 0, 0)
    return host


def region_page(host: Host, proc: str) -> Page:
    """Return the frame mapped at the first page of ``proc``'s region ``r``."""
    return mapped_page(host.proc(proc).mm, host.region(proc, "r").address)


def stable_node(page: Page) -> StableNode:
    """Return a KSM page's stable node, which must be there."""
    node = page_stable_node(page)
    assert isinstance(node, StableNode)
    return node


def single_page_batches(host: Host, n: int) -> list[Counts]:
    """Run ``n`` ksmd batches of one page each; return the counters after each."""
    host.set_tunable("pages_to_scan", 1)
    host.sysfs.write("run", 1)
    out = []
    for _ in range(n):
        host.ksmd.batch()
        out.append(ksm_counts(host))
    host.sysfs.write("run", 0)
    return out
