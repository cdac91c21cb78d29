"""Run a scenario on the model and produce the result document of the scenario format."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ksmsim.kernel.ksm_sysfs import SysfsError
from ksmsim.kernel.memory import FaultError
from ksmsim.kernel.mmap import MmapError
from ksmsim.kernel.profile import Profile, UnknownProfile, get_profile
from ksmsim.workload import scenario as sc
from ksmsim.workload.actions import ActionHandlers, bind_handlers, expectations, initial_tunables
from ksmsim.workload.churn import ChurnSet
from ksmsim.workload.host import Host, HostError
from ksmsim.workload.results import ExpectFailure, check_expectations, result_head


class RunError(Exception):
    """A scenario that cannot run on the model; the message names the action's path.

    ``partial`` holds the result document of what ran before the error, when anything did.
    """

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(slots=True)
class RunState:
    """What a run has produced so far (kept whole even when the run stops with an error)."""

    snapshots: list[dict[str, Any]] = field(default_factory=list)
    expect_failures: list[ExpectFailure] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    digests: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    migrations: list[dict[str, Any]] = field(default_factory=list)


def default_ram_pages(scenario: sc.Scenario) -> int:
    """Return the format's default RAM: 1 GiB, or the pages the processes map plus 25%."""
    mapped = {p.name: sum(r.pages for r in p.regions) for p in scenario.processes}
    for action in scenario.timeline:
        if isinstance(action, sc.Mmap):
            names = mapped.keys() if action.proc is sc.ALL else action.proc
            for name in names:
                mapped[name] = mapped.get(name, 0) + action.region.pages
        elif isinstance(action, sc.Fork):
            mapped[action.child] = mapped.get(action.proc, 0)
    total = sum(mapped.values())
    return max(sc.DEFAULT_RAM_PAGES, total + total // 4)


def resolve_profile(scenario: sc.Scenario, override: str | None = None) -> Profile:
    """Return the profile a scenario runs on; raise RunError when it is not modelled."""
    name = override or scenario.kernel
    if name is None:
        try:
            return get_profile(sc.DEFAULT_KERNEL)
        except UnknownProfile as exc:
            raise RunError(
                f"the scenario names no kernel and the default ({sc.DEFAULT_KERNEL}) is not "
                f'modelled yet: {exc}; set kernel = "keyhole" or pass --kernel'
            ) from None
    try:
        return get_profile(name)
    except UnknownProfile as exc:
        raise RunError(f"kernel: {exc}") from None


class ModelRunner(ActionHandlers):
    """Executes one scenario's timeline on a Host."""

    def __init__(
        self,
        scenario: sc.Scenario,
        profile: Profile,
        *,
        check: bool = False,
        sample_every_s: float = 0.0,
    ) -> None:
        self.scenario = scenario
        self.profile = profile
        self.sample_every_ns = round(sample_every_s * 1e9)
        """The time series of ``run`` takes a sample after a batch once this much simulated
        time has passed since the last sample (0: after every batch)."""
        self._next_sample_ns = 0
        ram = scenario.machine.ram_pages or default_ram_pages(scenario)
        m = scenario.machine
        self.host = Host(
            profile, ram_pages=ram, swap_pages=m.swap_pages, hz=m.hz, cpus=m.cpus, check=check
        )
        self.state = RunState()
        self.op_index = -1
        self.gone: dict[str, Any] = {}
        self.churn = ChurnSet()
        """The background writers started by ``churn`` (active during ``run``)."""
        self._handlers = bind_handlers(self)

    # -- set-up ---------------------------------------------------------------------------------
    def tunables(self) -> dict[str, int]:
        """Return the tunables the run starts with: the profile's files, format defaults, overrides."""
        writable = set(self.host.sysfs.writable()) - {"run"}
        for name in self.scenario.tunables:
            if name not in writable:
                raise RunError(
                    f"tunables.{name}: the {self.profile.name} profile has no such tunable"
                )
        # max_kernel_pages has no format default: a quarter of RAM, as v2.6.33 sets it at boot.
        fallback = {"max_kernel_pages": self.host.machine.zone.present_pages // 4}
        return initial_tunables(writable, self.scenario.tunables, fallback)

    def check_expectations(self) -> None:
        """Refuse expectations on counters this profile does not have, before running anything."""
        have = set(self.host.counters()) | set(self.host.memory())
        for action in self.scenario.timeline:
            for exp in expectations(action):
                if exp.scope == "proc":
                    if not self.profile.scan_statistics:
                        raise RunError(
                            f"{action.path}.expect: the {self.profile.name} profile has no "
                            f"per-process counters ({exp.key})"
                        )
                elif exp.counter not in have:
                    raise RunError(
                        f"{action.path}.expect: the {self.profile.name} profile has no counter "
                        f"{exp.counter!r}"
                    )

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the scenario and return the result document."""
        start = time.perf_counter()
        tunables = self.tunables()
        self.check_expectations()
        for name, value in tunables.items():
            try:
                self.host.set_tunable(name, value)
            except SysfsError as exc:
                raise RunError(f"tunables.{name}: {exc}") from None
        for proc in self.scenario.processes:
            self.host.spawn(proc.name)
            for region in proc.regions:
                self._map_region(proc.name, region)
        for index, action in enumerate(self.scenario.timeline):
            self.op_index = index
            handler = self._handlers.get(type(action))
            if handler is None:
                raise RunError(f"{action.path}: {action.op!r} is not modelled yet")
            try:
                handler(action)
            except (HostError, MmapError, FaultError, SysfsError) as exc:
                partial = self.result(time.perf_counter() - start, tunables)
                partial["ok"] = False
                partial["errors"].append(
                    {"path": action.path, "kind": "error", "message": str(exc), "fatal": True}
                )
                raise RunError(f"{action.path}: {exc}", partial) from None
        return self.result(time.perf_counter() - start, tunables)

    def result(self, wall: float, tunables: dict[str, int]) -> dict[str, Any]:
        """Return the result document for what has run so far."""
        st = self.state
        fatal = [e for e in st.errors if e.get("fatal")]
        return {
            **result_head("model", self.scenario.name, self.profile.name, tunables),
            "machine": {
                "ram_pages": self.host.machine.zone.present_pages,
                "swap_pages": self.host.machine.config.swap_pages,
                "hz": self.host.machine.config.hz,
                "cpus": self.host.machine.config.cpus,
            },
            "processes": {
                name: {
                    "regions": {
                        r.name: {"address": r.address, "pages": r.pages} for r in p.regions.values()
                    }
                }
                for name, p in self._all_procs().items()
            },
            "snapshots": st.snapshots,
            "digests": st.digests,
            "timeseries": st.timeseries,
            "migrations": st.migrations,
            "ksm_free_delays_s": [d / 1e9 for d in self.host.machine.ksm_free_delays_ns],
            "ksm_release_delays_s": [d / 1e9 for d in self.host.machine.ksm_release_delays_ns],
            "unmapped_ksm_resident": len(self.host.machine.ksm_unmapped_at),
            "errors": st.errors,
            "ok": not st.expect_failures and not fatal,
            "expect_failures": [f.to_json() for f in st.expect_failures],
            "ksmd": {
                "cpu_s": self.host.ksmd.cpu_ns / 1e9,
                "batches": self.host.ksmd.batches,
                "work": self.host.ksm.work.as_dict(),
            },
            "sim_time_s": self.host.sim_time_s,
            "wall_time_s": wall,
        }

    def _all_procs(self) -> dict[str, Any]:
        procs = {**self.gone, **self.host.procs}
        return {name: procs[name] for name in sorted(procs, key=lambda n: procs[n].pid)}

    # -- helpers -------------------------------------------------------------------------------
    def _procs(self, sel: sc.Selector) -> list[str]:
        if sel is sc.ALL:
            return list(self.host.procs)
        return list(sel)

    def _regions(self, proc: str, sel: sc.Selector) -> list[str]:
        if sel is sc.ALL:
            return list(self.host.proc(proc).regions)
        return list(sel)

    def _each(self, action: Any) -> Iterable[tuple[str, str]]:
        for proc in self._procs(action.proc):
            for region in self._regions(proc, action.region):
                yield proc, region

    def _map_region(self, proc: str, region: sc.Region) -> None:
        self.host.mmap(proc, region.name, region.pages, mergeable=region.mergeable, thp=region.thp)
        if region.fill is not None:
            self.host.fill(proc, region.name, region.fill, salt=region.salt)

    def snapshot(self, label: str, expect: tuple[sc.Expectation, ...] = ()) -> dict[str, Any]:
        """Record the counters under ``label`` and check expectations against them."""
        host = self.host
        snap = {
            "label": label,
            "after_op": self.op_index,
            "sim_time_s": host.sim_time_s,
            "global": host.counters(),
            "procs": host.proc_counters(),
            "memory": host.memory(),
        }
        self.state.snapshots.append(snap)
        self._check_against(snap, expect)
        return snap

    # -- actions --------------------------------------------------------------------------------
    def _fill(self, a: sc.Fill) -> None:
        for proc, region in self._each(a):
            self.host.fill(proc, region, a.pattern, start=a.start, count=a.count, salt=a.salt)

    def _write(self, a: sc.Write) -> None:
        for proc, region in self._each(a):
            self.host.write(
                proc,
                region,
                a.value,
                offset=a.offset,
                start=a.start,
                count=a.count,
                stride=a.stride,
            )

    def _read(self, a: sc.Read) -> None:
        for proc, region in self._each(a):
            self.host.read(proc, region, start=a.start, count=a.count)

    def _mmap(self, a: sc.Mmap) -> None:
        for proc in self._procs(a.proc):
            self._map_region(proc, a.region)

    def _munmap(self, a: sc.Munmap) -> None:
        for proc, region in self._each(a):
            self.host.munmap(proc, region, start=a.start, count=a.count)

    def _madvise(self, a: sc.Madvise) -> None:
        for proc, region in self._each(a):
            self.host.madvise(proc, region, a.advice, start=a.start, count=a.count)

    def _fork(self, a: sc.Fork) -> None:
        self.host.fork(a.proc, a.child)

    def _exit(self, a: sc.Exit) -> None:
        for proc in self._procs(a.proc):
            self.gone[proc] = self.host.proc(proc)
            self.host.exit(proc)

    def _scan(self, a: sc.Scan) -> None:
        """Run ksmd for exactly N passes; with snapshot_each, stop and snapshot after each.

        ksmd still sleeps between the passes of one action, as it does between batches.
        """
        host = self.host
        ran = 0
        last: dict[str, Any] | None = None
        for n in range(1, a.full_scans + 1):
            if n > 1:
                host.ksmd.sleep()
            if not host.scan(1):
                self.state.errors.append(
                    {
                        "path": a.path,
                        "kind": "scan_timeout",
                        "message": f"ksmd had no mm to scan; {ran} of {a.full_scans} full scans ran",
                        "fatal": not a.allow_timeout,
                    }
                )
                break
            ran = n
            if a.snapshot_each:
                last = self.snapshot(f"{a.label}.{n}", a.expect_each)
        timed_out = ran < a.full_scans
        if a.snapshot and not a.snapshot_each:
            last = self.snapshot(a.label, a.expect)
            last["timed_out"] = timed_out
        elif a.expect:
            # With snapshot_each, `expect` applies to this scan's last snapshot; if the scan
            # took none, the expectation cannot have held.
            if last is not None:
                last["timed_out"] = timed_out
                self._check_against(last, a.expect)
            else:
                label = f"{a.label}.{a.full_scans}"
                self._check_against({"label": label}, a.expect)

    def _check_against(self, snap: dict[str, Any], expect: tuple[sc.Expectation, ...]) -> None:
        self.state.expect_failures.extend(check_expectations(snap, expect))

    def _unmerge_all(self, a: sc.UnmergeAll) -> None:
        self.host.unmerge_all()
        if a.snapshot:
            self.snapshot(a.label, a.expect)

    def _set(self, a: sc.Set) -> None:
        for name, value in a.tunables.items():
            try:
                self.host.set_tunable(name, value)
            except SysfsError as exc:
                self.state.errors.append(
                    {"path": a.path, "kind": "sysfs", "message": str(exc), "fatal": False}
                )

    def _digest(self, a: sc.Digest) -> None:
        for proc, region in self._each(a):
            self.state.digests.append(
                {
                    "after_op": self.op_index,
                    "proc": proc,
                    "region": region,
                    "sha256": self.host.digest(proc, region),
                }
            )

    def _run(self, a: sc.Run) -> None:
        if self.churn.active(self.host):
            self.churn.run(self.host, a.seconds, sample=self._sample)
        else:
            self.host.run(a.seconds, sample=self._sample)

    def _churn(self, a: sc.Churn) -> None:
        for proc, region in self._each(a):
            self.churn.set(self.host, proc, region, a.writes_per_s, a.pattern)

    def _sample(self) -> None:
        """Append the memory and KSM figures now to the run's time series (see
        ``sample_every_ns``: a sample reads every frame, which a long run feels)."""
        host = self.host
        if self.sample_every_ns:
            now = host.machine.clock_ns
            if now < self._next_sample_ns:
                return
            self._next_sample_ns = now + self.sample_every_ns
        c = host.counters()
        m = host.memory()
        self.state.timeseries.append(
            {
                "t_s": host.sim_time_s,
                "free_pages": m["free_pages"],
                "swap_cache_pages": m["swap_cache_pages"],
                "swap_used_pages": m["swap_used_pages"],
                "ksm_pages": m["ksm_pages"],
                "pages_shared": c["pages_shared"],
                "pages_sharing": c["pages_sharing"],
                "full_scans": c["full_scans"],
            }
        )

    def _pressure(self, a: sc.Pressure) -> None:
        written = self.host.pressure(a.pages)
        if written < a.pages:
            self.state.errors.append(
                {
                    "path": a.path,
                    "kind": "oom",
                    "message": f"out of memory after {written} of {a.pages} pressure pages",
                    "fatal": False,
                }
            )

    def _migrate(self, a: sc.Migrate) -> None:
        for proc, region in self._each(a):
            outcome = self.host.migrate(proc, region, start=a.start, count=a.count)
            self.state.migrations.append(
                {"after_op": self.op_index, "proc": proc, "region": region, **outcome}
            )


def run_scenario(
    scenario: sc.Scenario,
    *,
    kernel: str | None = None,
    check: bool = False,
    sample_every_s: float = 0.0,
) -> dict[str, Any]:
    """Run a scenario on the model and return its result document."""
    profile = resolve_profile(scenario, kernel)
    return ModelRunner(scenario, profile, check=check, sample_every_s=sample_every_s).run()
