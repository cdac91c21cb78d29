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
from typing import Final

from ksmsim.kernel.contents import ZERO_DATA
from ksmsim.kernel.fork import dup_mm, mmput
from ksmsim.kernel.ksm import Ksm
from ksmsim.kernel.mm import MmStruct, VmArea
from ksmsim.kernel.page import Page, PG_active, PG_locked, PG_lru
from ksmsim.kernel.page_alloc import ReuseOrder, Zone
from ksmsim.kernel.profile import Profile
from ksmsim.kernel.swapfile import reuse_swap_page

NSEC_PER_SEC: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """The simulated hardware: RAM and swap in pages, the timer frequency and CPU count."""

    ram_pages: int = 262144
    swap_pages: int = 0
    hz: int = 250
    cpus: int = 2
    reuse_order: ReuseOrder = "hot"


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
        if self.config.swap_pages:
            raise ValueError("swap devices are not modelled yet: set swap_pages to 0")
        self.profile = profile
        self.zone = Zone(self.config.ram_pages, ZERO_DATA, self.config.reuse_order)
        self.preempt: Callable[[str], None] | None = None
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
        """Allocate a frame for a user or KSM page, or None when memory is exhausted."""
        return self.zone.alloc_page()

    def lru_cache_add_active(self, page: Page) -> None:
        """Put a new anonymous page on the active LRU list: lru_cache_add_lru(LRU_ACTIVE_ANON)."""
        page.flags |= PG_lru | PG_active

    def lock_page(self, page: Page) -> None:
        """Take the page lock, which nobody else can hold in a sequential run: lock_page()."""
        if page.flags & PG_locked:
            raise AssertionError(f"lock_page on a locked page with no other task: {page!r}")
        page.flags |= PG_locked

    def reuse_swap_page(self, page: Page) -> bool:
        """Tell whether a write fault may reuse the page in place: reuse_swap_page()."""
        return reuse_swap_page(page)

    def ksm_might_unmap_zero_page(self, mm: MmStruct, pte: int) -> None:
        """Uncount a KSM-placed zero page whose pte is going: ksm_might_unmap_zero_page()."""
        if self.ksm is not None:
            self.ksm.ksm_might_unmap_zero_page(mm, pte)

    def oom_event(self, mm: MmStruct, address: int) -> None:
        """Record an allocation failure that nothing could be reclaimed for."""
        self.oom_events.append(OomEvent(self.clock_ns, mm.pid, mm.name, address))

    # Swap and migration entries need a swap device or a migration in progress, neither of
    # which exists yet; meeting one means the page tables are corrupt.
    def do_swap_page(self, vma: VmArea, address: int, pte: int, write: bool) -> int:
        """Fault a page back from swap: do_swap_page()."""
        raise AssertionError(f"swap entry {pte:#x} at {address:#x} on a machine without swap")

    def free_swap_and_cache(self, pte: int) -> None:
        """Release the swap slot a zapped pte referred to: free_swap_and_cache()."""
        raise AssertionError(f"swap entry {pte:#x} on a machine without swap")

    def swap_peek(self, pte: int) -> bytes:
        """Return the contents stored in the swap slot a pte refers to."""
        raise AssertionError(f"swap entry {pte:#x} on a machine without swap")

    def swap_duplicate(self, pte: int) -> None:
        """Count another reference to a swap slot (fork): swap_duplicate()."""
        raise AssertionError(f"swap entry {pte:#x} on a machine without swap")

    def wait_migration_entry(self, vma: VmArea, address: int, pte: int) -> int:
        """Wait for a migration to finish: migration_entry_wait()."""
        raise AssertionError(f"migration entry {pte:#x} at {address:#x} with no migration running")

    def zap_migration_entry(self, mm: MmStruct, address: int, pte: int) -> None:
        """Drop a migration entry while zapping."""
        raise AssertionError(f"migration entry {pte:#x} at {address:#x} with no migration running")

    # -- statistics ------------------------------------------------------------------------------
    def memory_stats(self) -> dict[str, int]:
        """Return the memory figures a result snapshot records."""
        zone = self.zone
        ksm_pages = sum(1 for p in zone.allocated_pages() if p.mapping_flags == 3)
        stats = {
            "free_pages": zone.nr_free,
            "anon_pages": self.nr_anon_pages,
            "ksm_pages": ksm_pages,
            "swap_cache_pages": 0,
            "swap_used_pages": 0,
            "pages_swapped_out": 0,
            "oom_events": len(self.oom_events),
        }
        if self.profile.scan_statistics:
            stats["cow_ksm"] = self.vmstat["cow_ksm"]
        return stats
