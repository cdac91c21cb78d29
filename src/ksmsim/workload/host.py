"""A simulated host driven the way a scenario drives a real one: named processes and regions.

``Host`` is the Python face of the model: it builds a machine for a kernel profile, tracks
each process's named regions (with their addresses), and offers the operations of the
scenario format (fill, write, read, mmap, munmap, madvise, fork, exit, scan, unmerge, set,
digest) plus the counters a snapshot records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ksmsim.kernel.ksm import KSM_RUN_MERGE, KSM_RUN_STOP, KSM_RUN_UNMERGE
from ksmsim.kernel.ksm_sysfs import KsmSysfs
from ksmsim.kernel.ksmd import Ksmd, KsmdCost
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.madvise import ADVICE_NAMES, MADV_MERGEABLE, MADV_NOHUGEPAGE, do_madvise
from ksmsim.kernel.memory import FaultError, peek_user_page, read_user_byte, write_user_bytes
from ksmsim.kernel.mm import MMF_VM_MERGE_ANY, MmStruct, pte_pfn, pte_present, pte_special
from ksmsim.kernel.mmap import do_mmap_anon, do_munmap
from ksmsim.kernel.page import PAGE_SHIFT, PAGE_SIZE
from ksmsim.kernel.profile import Profile, get_profile
from ksmsim.workload.fill_batch import write_pattern
from ksmsim.workload.patterns import Pattern, page_bytes
from ksmsim.workload.scenario import GLOBAL_COUNTERS


class HostError(ValueError):
    """An operation that names something the host does not have (a process, a region)."""


@dataclass(slots=True)
class RegionMap:
    """A named region of a process: where it was mapped and how many pages it spans."""

    name: str
    address: int
    pages: int

    def page_address(self, index: int) -> int:
        """Return the virtual address of page ``index`` of the region."""
        return self.address + (index << PAGE_SHIFT)


@dataclass(slots=True)
class Proc:
    """A process of the host: its mm and its named regions, in mapping order."""

    name: str
    mm: MmStruct
    regions: dict[str, RegionMap] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.mm.pid


class Host:
    """A simulated Linux host running one kernel profile."""

    def __init__(
        self,
        kernel: str | Profile = "keyhole",
        *,
        ram_pages: int = 262144,
        swap_pages: int = 0,
        hz: int = 250,
        cpus: int = 2,
        cost: KsmdCost | None = None,
        check: bool = False,
        lru_pagevec: bool = False,
    ) -> None:
        self.profile = kernel if isinstance(kernel, Profile) else get_profile(kernel)
        self.machine = Machine(
            self.profile,
            MachineConfig(
                ram_pages=ram_pages,
                swap_pages=swap_pages,
                hz=hz,
                cpus=cpus,
                lru_pagevec=lru_pagevec,
            ),
        )
        assert self.machine.ksm is not None
        self.ksm = self.machine.ksm
        self.sysfs = KsmSysfs(self.ksm)
        self.ksmd = Ksmd(self.machine, cost)
        self.procs: dict[str, Proc] = {}
        self.exited: set[str] = set()
        self._pressure: MmStruct | None = None
        self._pressure_regions = 0
        self.check = check
        """Run every invariant check after each operation (slow; for tests)."""
        self.kswapd_between_operations = True
        """Let kswapd reclaim after each operation, as sequential runs do; a race with a
        kswapd task turns this off so that only that task (and direct reclaim) reclaims."""

    # -- processes and regions -------------------------------------------------------------------
    def proc(self, name: str) -> Proc:
        """Return the live process called ``name``."""
        proc = self.procs.get(name)
        if proc is None:
            state = "has exited" if name in self.exited else "does not exist"
            raise HostError(f"process {name!r} {state}")
        return proc

    def region(self, proc: str, region: str) -> RegionMap:
        """Return a process's region by name."""
        p = self.proc(proc)
        r = p.regions.get(region)
        if r is None:
            raise HostError(f"process {proc!r} has no region {region!r}")
        return r

    def spawn(self, name: str) -> Proc:
        """Start a process with an empty address space."""
        if name in self.procs or name in self.exited:
            raise HostError(f"process name {name!r} already used")
        proc = Proc(name, self.machine.new_process(name))
        self.procs[name] = proc
        return proc

    def mmap(
        self, proc: str, region: str, pages: int, *, mergeable: bool = True, thp: bool = False
    ) -> RegionMap:
        """Map an anonymous private region and, if asked, madvise it mergeable."""
        p = self.proc(proc)
        if region in p.regions:
            raise HostError(f"process {proc!r} already has a region {region!r}")
        if pages < 1:
            raise HostError(f"region {region!r} must have at least one page, not {pages}")
        length = pages << PAGE_SHIFT
        addr = do_mmap_anon(p.mm, length)
        if not thp:
            do_madvise(p.mm, addr, length, MADV_NOHUGEPAGE)
        if mergeable:
            do_madvise(p.mm, addr, length, MADV_MERGEABLE)
        r = RegionMap(region, addr, pages)
        p.regions[region] = r
        self._checkpoint()
        return r

    def fork(self, proc: str, child: str) -> Proc:
        """Fork ``proc``; the child inherits every region at the same addresses."""
        parent = self.proc(proc)
        if child in self.procs or child in self.exited:
            raise HostError(f"process name {child!r} already used")
        mm = self.machine.fork(parent.mm, child)
        p = Proc(
            child, mm, {n: RegionMap(r.name, r.address, r.pages) for n, r in parent.regions.items()}
        )
        self.procs[child] = p
        self._checkpoint()
        return p

    def exit(self, proc: str) -> None:
        """End a process and tear its address space down."""
        p = self.proc(proc)
        self.machine.exit(p.mm)
        del self.procs[proc]
        self.exited.add(proc)
        self._checkpoint()

    # -- memory operations -----------------------------------------------------------------------
    def _pages(self, r: RegionMap, start: int, count: int | None, stride: int = 1) -> range:
        if start < 0 or (count is not None and count < 1) or stride < 1:
            raise HostError(
                f"region {r.name!r}: start must be >= 0, count and stride >= 1 "
                f"(got start={start}, count={count}, stride={stride})"
            )
        if start >= r.pages:
            raise HostError(f"region {r.name!r} has {r.pages} pages; start {start} is past its end")
        end = r.pages if count is None else start + count
        if end > r.pages:
            raise HostError(
                f"region {r.name!r} has {r.pages} pages; {start}+{count} is past its end"
            )
        return range(start, end, stride)

    def _mapped(self, p: Proc, addr: int) -> bool:
        vma = p.mm.find_vma(addr)
        return vma is not None and vma.vm_start <= addr

    def fill(
        self,
        proc: str,
        region: str,
        pattern: Pattern | int | str,
        *,
        start: int = 0,
        count: int | None = None,
        salt: str = "",
    ) -> int:
        """Write a fill pattern over pages of a region (unmapped pages are skipped); return
        how many pages were written."""
        p = self.proc(proc)
        r = self.region(proc, region)
        pages = self._pages(r, start, count)
        # Page by page as write_user_bytes(mm, addr, page_bytes(...)) for each mapped page, in
        # runs (kernel/memory_shortcuts.py, workload/fill_batch.py).
        done = write_pattern(
            p.mm, r.address, pattern, pages.start, len(pages), proc=proc, region=region, salt=salt
        )
        self._checkpoint()
        return done

    def write(
        self,
        proc: str,
        region: str,
        value: int,
        *,
        offset: int = 2048,
        start: int = 0,
        count: int | None = None,
        stride: int = 1,
    ) -> int:
        """Write one byte into each selected mapped page; return how many pages were written."""
        if not 0 <= offset < PAGE_SIZE:
            raise HostError(f"offset {offset} is outside a page")
        if not 0 <= value <= 255:
            raise HostError(f"a written value is one byte (0-255), not {value}")
        p = self.proc(proc)
        r = self.region(proc, region)
        payload = bytes((value,))
        done = 0
        for i in self._pages(r, start, count, stride):
            addr = r.page_address(i)
            if not self._mapped(p, addr):
                continue
            write_user_bytes(p.mm, addr + offset, payload)
            done += 1
        self._checkpoint()
        return done

    def read(self, proc: str, region: str, *, start: int = 0, count: int | None = None) -> int:
        """Read one byte of each selected mapped page; return how many pages were read."""
        p = self.proc(proc)
        r = self.region(proc, region)
        done = 0
        for i in self._pages(r, start, count):
            addr = r.page_address(i)
            if not self._mapped(p, addr):
                continue
            read_user_byte(p.mm, addr)
            done += 1
        self._checkpoint()
        return done

    def munmap(self, proc: str, region: str, *, start: int = 0, count: int | None = None) -> None:
        """Unmap pages of a region (the region keeps its name and range)."""
        p = self.proc(proc)
        r = self.region(proc, region)
        pages = self._pages(r, start, count)
        do_munmap(p.mm, r.page_address(pages.start), len(pages) << PAGE_SHIFT)
        self._checkpoint()

    def madvise(
        self, proc: str, region: str, advice: str, *, start: int = 0, count: int | None = None
    ) -> None:
        """Apply an advice to each mapped run of the selected pages."""
        if advice not in ADVICE_NAMES:
            raise HostError(f"unknown advice {advice!r}")
        p = self.proc(proc)
        r = self.region(proc, region)
        pages = self._pages(r, start, count)
        # Apply to each mapped run, as the format says, so holes are not errors.
        run_start: int | None = None
        for i in [*pages, None]:
            mapped = i is not None and self._mapped(p, r.page_address(i))
            if mapped and run_start is None:
                run_start = i
            elif not mapped and run_start is not None:
                end = pages.stop if i is None else i
                do_madvise(
                    p.mm,
                    r.page_address(run_start),
                    (end - run_start) << PAGE_SHIFT,
                    ADVICE_NAMES[advice],
                )
                run_start = None
        self._checkpoint()

    def digest(self, proc: str, region: str) -> str:
        """Return the sha256 of a region's mapped pages, in order (untouched pages read as zeros)."""
        p = self.proc(proc)
        r = self.region(proc, region)
        import hashlib  # here: only digests need it (an import a run does without)

        h = hashlib.sha256()
        for i in range(r.pages):
            data = peek_user_page(p.mm, r.page_address(i))
            if data is not None:
                h.update(data)
        return h.hexdigest()

    # -- KSM ------------------------------------------------------------------------------------
    def set_tunable(self, name: str, value: int) -> None:
        """Write a KSM tunable through sysfs (raises SysfsError as the kernel would refuse)."""
        if name == "run" or name not in self.sysfs.writable():
            raise HostError(f"the {self.profile.name} profile has no tunable {name!r}")
        self.sysfs.write(name, value)

    def scan(self, full_scans: int = 1) -> bool:
        """Run ksmd for exactly ``full_scans`` passes, from a scan boundary to a scan boundary;
        False if it could not (no mm left to scan)."""
        self.sysfs.write("run", KSM_RUN_MERGE)
        try:
            ok = self.ksmd.run_full_scans(full_scans)
        finally:
            self.sysfs.write("run", KSM_RUN_STOP)
        self._checkpoint()
        return ok

    def run(self, seconds: float, sample: Callable[[], None] | None = None) -> None:
        """Let ksmd run at its tunables for ``seconds`` of simulated time (``sample`` is called
        after every batch, for time series)."""
        self.sysfs.write("run", KSM_RUN_MERGE)
        try:
            self.ksmd.run_for(seconds, sample)
        finally:
            self.sysfs.write("run", KSM_RUN_STOP)
        self._checkpoint()

    def pressure(self, pages: int) -> int:
        """Allocate and write ``pages`` pages in a hidden process, so that reclaim must free
        frames; return how many were written before memory ran out (an out-of-memory event is
        recorded then, and the pressure stops)."""
        if self.machine.swap is None:
            raise HostError("pressure needs a swap device (machine.swap_pages)")
        if pages < 1:
            raise HostError(f"pressure needs at least one page, not {pages}")
        if self._pressure is None:
            self._pressure = self.machine.new_process("[pressure]")
        mm = self._pressure
        self._pressure_regions += 1
        region = f"p{self._pressure_regions}"
        addr = do_mmap_anon(mm, pages << PAGE_SHIFT)
        written = 0
        for i in range(pages):
            try:
                write_user_bytes(
                    mm,
                    addr + (i << PAGE_SHIFT),
                    page_bytes("unique", i, proc=mm.name, region=region),
                )
            except FaultError:
                break
            written += 1
            if not i % 32 and self.kswapd_between_operations:
                self.machine.kswapd()
        self._checkpoint()
        return written

    def migrate(
        self, proc: str, region: str, *, start: int = 0, count: int | None = None
    ) -> dict[str, int]:
        """Move the present pages of a range to other frames, as compaction does; return the
        outcomes counted by errno name ("ok" for moved pages)."""
        p = self.proc(proc)
        r = self.region(proc, region)
        zone = self.machine.zone
        pages = []
        for i in self._pages(r, start, count):
            pte = p.mm.pte_get(r.page_address(i))
            if pte_present(pte) and not pte_special(pte):
                pages.append(zone.pfn_to_page(pte_pfn(pte)))
        from ksmsim.kernel.migrate import migrate_range  # here: few runs migrate

        out = migrate_range(self.machine, pages)
        self._checkpoint()
        return out

    def unmerge_all(self) -> None:
        """Write run=2 then run=0: unmerge everything and forget every rmap_item."""
        self.sysfs.write("run", KSM_RUN_UNMERGE)
        self.sysfs.write("run", KSM_RUN_STOP)
        self._checkpoint()

    # -- observation ----------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Return the profile's global KSM counters (as the sysfs files read) and ``run``."""
        files = set(self.sysfs.files())
        out: dict[str, int] = {
            name: self.sysfs.read_int(name)
            for name in GLOBAL_COUNTERS
            if name in files and name != "run"
        }
        out["run"] = self.sysfs.read_int("run")
        return out

    def proc_counters(self) -> dict[str, dict[str, int | str]]:
        """Return each live process's /proc/PID/ksm_stat, for profiles that have it."""
        if not self.profile.scan_statistics:
            return {}
        ksm = self.ksm
        out: dict[str, dict[str, int | str]] = {}
        for name, p in self.procs.items():
            mm = p.mm
            out[name] = {
                "ksm_rmap_items": mm.ksm_rmap_items,
                "ksm_zero_pages": mm.ksm_zero_pages,
                "ksm_merging_pages": mm.ksm_merging_pages,
                "ksm_process_profit": ksm.ksm_process_profit(mm),
                "ksm_merge_any": "yes" if mm.flags & MMF_VM_MERGE_ANY else "no",
                "ksm_mergeable": "yes" if ksm.ksm_process_mergeable(mm) else "no",
            }
        return out

    def prctl_memory_merge(self, proc: str, enable: bool) -> None:
        """prctl(PR_SET_MEMORY_MERGE, enable): merge every compatible area of the process."""
        if not self.profile.merge_any:
            raise HostError(f"the {self.profile.name} profile has no PR_SET_MEMORY_MERGE")
        mm = self.proc(proc).mm
        err = self.ksm.ksm_enable_merge_any(mm) if enable else self.ksm.ksm_disable_merge_any(mm)
        if err:
            raise HostError(f"PR_SET_MEMORY_MERGE failed with {err}")
        self._checkpoint()

    def memory(self) -> dict[str, int]:
        """Return the memory figures of a snapshot."""
        return self.machine.memory_stats()

    @property
    def sim_time_s(self) -> float:
        """Return the simulated time in seconds."""
        return self.machine.clock_ns / 1e9

    def _checkpoint(self) -> None:
        if self.kswapd_between_operations:
            self.machine.kswapd()
        if self.check:
            from ksmsim.kernel.invariants import check_all  # here: only checked runs need it

            check_all(self.machine)
