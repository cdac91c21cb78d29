"""Run a scenario on the running kernel's KSM and produce the result document of the format.

``run_real(scenario)`` executes the timeline with real processes (``children``) holding anonymous
private mappings, driven one command at a time, with ksmd stopped (run=0) except inside ``scan``
and ``run``. Every action has the semantics of the model runner (``ksmsim.workload.runner``) and
the result document has its shape, with ``source: "kernel"`` and a ``scans`` list, so the two
results can be compared snapshot by snapshot.

The kernel is left as it was found, whatever happens: the tunables are saved and a state file is
written before anything changes (``state``), and on success, on error, on SIGINT/SIGTERM/SIGHUP
(which raise ``Interrupted`` so that cleanup runs) the processes are killed, KSM is reset and
the tunables are written back. After a SIGKILL of the runner the next run, or
``ksmsim real --restore`` (``restore_command``), restores from the state file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Final

from ksmsim.real.children import Child, ChildPool, get_subreaper, set_subreaper
from ksmsim.real.errors import ChildFailed, Interrupted, RealError
from ksmsim.real.procfs import (
    PAGE_KB,
    ProcId,
    cpu_seconds,
    find_kthread,
    own_id,
    read_ksm_stat,
    read_meminfo,
    read_vmstat,
    runtime_seconds,
)
from ksmsim.real.state import (
    STATE_NAME,
    RunLock,
    SavedState,
    StateFile,
    recover,
    restore_kernel,
    state_dir,
)
from ksmsim.real.sysfs import (
    RESET_COUNTERS,
    RUN_MERGE,
    RUN_STOP,
    KsmControl,
    KsmWriteError,
)
from ksmsim.workload import scenario as sc
from ksmsim.workload.actions import ActionHandlers, bind_handlers, expectations, initial_tunables
from ksmsim.workload.results import ExpectFailure, check_expectations, result_head

__all__ = ["REFUSED_ACTIONS", "SUPPORTED_ACTIONS", "RealRunner", "restore_command", "run_real"]

REFUSED_ACTIONS: Final[tuple[type[sc.Action], ...]] = (sc.Churn, sc.Pressure, sc.Migrate)
"""Model-only actions: ``validate`` refuses a scenario with one of them, before any change."""

SUPPORTED_ACTIONS: Final = tuple(
    cls for cls in sc.ACTION_TYPES.values() if cls not in REFUSED_ACTIONS
)
"""Actions the real runner executes (churn, pressure and migrate are not supported yet)."""

HANDLED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

DELTA_COUNTERS: Final = ("pages_scanned", "pages_skipped")
"""Global counters recorded as differences from the scenario's start."""

VMSTAT_DELTAS: Final = {
    "pages_swapped_out": "pswpout",
    "oom_events": "oom_kill",
    "cow_ksm": "cow_ksm",
    "ksm_swpin_copy": "ksm_swpin_copy",
}
"""Memory figures taken from /proc/vmstat, as differences from the scenario's start."""


def _stderr(message: str) -> None:
    """Print a notice on stderr."""
    print(message, file=sys.stderr)


class RealRunner(ActionHandlers):
    """Executes one scenario's timeline on the running kernel."""

    def __init__(
        self,
        scenario: sc.Scenario,
        *,
        control: KsmControl | None = None,
        directory: Path | None = None,
        notify: Callable[[str], None] = _stderr,
        poll_interval_s: float = 0.001,
    ) -> None:
        """Prepare a run of ``scenario`` against ``control`` (default: /sys/kernel/mm/ksm).

        ``directory`` holds the lock and state files (default ``state.state_dir()``); ``notify``
        receives notices (a restore of a dead runner's state); ``poll_interval_s`` is how often
        ``full_scans`` is read while ksmd runs.
        """
        self.scenario = scenario
        self.control = control if control is not None else KsmControl()
        self.directory = directory if directory is not None else state_dir()
        self.notify = notify
        self.poll_interval_s = poll_interval_s
        self.release = os.uname().release
        self.pool = ChildPool(on_change=self._children_changed)
        self.state_file = StateFile(self.directory)
        self.saved: dict[str, str] | None = None
        self.me: ProcId | None = None
        self.op_index = -1
        self.snapshots: list[dict[str, Any]] = []
        self.expect_failures: list[ExpectFailure] = []
        self.errors: list[dict[str, Any]] = []
        self.digests: list[dict[str, Any]] = []
        self.scans: list[dict[str, Any]] = []
        self.tables: dict[str, dict[str, dict[str, int]]] = {}
        self.pids: dict[str, int] = {}
        self.gone: list[str] = []
        self.tunables: dict[str, int] = {}
        self.base: dict[str, int] = {}
        self.ksmd_pid: int | None = None
        self.ksmd_base: tuple[float | None, float | None] = (None, None)
        self.t_start = 0.0
        self.t_scenario = 0.0
        self._quiet = False
        self._pending: int | None = None
        self._handlers = bind_handlers(self, REFUSED_ACTIONS)

    # -- checks before anything changes ----------------------------------------------------------
    def preflight(self) -> None:
        """Refuse (RealError) what cannot run here, before touching the kernel."""
        if os.geteuid() != 0:
            raise RealError("ksmsim real needs root: it writes /sys/kernel/mm/ksm and drives ksmd")
        if not self.control.exists():
            raise RealError(
                f"{self.control.root} does not exist: the running kernel has no KSM (CONFIG_KSM)"
            )
        mode = self.control.advisor_mode()
        if mode is not None and mode != "none":
            raise RealError(
                f"KSM's advisor is on (advisor_mode = {mode}): it changes pages_to_scan by "
                f"itself; write none to {self.control.root / 'advisor_mode'} first"
            )
        self.validate()

    def settable(self) -> set[str]:
        """Return the tunables a scenario may set on this kernel."""
        return {
            name
            for name in self.control.writable()
            if name != "run" and not name.startswith("advisor_")
        }

    def validate(self) -> None:
        """Check the whole scenario against this kernel and this runner (RealError if not)."""
        settable = self.settable()
        for name in self.scenario.tunables:
            if name not in settable:
                raise RealError(
                    f"tunables.{name}: the running kernel ({self.release}) has no such tunable"
                )
        have = set(self.control.counters_present()) | {"run"} | set(self._memory())
        own = read_ksm_stat(os.getpid())
        for action in self.scenario.timeline:
            if not isinstance(action, SUPPORTED_ACTIONS):
                raise RealError(
                    f"{action.path}: {action.op!r} is not supported by the real runner yet"
                )
            if isinstance(action, sc.Set):
                for name in action.tunables:
                    if name not in settable:
                        raise RealError(
                            f"{action.path}.tunables.{name}: the running kernel "
                            f"({self.release}) has no such tunable"
                        )
            for exp in expectations(action):
                if exp.scope == "proc":
                    if own is None:
                        raise RealError(
                            f"{action.path}.expect: the running kernel has no "
                            f"/proc/PID/ksm_stat ({exp.key})"
                        )
                    if exp.counter not in own:
                        raise RealError(
                            f"{action.path}.expect: /proc/PID/ksm_stat has no {exp.counter!r}"
                        )
                elif exp.counter not in have:
                    raise RealError(
                        f"{action.path}.expect: the running kernel has no counter {exp.counter!r}"
                    )

    def start_tunables(self) -> dict[str, int]:
        """Return the tunables the run starts with: the format's defaults, then the scenario's."""
        return initial_tunables(self.settable(), self.scenario.tunables)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the scenario and return the result document; the kernel is restored on return.

        Raises RealError (exit status 2) for what cannot run or a fatal error mid-run (with the
        partial result), and Interrupted on SIGINT/SIGTERM/SIGHUP, always after restoring.
        """
        self.t_start = time.perf_counter()
        try:
            self.preflight()
            lock = RunLock(self.directory)
            lock.acquire()
            try:
                message = recover(KsmControl, self.directory)
                if message is not None:
                    self.notify(f"ksmsim: {message}")
                return self._run_locked()
            finally:
                lock.release()
        except OSError as exc:  # anything the system refused that no step turned into a message
            raise RealError(str(exc)) from None

    def _run_locked(self) -> dict[str, Any]:
        """Run with the lock held: save, execute, restore."""
        in_main = threading.current_thread() is threading.main_thread()
        previous: dict[int, Any] = {}
        if in_main:
            for signum in HANDLED_SIGNALS:
                previous[signum] = signal.signal(signum, self._on_signal)
        was_subreaper = get_subreaper()
        try:
            set_subreaper(True)
            self.me = own_id()
            self.saved = self.control.tunable_values()
            self._write_state([])
            try:
                return self._execute()
            finally:
                self._cleanup()
        finally:
            set_subreaper(was_subreaper)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._quiet = False
            if self._pending is not None:
                pending, self._pending = self._pending, None
                raise Interrupted(pending)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Raise Interrupted so that cleanup runs (or remember the signal during cleanup)."""
        if self._quiet:
            self._pending = signum
            return
        raise Interrupted(signum)

    def _write_state(self, children: list[ProcId]) -> None:
        """Write the state file: saved tunables, this runner, the processes to kill."""
        assert self.me is not None and self.saved is not None
        try:
            self.state_file.write(SavedState(self.me, str(self.control.root), self.saved, children))
        except OSError as exc:
            raise RealError(f"cannot write {self.state_file.path}: {exc.strerror}") from None

    def _children_changed(self, children: list[ProcId]) -> None:
        """Keep the state file's list of processes current (best effort during cleanup)."""
        if self._quiet:
            with contextlib.suppress(RealError):
                self._write_state(children)
            return
        self._write_state(children)

    def _cleanup(self) -> None:
        """Kill the processes, reset KSM and write the tunables back (idempotent, signal-safe)."""
        self._quiet = True
        for _ in range(5):
            try:
                problems: list[str] = []
                try:
                    problems += self.pool.kill_all()
                finally:
                    self.pool.close()
                assert self.saved is not None
                problems += restore_kernel(self.control, self.saved, [])
                break
            except Interrupted as exc:  # a signal slipped in before _quiet was seen
                self._pending = exc.signum
            except Exception as exc:  # never leave without trying the rest
                problems = [f"{type(exc).__name__}: {exc}"]
                assert self.saved is not None
                problems += restore_kernel(self.control, self.saved, self.pool.known())
                break
        else:  # pragma: no cover - five signals in a row
            problems = ["interrupted repeatedly"]
        if problems:
            self.notify(
                "ksmsim: warning: restoring KSM was incomplete: "
                f"{'; '.join(problems)}; run ksmsim real --restore"
            )
        else:
            self.state_file.remove()

    def _execute(self) -> dict[str, Any]:
        """Reset KSM, apply the tunables, create the processes and run the timeline."""
        try:
            self.control.reset()
        except KsmWriteError as exc:
            raise RealError(f"cannot reset KSM (run=2, run=0): {exc}") from None
        busy = {
            name: self.control.read_int(name)
            for name in RESET_COUNTERS
            if self.control.has(name) and self.control.read_int(name) != 0
        }
        if busy:
            shown = ", ".join(f"{k}={v}" for k, v in busy.items())
            raise RealError(f"KSM is in use by other processes ({shown} after run=2, run=0)")
        self.tunables = {}
        for name, value in self.start_tunables().items():
            try:
                self.control.write(name, value)
            except KsmWriteError as exc:
                raise RealError(f"tunables.{name}: the kernel refused {value}: {exc}") from None
        self.tunables = {name: self.control.read_int(name) for name in self.start_tunables()}
        self.base = {
            name: self.control.read_int(name) for name in DELTA_COUNTERS if self.control.has(name)
        }
        vmstat = read_vmstat()
        self.base.update({key: vmstat.get(src, 0) for key, src in VMSTAT_DELTAS.items()})
        self.ksmd_pid = find_kthread("ksmd")
        self.ksmd_base = self._ksmd_cpu()
        self.t_scenario = time.perf_counter()
        self.pool.open()

        for proc in self.scenario.processes:
            try:
                self.pool.spawn(proc.name)
                self.pids[proc.name] = self.pool.live[proc.name].pid
                self.tables[proc.name] = {}
                for region in proc.regions:
                    self._map_region(proc.name, region)
            except ChildFailed as exc:
                raise self._fatal(f"processes.{proc.name}", str(exc)) from None
            except RealError as exc:
                raise self._fatal(f"processes.{proc.name}", str(exc)) from None
        for index, action in enumerate(self.scenario.timeline):
            self.op_index = index
            handler = self._handlers[type(action)]
            try:
                handler(action)
            except (ChildFailed, KsmWriteError) as exc:
                raise self._fatal(action.path, str(exc)) from None
            except RealError as exc:
                raise self._fatal(action.path, str(exc)) from None
        return self.result()

    def _fatal(self, path: str, message: str) -> RealError:
        """Record a fatal error and return the RealError carrying the partial result."""
        self.errors.append({"path": path, "kind": "error", "message": message, "fatal": True})
        partial = self.result()
        return RealError(f"{path}: {message}", partial)

    # -- observation -----------------------------------------------------------------------------
    def _ksmd_cpu(self) -> tuple[float | None, float | None]:
        """Return ksmd's (utime+stime, scheduler runtime) in seconds, None where unknown."""
        if self.ksmd_pid is None:
            return (None, None)
        return (cpu_seconds(self.ksmd_pid), runtime_seconds(self.ksmd_pid))

    def global_counters(self) -> dict[str, int]:
        """Return the global counters the kernel has, in the format's order, and ``run``."""
        out: dict[str, int] = {}
        for name in sc.GLOBAL_COUNTERS:
            if self.control.has(name):
                value = self.control.read_int(name)
                out[name] = value - self.base.get(name, 0) if name in DELTA_COUNTERS else value
        return out

    def proc_counters(self) -> dict[str, dict[str, int | str]]:
        """Return /proc/PID/ksm_stat of every live process, in creation order."""
        out: dict[str, dict[str, int | str]] = {}
        for name, child in self.pool.live.items():
            stat = read_ksm_stat(child.pid)
            if stat is None:
                continue
            ordered: dict[str, int | str] = {}
            for key in sc.PROC_COUNTERS:
                if key in stat:
                    ordered[key] = stat[key]
            ordered.update({k: v for k, v in stat.items() if k not in ordered})
            out[name] = ordered
        return out

    def _memory(self) -> dict[str, int]:
        """Return the memory figures /proc/meminfo and /proc/vmstat give."""
        info = read_meminfo()
        vmstat = read_vmstat()
        out: dict[str, int] = {}
        for key, field in (
            ("free_pages", "MemFree"),
            ("anon_pages", "AnonPages"),
            ("swap_cache_pages", "SwapCached"),
        ):
            if field in info:
                out[key] = info[field] // PAGE_KB
        if "SwapTotal" in info and "SwapFree" in info:
            out["swap_used_pages"] = (info["SwapTotal"] - info["SwapFree"]) // PAGE_KB
        for key, src in VMSTAT_DELTAS.items():
            if src in vmstat:
                out[key] = vmstat[src] - self.base.get(key, 0)
        return out

    def elapsed(self) -> float:
        """Return the wall seconds since the scenario started."""
        return time.perf_counter() - self.t_scenario if self.t_scenario else 0.0

    def snapshot(self, label: str, expect: tuple[sc.Expectation, ...] = ()) -> dict[str, Any]:
        """Record the counters under ``label`` and check expectations against them."""
        snap: dict[str, Any] = {
            "label": label,
            "after_op": self.op_index,
            "sim_time_s": self.elapsed(),
            "global": self.global_counters(),
            "procs": self.proc_counters(),
            "memory": self._memory(),
        }
        self.snapshots.append(snap)
        self.expect_failures.extend(check_expectations(snap, expect))
        return snap

    def result(self) -> dict[str, Any]:
        """Return the result document for what has run so far."""
        fatal = [e for e in self.errors if e.get("fatal")]
        info = read_meminfo()
        cpu, runtime = self._ksmd_cpu()
        cpu0, runtime0 = self.ksmd_base
        names = [*self.gone, *self.pool.live]
        return {
            **result_head("kernel", self.scenario.name, self.release, dict(self.tunables)),
            "machine": {
                "ram_pages": info.get("MemTotal", 0) // PAGE_KB,
                "swap_pages": info.get("SwapTotal", 0) // PAGE_KB,
                "cpus": os.cpu_count() or 1,
            },
            "processes": {
                name: {"pid": self.pids.get(name), "regions": dict(self.tables.get(name, {}))}
                for name in names
            },
            "snapshots": self.snapshots,
            "digests": self.digests,
            "errors": self.errors,
            "ok": not self.expect_failures and not fatal,
            "expect_failures": [f.to_json() for f in self.expect_failures],
            "ksmd": {
                "pid": self.ksmd_pid,
                "cpu_s": None if cpu is None or cpu0 is None else round(cpu - cpu0, 6),
                "runtime_s": (
                    None if runtime is None or runtime0 is None else round(runtime - runtime0, 9)
                ),
            },
            "scans": self.scans,
            "sim_time_s": self.elapsed(),
            "wall_time_s": time.perf_counter() - self.t_start,
        }

    # -- helpers ---------------------------------------------------------------------------------
    def _child(self, name: str) -> Child:
        """Return the live process ``name`` or fail as Host does."""
        child = self.pool.live.get(name)
        if child is None:
            state = "has exited" if name in self.gone else "does not exist"
            raise ChildFailed(f"process {name!r} {state}")
        return child

    def _procs(self, sel: sc.Selector) -> list[str]:
        """Resolve a process selector: every live process in creation order, or the names."""
        if sel is sc.ALL:
            return list(self.pool.live)
        return list(sel)

    def _regions(self, proc: str, sel: sc.Selector) -> list[str]:
        """Resolve a region selector for a process: its regions in mapping order, or the names."""
        if sel is sc.ALL:
            self._child(proc)
            return list(self.tables[proc])
        return list(sel)

    def _each(self, action: Any) -> Iterator[tuple[Child, str]]:
        """Yield (process, region) for an action's selectors, lazily as the model does."""
        for proc in self._procs(action.proc):
            for region in self._regions(proc, action.region):
                yield self._child(proc), region

    def _map_region(self, proc: str, region: sc.Region) -> None:
        """Map a region in a process (NOHUGEPAGE unless thp, MERGEABLE if asked), then fill."""
        reply = self._child(proc).request(
            {
                "op": "mmap",
                "region": region.name,
                "pages": region.pages,
                "mergeable": region.mergeable,
                "thp": region.thp,
                "fill": None if region.fill is None else region.fill.spec,
                "salt": region.salt,
            }
        )
        self.tables[proc][region.name] = {"address": int(reply["address"]), "pages": region.pages}

    # -- ksmd ------------------------------------------------------------------------------------
    def _run_passes(self, passes: int, a: sc.Scan, record: dict[str, Any]) -> bool:
        """Run ksmd for ``passes`` full scans and stop it at the boundary; False on timeout.

        full_scans is polled while ksmd runs; once it reaches the target, pages_scanned is read,
        run=0 is written (that write takes ksm_thread_mutex, so no batch runs afterwards) and
        both are read again: the stop was exact when neither moved.
        """
        ctl = self.control
        f0 = ctl.read_int("full_scans")
        target = f0 + passes
        seen = f0
        cpu_prev, rt_prev = self._ksmd_cpu()
        t_prev = time.perf_counter()
        timed_out = False
        p1 = -1
        ctl.write("run", RUN_MERGE)
        try:
            deadline = time.monotonic() + a.timeout_s
            while True:
                f = ctl.read_int("full_scans")
                if f >= target:
                    p1 = ctl.read_int("pages_scanned")
                    break
                if f > seen:
                    cpu_prev, rt_prev, t_prev = self._record_passes(
                        record, f - seen, cpu_prev, rt_prev, t_prev
                    )
                    seen = f
                    deadline = time.monotonic() + a.timeout_s
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                time.sleep(self.poll_interval_s)
        finally:
            ctl.write("run", RUN_STOP)
        f2 = ctl.read_int("full_scans")
        p2 = ctl.read_int("pages_scanned")
        if timed_out:
            if f2 > seen:  # a pass ended between the last poll and the stop
                self._record_passes(record, min(f2, target) - seen, cpu_prev, rt_prev, t_prev)
            return False
        self._record_passes(record, target - seen, cpu_prev, rt_prev, t_prev)
        record["exact"].append(f2 == target and p2 == p1)
        return True

    def _record_passes(
        self,
        record: dict[str, Any],
        n: int,
        cpu_prev: float | None,
        rt_prev: float | None,
        t_prev: float,
    ) -> tuple[float | None, float | None, float]:
        """Record ``n`` passes that ended now (ksmd CPU and wall time shared evenly)."""
        cpu, rt = self._ksmd_cpu()
        now = time.perf_counter()
        for _ in range(n):
            record["completed"] += 1
            record["ksmd_cpu_s"].append(
                None if cpu is None or cpu_prev is None else round((cpu - cpu_prev) / n, 6)
            )
            record["ksmd_runtime_s"].append(
                None if rt is None or rt_prev is None else round((rt - rt_prev) / n, 9)
            )
            record["wall_s"].append(round((now - t_prev) / n, 6))
        return cpu, rt, now

    def _scan_timeout(self, a: sc.Scan, record: dict[str, Any]) -> None:
        """Record a scan that could not complete."""
        record["timed_out"] = True
        self.errors.append(
            {
                "path": a.path,
                "kind": "scan_timeout",
                "message": (
                    f"full_scans did not advance for {a.timeout_s:g} s (no mm for ksmd to scan?); "
                    f"{record['completed']} of {a.full_scans} full scans ran"
                ),
                "fatal": not a.allow_timeout,
            }
        )

    # -- actions ---------------------------------------------------------------------------------
    def _fill(self, a: sc.Fill) -> None:
        """Write a fill pattern over the selected ranges."""
        for child, region in self._each(a):
            child.request(
                {
                    "op": "fill",
                    "region": region,
                    "pattern": a.pattern.spec,
                    "start": a.start,
                    "count": a.count,
                    "salt": a.salt,
                }
            )

    def _write(self, a: sc.Write) -> None:
        """Write one byte into every stride-th page of the selected ranges."""
        for child, region in self._each(a):
            child.request(
                {
                    "op": "write",
                    "region": region,
                    "value": a.value,
                    "offset": a.offset,
                    "start": a.start,
                    "count": a.count,
                    "stride": a.stride,
                }
            )

    def _read(self, a: sc.Read) -> None:
        """Read one byte of every page of the selected ranges."""
        for child, region in self._each(a):
            child.request({"op": "read", "region": region, "start": a.start, "count": a.count})

    def _mmap(self, a: sc.Mmap) -> None:
        """Map a new region in each selected live process."""
        for proc in self._procs(a.proc):
            self._map_region(proc, a.region)

    def _munmap(self, a: sc.Munmap) -> None:
        """Unmap the selected ranges."""
        for child, region in self._each(a):
            child.request({"op": "munmap", "region": region, "start": a.start, "count": a.count})

    def _madvise(self, a: sc.Madvise) -> None:
        """Apply an advice to each mapped run of the selected ranges."""
        for child, region in self._each(a):
            child.request(
                {
                    "op": "madvise",
                    "region": region,
                    "advice": a.advice,
                    "start": a.start,
                    "count": a.count,
                }
            )

    def _fork(self, a: sc.Fork) -> None:
        """Fork a process; the child inherits its regions at the same addresses."""
        parent = self._child(a.proc)
        child = self.pool.fork(parent, a.child)
        self.pids[a.child] = child.pid
        self.tables[a.child] = {name: dict(r) for name, r in self.tables[a.proc].items()}

    def _exit(self, a: sc.Exit) -> None:
        """End the selected processes and wait until their address spaces are gone."""
        for proc in self._procs(a.proc):
            self._child(proc)
            self.pool.exit(proc)
            self.gone.append(proc)

    def _scan(self, a: sc.Scan) -> None:
        """Run ksmd for exactly N full scans and take the snapshot(s), as the model does."""
        record: dict[str, Any] = {
            "path": a.path,
            "label": a.label,
            "full_scans": a.full_scans,
            "completed": 0,
            "exact": [],
            "ksmd_cpu_s": [],
            "ksmd_runtime_s": [],
            "wall_s": [],
            "timed_out": False,
        }
        self.scans.append(record)
        completed = True
        if a.snapshot_each:
            for n in range(1, a.full_scans + 1):
                if not self._run_passes(1, a, record):
                    completed = False
                    self._scan_timeout(a, record)
                    break
                self.snapshot(f"{a.label}.{n}", a.expect_each)
        elif not self._run_passes(a.full_scans, a, record):
            completed = False
            self._scan_timeout(a, record)
        if not all(record["exact"]):
            sleep = (
                self.control.read("sleep_millisecs") if self.control.has("sleep_millisecs") else "?"
            )
            self.notify(
                f"ksmsim: warning: {a.path}: ksmd ran on past the scan boundary before it could "
                f"be stopped (sleep_millisecs = {sleep}); the counters after it are not exact"
            )
        if a.snapshot and not a.snapshot_each:
            snap = self.snapshot(a.label, a.expect)
            snap["timed_out"] = not completed
        elif a.snapshot and a.expect and self.snapshots:
            # With snapshot_each, `expect` applies to the last snapshot (as in the model).
            self.expect_failures.extend(check_expectations(self.snapshots[-1], a.expect))

    def _unmerge_all(self, a: sc.UnmergeAll) -> None:
        """Write run=2, then run=0, then record the counters."""
        self.control.reset()
        if a.snapshot:
            self.snapshot(a.label, a.expect)

    def _set(self, a: sc.Set) -> None:
        """Write tunables; the kernel's refusals are recorded as non-fatal errors."""
        for name, value in a.tunables.items():
            try:
                self.control.write(name, value)
            except KsmWriteError as exc:
                self.errors.append(
                    {"path": a.path, "kind": "sysfs", "message": str(exc), "fatal": False}
                )

    def _digest(self, a: sc.Digest) -> None:
        """Record the sha256 of each selected region."""
        for child, region in self._each(a):
            reply = child.request({"op": "digest", "region": region})
            self.digests.append(
                {
                    "after_op": self.op_index,
                    "proc": child.name,
                    "region": region,
                    "sha256": str(reply["sha256"]),
                }
            )

    def _run(self, a: sc.Run) -> None:
        """Let ksmd run at its tunables for the given wall-clock seconds."""
        self.control.write("run", RUN_MERGE)
        try:
            deadline = time.monotonic() + a.seconds
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 0.1))
        finally:
            self.control.write("run", RUN_STOP)


def run_real(
    scenario: sc.Scenario,
    *,
    control: KsmControl | None = None,
    directory: Path | None = None,
    notify: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Run a scenario on the running kernel and return its result document."""
    return RealRunner(scenario, control=control, directory=directory, notify=notify).run()


def restore_command(*, directory: Path | None = None) -> str:
    """Restore KSM from the state file a dead runner left; return a one-line message.

    Raises RealError when not root, when a run is going on (the lock is held) or when the
    restore fails.
    """
    if os.geteuid() != 0:
        raise RealError("ksmsim real --restore needs root: it writes /sys/kernel/mm/ksm")
    directory = directory if directory is not None else state_dir()
    path = directory / STATE_NAME
    if not path.exists():
        return f"nothing to restore: no state file ({path})"
    with RunLock(directory):
        message = recover(KsmControl, directory)
    return message or f"nothing to restore: no state file ({path})"
