"""The simulated host: RAM, processes, KSM and one simulated clock.

``Machine`` gathers what the kernel keeps in globals (the zone, vmstat counters, the task list,
ksm's state) and the hooks other subsystems plug into. ``preempt`` is the concurrency hook:
None in sequential runs (the kernel paths test it and move on), a task switch under the
interleaving explorer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Final

from ksmsim.kernel import ksm_shortcuts
from ksmsim.kernel.contents import ZERO_DATA
from ksmsim.kernel.fork import dup_mm, mmput
from ksmsim.kernel.ksm import Ksm
from ksmsim.kernel.mm import MmStruct, VmArea
from ksmsim.kernel.page import PAGE_MAPPING_FLAGS, PAGE_SHIFT, Page, PG_active, PG_locked, PG_lru
from ksmsim.kernel.page_alloc import ReuseOrder, Zone
from ksmsim.kernel.profile import Profile
from ksmsim.kernel.swapfile import SwapInfo, free_swap_and_cache, reuse_swap_page
from ksmsim.kernel.vmscan import Lru, balance_pgdat, try_to_free_pages, watermarks

NSEC_PER_SEC: Final = 1_000_000_000
PAGEVEC_SIZE: Final = 14


def count_ksm_frames(mem_map: list[Page | None], stop: int, *, c_helpers: bool) -> int:
    """Return how many of the frames mem_map[1:stop] are allocated KSM pages: the KSM pages
    among zone.allocated_pages(), counted without building that list.

    A sample of memory reads every frame; with ``c_helpers`` the loop is C
    (``count_ksm_frames`` of ksmsim._speedups, on the C frame base), this its twin.
    """
    count_c = ksm_shortcuts.count_ksm_frames_c
    if c_helpers and count_c is not None:
        return count_c(mem_map, 1, stop, PAGE_MAPPING_FLAGS)
    # The flags first: most frames are not KSM pages.
    return sum(
        1
        for p in islice(mem_map, 1, stop)
        if p is not None and p.mapping_flags == PAGE_MAPPING_FLAGS and p.count > 0
    )


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """The simulated hardware: RAM and swap in pages, the timer frequency and CPU count."""

    ram_pages: int = 262144
    swap_pages: int = 0
    hz: int = 250
    cpus: int = 2
    reuse_order: ReuseOrder = "hot"
    lru_pagevec: bool = False
    """Model the per-CPU LRU add buffers of 2.6.33 (notes 11.1): a new page keeps an extra
    reference until 14 pages have been added on its CPU (a profile without lru_add_drain_all
    only; 6.x drains them at every pass start)."""


@dataclass(slots=True)
class OomEvent:
    """An allocation that found no free frame and nothing to reclaim."""

    time_ns: int
    pid: int
    name: str
    address: int


class Machine:
    """A Linux host: one zone of RAM, the processes' address spaces, and KSM."""

    def __init__(self, profile: Profile, config: MachineConfig | None = None) -> None:
        self.config = config or MachineConfig()
        self.profile = profile
        self.zone = Zone(self.config.ram_pages, ZERO_DATA, self.config.reuse_order)
        self.zone.on_free = self._page_freed
        self.swap: SwapInfo | None = (
            SwapInfo(self.config.swap_pages) if self.config.swap_pages else None
        )
        self.swap_cache: dict[int, Page] = {}
        self.lru = Lru()
        self.watermarks = watermarks(self.config.ram_pages)
        self.kswapd_wanted = False
        self.pagevecs: list[list[Page]] = [[] for _ in range(self.config.cpus)]
        self.current_cpu = 0
        self._released: set[Page] = set()
        self.ksm_unmapped_at: dict[Page, int] = {}
        """When reclaim last unmapped each KSM page still in memory (ns)."""
        self.ksm_free_delays_ns: list[int] = []
        """For each KSM page freed after reclaim unmapped it: the delay to its freeing."""
        self.ksm_release_delays_ns: list[int] = []
        """For each KSM page reclaim unmapped: the delay until nothing but reclaim could hold
        it (its freeing, or with a pinned stable node, the pin's release by ksmd)."""
        self.preempt: Callable[[str], None] | None = None
        self.wait: Callable[[str, Callable[[], bool]], None] | None = None
        """The blocking hook: None in sequential runs; under the interleaving explorer
        ``wait(what, ready)`` puts the calling task to sleep until ``ready()`` holds."""
        self.clock_ns = 0
        self.nr_anon_pages = 0
        self.vmstat: Counter[str] = Counter()
        self.oom_events: list[OomEvent] = []
        self.tasks: dict[int, MmStruct] = {}
        self._next_pid = 1000
        self.ksm: Ksm | None = Ksm(self, profile)

    # -- processes -------------------------------------------------------------------------------
    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def new_process(self, name: str) -> MmStruct:
        """Create a process with an empty address space (as after exec) and return its mm."""
        mm = MmStruct(self, self._pid(), name)
        self.tasks[mm.pid] = mm
        return mm

    def fork(self, parent: MmStruct, name: str) -> MmStruct:
        """Fork ``parent``; the child shares every page copy-on-write. Return the child's mm."""
        if parent.pid not in self.tasks:
            raise ValueError(f"process {parent.name} has exited")
        mm = dup_mm(self, parent, self._pid(), name)
        self.tasks[mm.pid] = mm
        return mm

    def exit(self, mm: MmStruct) -> None:
        """End a process: its address space is torn down (KSM hears of it first)."""
        if self.tasks.pop(mm.pid, None) is None:
            raise ValueError(f"process {mm.name} has already exited")
        mmput(mm)

    # -- memory ----------------------------------------------------------------------------------
    def alloc_page(self) -> Page | None:
        """Allocate a frame for a user or KSM page, reclaiming directly when free memory is at
        the min watermark and waking kswapd below the low one; None when nothing can be
        reclaimed (the caller reports the out-of-memory event): __alloc_pages()."""
        zone = self.zone
        wmin, low, _high = self.watermarks
        can_reclaim = self.swap is not None
        if zone.nr_free <= wmin and can_reclaim:
            try_to_free_pages(self)
        page = zone.alloc_page()
        retries = 8
        while page is None and can_reclaim and retries:
            retries -= 1
            if not try_to_free_pages(self):
                break
            page = zone.alloc_page()
        if zone.nr_free < low and can_reclaim:
            self.kswapd_wanted = True
        return page

    def kswapd(self) -> int:
        """Let kswapd reclaim to the high watermark if an allocation woke it; return how many
        pages it freed. kswapd runs between operations and between ksmd's batches."""
        if not self.kswapd_wanted:
            return 0
        self.kswapd_wanted = False
        return balance_pgdat(self)

    def lru_cache_add_active(self, page: Page) -> None:
        """Put a new anonymous page on the active LRU list: lru_cache_add_lru(LRU_ACTIVE_ANON),
        through the CPU's pagevec when those are modelled."""
        self._lru_cache_add(page, active=True)

    def lru_cache_add_inactive(self, page: Page) -> None:
        """Put a page read from swap on the inactive LRU list: lru_cache_add_anon()."""
        self._lru_cache_add(page, active=False)

    def _lru_cache_add(self, page: Page, active: bool) -> None:
        if not self.config.lru_pagevec:
            self.lru.add(page, active)
            return
        pvec = self.pagevecs[self.current_cpu]
        page.count += 1  # the pagevec's reference
        pvec.append(page)
        if active:
            page.flags |= PG_active
        if len(pvec) >= PAGEVEC_SIZE:
            self.lru_add_drain(self.current_cpu)

    def lru_add_drain(self, cpu: int) -> None:
        """Move a CPU's buffered pages onto the LRU, dropping their references: lru_add_drain()."""
        pvec = self.pagevecs[cpu]
        self.pagevecs[cpu] = []
        for page in pvec:
            if page.count > 1:
                self.lru.add(page, bool(page.flags & PG_active))
                page.count -= 1
            else:
                page.count = 1
                self.zone.put_page(page)

    def lru_add_drain_all(self) -> None:
        """Drain every CPU's pagevec: lru_add_drain_all()."""
        for cpu in range(len(self.pagevecs)):
            self.lru_add_drain(cpu)

    def _page_freed(self, page: Page) -> None:
        """Take a freed frame off the LRU and note how long a KSM page took to go."""
        if page.flags & PG_lru:
            self.lru.remove(page)
        unmapped = self.ksm_unmapped_at.pop(page, None)
        if unmapped is not None:
            self.ksm_free_delays_ns.append(self.clock_ns - unmapped)
            if page not in self._released:
                self.ksm_release_delays_ns.append(self.clock_ns - unmapped)
        self._released.discard(page)

    def note_ksm_page_released(self, page: Page) -> None:
        """Record that ksmd dropped its pin on a KSM page reclaim had unmapped."""
        unmapped = self.ksm_unmapped_at.get(page)
        if unmapped is not None and page not in self._released:
            self._released.add(page)
            self.ksm_release_delays_ns.append(self.clock_ns - unmapped)

    def note_ksm_unmapped(self, page: Page) -> None:
        """Record that reclaim just unmapped every pte of a KSM page."""
        self.ksm_unmapped_at[page] = self.clock_ns
        self.vmstat["ksm_pages_unmapped"] += 1

    def lock_page(self, page: Page) -> None:
        """Take the page lock: lock_page(). Nobody else can hold it in a sequential run; under
        the interleaving explorer the task sleeps until its holder unlocks it."""
        if page.flags & PG_locked:
            if self.wait is None:
                raise AssertionError(f"lock_page on a locked page with no other task: {page!r}")
            self.wait("lock_page", lambda: not page.flags & PG_locked)
        page.flags |= PG_locked

    def reuse_swap_page(self, page: Page) -> bool:
        """Tell whether a write fault may reuse the page in place: reuse_swap_page()."""
        return reuse_swap_page(page, self)

    def ksm_might_unmap_zero_page(self, mm: MmStruct, pte: int) -> None:
        """Uncount a KSM-placed zero page whose pte is going: ksm_might_unmap_zero_page()."""
        if self.ksm is not None:
            self.ksm.ksm_might_unmap_zero_page(mm, pte)

    def oom_event(self, mm: MmStruct, address: int) -> None:
        """Record an allocation failure that nothing could be reclaimed for."""
        self.oom_events.append(OomEvent(self.clock_ns, mm.pid, mm.name, address))

    def do_swap_page(self, vma: VmArea, address: int, pte: int, write: bool) -> int:
        """Fault a page back from swap: do_swap_page()."""
        from ksmsim.kernel.memory import do_swap_page

        return do_swap_page(vma, address, pte, write)

    def free_swap_and_cache(self, pte: int) -> None:
        """Release the swap slot a zapped pte referred to: free_swap_and_cache()."""
        free_swap_and_cache(self, pte >> PAGE_SHIFT)

    def swap_peek(self, pte: int) -> bytes:
        """Return the contents a swap pte stands for (the cached page's, else the slot's)."""
        slot = pte >> PAGE_SHIFT
        page = self.swap_cache.get(slot)
        if page is not None and page.data is not None:
            return page.data
        assert self.swap is not None
        return self.swap.data[slot]

    def swap_duplicate(self, pte: int) -> None:
        """Count another reference to a swap slot (fork): swap_duplicate()."""
        assert self.swap is not None
        self.swap.swap_duplicate(pte >> PAGE_SHIFT)

    def wait_migration_entry(self, vma: VmArea, address: int, pte: int) -> int:
        """Wait for a migration to finish: migration_entry_wait(). Under the interleaving
        explorer the task sleeps until the entry is replaced, and the fault is retried."""
        if self.wait is not None:
            mm = vma.vm_mm
            self.wait("migration_entry_wait", lambda: mm.pte_get(address) != pte)
            return 0
        raise AssertionError(f"migration entry {pte:#x} at {address:#x} with no migration running")

    def zap_migration_entry(self, mm: MmStruct, address: int, pte: int) -> None:
        """Drop a migration entry while zapping."""
        raise AssertionError(f"migration entry {pte:#x} at {address:#x} with no migration running")

    # -- statistics ------------------------------------------------------------------------------
    def memory_stats(self) -> dict[str, int]:
        """Return the memory figures a result snapshot records."""
        zone = self.zone
        c_helpers = self.ksm is not None and self.ksm.shortcuts.c_helpers
        ksm_pages = count_ksm_frames(zone.mem_map, zone._fresh, c_helpers=c_helpers)
        stats = {
            "free_pages": zone.nr_free,
            "anon_pages": self.nr_anon_pages,
            "ksm_pages": ksm_pages,
            "swap_cache_pages": len(self.swap_cache),
            "swap_used_pages": self.swap.inuse_pages if self.swap is not None else 0,
            "pages_swapped_out": self.vmstat["pswpout"],
            "oom_events": len(self.oom_events),
        }
        if self.profile.scan_statistics:
            stats["cow_ksm"] = self.vmstat["cow_ksm"]
        return stats
