"""The kinds of task a race runs: ksmd, user processes, the sysfs writer, kswapd and a migrator.

Each builder returns the body of one task, a plain callable that drives ordinary kernel code
(the same functions sequential runs call) and takes the locks the kernel takes at the boundary
it models: ksmd holds ksm_thread_mutex for each batch, as ksm_scan_thread() does; a write to
``run`` holds it as run_store() does; a user operation holds its process's mmap_sem for reading
(faults) or writing (mmap, munmap, madvise, fork), as the system calls do. A user operation also
holds a reference on its process's mm (mm_users), as a thread inside the process does, so an
exit by another task tears the address space down only when the operation is over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ksmsim.kernel.fork import mmput
from ksmsim.kernel.ksm import KSM_RUN_MERGE, KSM_RUN_UNMERGE
from ksmsim.kernel.ksm_sysfs import SysfsError
from ksmsim.kernel.memory import FaultError
from ksmsim.kernel.migrate import migrate_range
from ksmsim.kernel.mm import pte_pfn, pte_present, pte_special
from ksmsim.kernel.mmap import MmapError
from ksmsim.kernel.page import PageKsm
from ksmsim.sched.scheduler import Scheduler, Task, TaskAssertion
from ksmsim.workload import scenario as sc
from ksmsim.workload.host import Host, HostError

if TYPE_CHECKING:
    from ksmsim.kernel.mm import MmStruct


@dataclass(slots=True)
class World:
    """One run's machine: the host built by the race's setup, and its scheduler."""

    host: Host
    sched: Scheduler


Body = Callable[[], None]


def ksmd_body(world: World, full_scans: int | None, batches: int | None) -> Body:
    """Return ksmd's loop: ksm_scan_thread() (2.6.33), until ``full_scans`` more passes have
    completed or ``batches`` batches have run; it sleeps while ksmd_should_run() is false."""
    ksm = world.host.ksm
    sched = world.sched
    mutex = sched.locks.ksm_thread_mutex

    def body() -> None:
        target = ksm.ksm_scan.seqnr + (full_scans or 0)
        done = 0
        while True:
            if full_scans is not None and ksm.ksm_scan.seqnr >= target:
                return
            if batches is not None and done >= batches:
                return
            sched.wait("ksm_thread_wait", ksm.ksmd_should_run)
            mutex.lock()
            try:
                if ksm.ksmd_should_run():
                    sched.running().doing = f"batch {done + 1}"
                    ksm.ksm_do_scan(ksm.ksm_thread_pages_to_scan)
                    done += 1
            finally:
                mutex.unlock()
            sched.yield_point("ksm_scan_thread:schedule_timeout")

    return body


def sysfs_body(world: World, writes: tuple[tuple[str, int], ...]) -> Body:
    """Return a writer of /sys/kernel/mm/ksm files. ``run`` is written under ksm_thread_mutex
    (run_store()); a completed ``run=2`` must leave no KSM page mapped, as the file promises
    ("stop ksmd and unmerge all pages currently merged")."""
    host = world.host
    sched = world.sched
    mutex = sched.locks.ksm_thread_mutex

    def body() -> None:
        task = sched.running()
        for name, value in writes:
            task.doing = f"echo {value} > {name}"
            if name != "run":
                host.sysfs.write(name, value)
                continue
            mutex.lock()
            try:
                host.sysfs.write("run", value)
            except SysfsError as exc:
                task.notes.append(str(exc))
                continue
            finally:
                mutex.unlock()
            if value & KSM_RUN_UNMERGE and not host.ksm.ksm_run & KSM_RUN_MERGE:
                _check_nothing_merged(host)
            sched.yield_point("sysfs:write_done")

    return body


def _check_nothing_merged(host: Host) -> None:
    zone = host.machine.zone
    for mm in host.machine.tasks.values():
        for address, pte in mm.all_ptes():
            if pte_present(pte) and not pte_special(pte):
                page = zone.mem_map[pte_pfn(pte)]
                if page is not None and PageKsm(page):
                    raise TaskAssertion(
                        f"run=2 completed but {mm.name} still maps KSM page pfn {page.pfn} "
                        f"at {address:#x}"
                    )


def kswapd_body(world: World, rounds: int) -> Body:
    """Return kswapd: ``rounds`` times, balance the zone if an allocation woke it
    (balance_pgdat())."""
    machine = world.host.machine
    sched = world.sched

    def body() -> None:
        for _ in range(rounds):
            sched.wait("kswapd_wait", lambda: machine.kswapd_wanted)
            machine.kswapd()
            sched.yield_point("kswapd:balance_pgdat")

    return body


def migrate_body(world: World, proc: str, region: str, start: int, count: int | None) -> Body:
    """Return a migrator moving the present pages of a range, as migrate_pages(2) does (with
    the process's mmap_sem held for reading)."""
    host = world.host
    sched = world.sched

    def body() -> None:
        task = sched.running()
        try:
            p = host.proc(proc)
            r = host.region(proc, region)
        except HostError as exc:
            task.notes.append(str(exc))
            return
        mm = p.mm
        end = r.pages if count is None else min(r.pages, start + count)
        sem = sched.locks.mmap_sem(mm)
        sem.down_read()
        try:
            pages = []
            for i in range(start, end):
                pte = mm.pte_get(r.page_address(i))
                if pte_present(pte) and not pte_special(pte):
                    pages.append(host.machine.zone.pfn_to_page(pte_pfn(pte)))
            task.doing = f"migrate {proc}.{region}[{start}:{end}]"
            out = migrate_range(host.machine, pages)
            task.notes.append(f"migrate: {out}")
        finally:
            sem.up_read()

    return body


USER_OPS = frozenset({"fill", "write", "read", "mmap", "munmap", "madvise", "fork", "exit"})
"""Scenario actions a user task can perform (``comment`` is allowed and does nothing)."""


def user_body(world: World, actions: tuple[sc.AnyAction, ...]) -> Body:
    """Return a user task performing scenario actions one after another. An action on a
    process another task made exit is skipped with a note, as a failed system call."""
    sched = world.sched

    def body() -> None:
        task = sched.running()
        for action in actions:
            if isinstance(action, sc.Comment):
                continue
            for proc in _procs(world.host, action):
                try:
                    _user_op(world, task, proc, action)
                except (HostError, MmapError, FaultError) as exc:
                    task.notes.append(f"{action.path}: {exc}")
                finally:
                    task.current_mm = None

    return body


def _procs(host: Host, action: sc.AnyAction) -> list[str]:
    sel = getattr(action, "proc", sc.ALL)
    if isinstance(sel, str):
        return [sel]
    return list(host.procs) if sel is sc.ALL else list(sel)


def _regions(host: Host, proc: str, sel: sc.Selector) -> list[str]:
    return list(host.proc(proc).regions) if sel is sc.ALL else list(sel)


def _user_op(world: World, task: Task, proc: str, action: sc.AnyAction) -> None:
    """Perform one action on one process, with its mm pinned and mmap_sem held."""
    host = world.host
    mm = host.proc(proc).mm
    task.current_mm = mm
    task.doing = f"{action.op} {proc}"
    if isinstance(action, sc.Exit):
        # exit_mm(): the process's last reference goes; __ksm_exit's down_write/up_write
        # on mmap_sem waits out ksmd (the scheduler's __ksm_exit:mmap_sem_write point).
        host.exit(proc)
        return
    write = isinstance(action, sc.Mmap | sc.Munmap | sc.Fork) or (
        isinstance(action, sc.Madvise) and action.advice != "dontneed"
    )
    sem = world.sched.locks.mmap_sem(mm)
    mm.mm_users += 1
    (sem.down_write if write else sem.down_read)()
    try:
        _dispatch(host, task, proc, action)
    finally:
        (sem.up_write if write else sem.up_read)()
        _mm_release(mm)


def _mm_release(mm: MmStruct) -> None:
    """Drop the operation's mm reference; the last one tears the address space down."""
    mmput(mm)


def _dispatch(host: Host, task: Task, proc: str, a: sc.AnyAction) -> None:
    if isinstance(a, sc.Fill):
        for region in _regions(host, proc, a.region):
            task.doing = f"fill {proc}.{region}"
            host.fill(proc, region, a.pattern, start=a.start, count=a.count, salt=a.salt)
    elif isinstance(a, sc.Write):
        for region in _regions(host, proc, a.region):
            task.doing = f"write {proc}.{region}[{a.start}]"
            host.write(
                proc,
                region,
                a.value,
                offset=a.offset,
                start=a.start,
                count=a.count,
                stride=a.stride,
            )
    elif isinstance(a, sc.Read):
        for region in _regions(host, proc, a.region):
            task.doing = f"read {proc}.{region}"
            host.read(proc, region, start=a.start, count=a.count)
    elif isinstance(a, sc.Mmap):
        r = a.region
        task.doing = f"mmap {proc}.{r.name}"
        host.mmap(proc, r.name, r.pages, mergeable=r.mergeable, thp=r.thp)
        if r.fill is not None:
            host.fill(proc, r.name, r.fill, salt=r.salt)
    elif isinstance(a, sc.Munmap):
        for region in _regions(host, proc, a.region):
            task.doing = f"munmap {proc}.{region}"
            host.munmap(proc, region, start=a.start, count=a.count)
    elif isinstance(a, sc.Madvise):
        for region in _regions(host, proc, a.region):
            task.doing = f"madvise {proc}.{region} {a.advice}"
            host.madvise(proc, region, a.advice, start=a.start, count=a.count)
    elif isinstance(a, sc.Fork):
        task.doing = f"fork {proc} -> {a.child}"
        host.fork(proc, a.child)
    else:
        raise AssertionError(f"{a.op} is not a user-task action")
