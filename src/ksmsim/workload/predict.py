"""Predictions: what KSM gives back on a workload, how soon, and what ksmd costs.

A workload is a scenario (``ScenarioWorkload``: a fleet from a generator, any scenario file) or a
live snapshot (``SnapshotWorkload``). ``predict`` runs it on the model with the tunables asked
for: a scenario's timeline first (ksmd runs during its ``run`` and ``scan`` actions, with its
``churn`` writers), then ksmd goes on, with the writers still active, until the savings settle:
the same at the end of three consecutive full scans (with background writers: within 1% or 8
pages of each other), and ``CPU_PASSES`` more full scans for ksmd's steady cost; or at most
``max_passes`` full scans, or ``max_seconds`` of simulated time.

Nothing is derived by formula: the curve is the model's counters sampled after every ksmd batch
on the simulated clock, and each figure is read off it. *Savings* are what KSM's own
``general_profit`` counts as saved: ``pages_sharing + ksm_zero_pages`` pages (each sharing pte
beyond the first of a KSM page frees a frame; with ``use_zero_pages`` an all-zero page is mapped
to the zero page). ``t50_s``/``t90_s``/``t99_s`` are the first times (from the start of the
workload) at which the savings reached 50/90/99% of the final savings; ``ksmd_cpu_s`` is the CPU
time ksmd spent until the savings settled, ``ksmd_cpu_share`` its steady-state share of one CPU
(its CPU time over the full scans after the savings settled, at least ``CPU_PASSES`` of them,
divided by their duration), as the ``KsmdCost`` model charges it. ``volatile_fraction`` is the
share of KSM's rmap_items whose pages the background writers rewrite within one full scan (so
that KSM never sees them unchanged twice); the kernel's ``pages_volatile``, also reported,
counts in addition the pages smart_scan skips.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ksmsim.kernel.ksm import SIZEOF_KSM_RMAP_ITEM
from ksmsim.kernel.ksm_sysfs import SysfsError
from ksmsim.kernel.memory import FaultError
from ksmsim.kernel.page import PAGE_SIZE
from ksmsim.kernel.profile import UnknownProfile, get_profile
from ksmsim.workload import scenario as sc
from ksmsim.workload.churn import ChurnSet
from ksmsim.workload.estimate import build_snapshot_host, snapshot_tunables
from ksmsim.workload.host import Host, HostError
from ksmsim.workload.runner import ModelRunner, RunError, resolve_profile
from ksmsim.workload.snapshot import HostSnapshot, SnapshotError, is_snapshot_file, load_snapshot

__all__ = [
    "CPU_PASSES",
    "DEFAULT_MAX_PASSES",
    "DEFAULT_MAX_SECONDS",
    "PredictError",
    "Prediction",
    "ScenarioWorkload",
    "SnapshotWorkload",
    "Workload",
    "load_workload",
    "predict",
]

DEFAULT_MAX_PASSES: Final = 40
"""Full scans after the timeline before a prediction gives up converging."""
DEFAULT_MAX_SECONDS: Final = 7 * 86400.0
"""Simulated seconds after the timeline before a prediction gives up converging."""
SETTLE_PASSES: Final = 2
CPU_PASSES: Final = 8
"""Full scans after the savings settled over which ksmd's steady-state CPU share is averaged
(smart_scan skips pages in cycles of up to nine scans, so one scan's cost is not typical)."""
"""Consecutive full scans that must not change the savings (three pass ends agree)."""
CHURN_REL_TOL: Final = 0.01
CHURN_ABS_TOL: Final = 8
CURVE_POINTS: Final = 400
"""At most this many points of the savings curve go into the JSON form."""


class PredictError(Exception):
    """A workload that cannot be predicted; the message is one line naming the problem."""


@dataclass(frozen=True, slots=True)
class ScenarioWorkload:
    """A scenario as a workload."""

    scenario: sc.Scenario

    @property
    def name(self) -> str:
        """Return the scenario's name."""
        return self.scenario.name


@dataclass(frozen=True, slots=True)
class SnapshotWorkload:
    """A live snapshot (one or more passes) as a workload."""

    passes: tuple[HostSnapshot, ...]
    name: str
    only_mergeable: bool = False


Workload = ScenarioWorkload | SnapshotWorkload


def load_workload(
    paths: str | Path | list[str | Path], *, only_mergeable: bool = False
) -> Workload:
    """Load a scenario file, or one or more snapshot files (their passes in order).

    Raises PredictError (one line) for anything that is neither.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise PredictError("no workload file given")
    first = Path(items[0])
    if not first.exists():
        raise PredictError(f"{first}: no such file")
    if is_snapshot_file(first):
        passes: list[HostSnapshot] = []
        try:
            for item in items:
                passes.extend(load_snapshot(item))
        except SnapshotError as exc:
            raise PredictError(str(exc)) from None
        return SnapshotWorkload(tuple(passes), first.stem, only_mergeable)
    if len(items) > 1:
        raise PredictError(f"{first}: only snapshots can be combined; a scenario comes alone")
    if only_mergeable:
        raise PredictError(
            f"{first}: --only-mergeable applies to snapshots (a scenario says what is mergeable)"
        )
    try:
        return ScenarioWorkload(sc.load_scenario(first))
    except sc.ScenarioError as exc:
        raise PredictError(str(exc)) from None


@dataclass(slots=True)
class PassEnd:
    """The counters at the end of one full scan."""

    t_s: float
    cpu_s: float
    saved_pages: int
    counters: dict[str, int]


@dataclass(slots=True)
class Prediction:
    """What the model predicts for one workload and one setting of the tunables."""

    workload: str
    kind: str
    kernel: str
    tunables: dict[str, int]
    pages: int
    """Pages of the workload's processes when KSM starts (candidate pages for merging)."""
    pages_shared: int
    pages_sharing: int
    pages_unshared: int
    pages_volatile: int
    ksm_zero_pages: int
    saved_pages: int
    t50_s: float | None
    t90_s: float | None
    t99_s: float | None
    converged: bool
    converged_s: float
    ksmd_cpu_s: float
    ksmd_cpu_share: float
    volatile_fraction: float
    rmap_items: int
    general_profit: int | None
    full_scans: int
    sim_time_s: float
    churn_writes_per_s: float
    wall_s: float
    curve: list[tuple[float, int, float]] = field(default_factory=list)
    """(time s, saved pages, ksmd CPU s) after every batch that changed the savings."""
    pass_ends: list[PassEnd] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workload_info: dict[str, Any] = field(default_factory=dict)

    @property
    def saved_bytes(self) -> int:
        """Return the savings in bytes."""
        return self.saved_pages * PAGE_SIZE

    @property
    def rmap_item_bytes(self) -> int:
        """Return the memory KSM's rmap_items take (its overhead)."""
        return self.rmap_items * SIZEOF_KSM_RMAP_ITEM

    def to_json(self, *, curve_points: int = CURVE_POINTS) -> dict[str, Any]:
        """Return the JSON form (the curve thinned to at most ``curve_points`` points)."""
        return {
            "workload": self.workload,
            "kind": self.kind,
            "kernel": self.kernel,
            "tunables": self.tunables,
            "pages": self.pages,
            "pages_shared": self.pages_shared,
            "pages_sharing": self.pages_sharing,
            "pages_unshared": self.pages_unshared,
            "pages_volatile": self.pages_volatile,
            "ksm_zero_pages": self.ksm_zero_pages,
            "saved_pages": self.saved_pages,
            "saved_bytes": self.saved_bytes,
            "t50_s": self.t50_s,
            "t90_s": self.t90_s,
            "t99_s": self.t99_s,
            "converged": self.converged,
            "converged_s": self.converged_s,
            "ksmd_cpu_s": self.ksmd_cpu_s,
            "ksmd_cpu_share": self.ksmd_cpu_share,
            "volatile_fraction": self.volatile_fraction,
            "rmap_items": self.rmap_items,
            "rmap_item_bytes": self.rmap_item_bytes,
            "general_profit": self.general_profit,
            "full_scans": self.full_scans,
            "sim_time_s": self.sim_time_s,
            "churn_writes_per_s": self.churn_writes_per_s,
            "wall_s": self.wall_s,
            "notes": self.notes,
            "workload_info": self.workload_info,
            "pass_ends": [
                {"t_s": p.t_s, "cpu_s": p.cpu_s, "saved_pages": p.saved_pages}
                for p in self.pass_ends
            ],
            "curve": [list(point) for point in thin(self.curve, curve_points)],
        }


def thin(points: list[tuple[float, int, float]], limit: int) -> list[tuple[float, int, float]]:
    """Return at most ``limit`` points of a curve, evenly spread, first and last kept."""
    if len(points) <= limit or limit < 2:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(k * step)] for k in range(limit)]


class _Tracker:
    """Samples a host's savings after every ksmd step; knows when they have settled."""

    def __init__(self, host: Host, churn: ChurnSet, *, max_passes: int, t0_ns: int = 0) -> None:
        self.host = host
        self.churn = churn
        self.t0_ns = t0_ns
        self.has_zero = "ksm_zero_pages" in host.sysfs.files()
        self.curve: list[tuple[float, int, float]] = []
        self.pass_ends: list[PassEnd] = []
        self.settle_from = 0
        self.max_passes = max_passes
        self.last_scans = 0
        self.last_saved = -1

    def saved(self) -> int:
        """Return the savings now, in pages."""
        read = self.host.sysfs.read_int
        return read("pages_sharing") + (read("ksm_zero_pages") if self.has_zero else 0)

    def now(self) -> tuple[float, float]:
        """Return (time since the start, ksmd CPU so far) in seconds."""
        host = self.host
        return (host.machine.clock_ns - self.t0_ns) / 1e9, host.ksmd.cpu_ns / 1e9

    def sample(self) -> None:
        """Record the savings if they changed, and the counters if a full scan ended."""
        saved = self.saved()
        scans = self.host.sysfs.read_int("full_scans")
        if saved != self.last_saved:
            t, cpu = self.now()
            self.curve.append((t, saved, cpu))
            self.last_saved = saved
        if scans != self.last_scans:
            if scans > self.last_scans:
                t, cpu = self.now()
                counters = self.host.counters()
                self.pass_ends.append(PassEnd(t, cpu, saved, counters))
            self.last_scans = scans

    def settle_window(self) -> list[PassEnd] | None:
        """Return the last pass ends if they show settled savings, else None."""
        ends = self.pass_ends[self.settle_from :]
        if len(ends) < SETTLE_PASSES + 1:
            return None
        window = ends[-(SETTLE_PASSES + 1) :]
        values = [e.saved_pages for e in window]
        return window if max(values) - min(values) <= self.tolerance(values) else None

    def tolerance(self, values: list[int]) -> float:
        """Return how far apart settled savings may be (0 without background writers)."""
        if not self.churn.writers:
            return 0.0
        return max(CHURN_REL_TOL * max(values), CHURN_ABS_TOL)

    def settled_index(self) -> int:
        """Return the index of the earliest pass end from which the savings stayed within the
        tolerance of the last pass end's (the time they settled)."""
        ends = self.pass_ends
        final = ends[-1].saved_pages
        index = len(ends) - 1
        while index > 0:
            values = [final, ends[index - 1].saved_pages]
            if abs(values[1] - final) > self.tolerance(values):
                break
            index -= 1
        return index

    def should_stop(self) -> bool:
        """Tell whether the run after the timeline can end (settled, given up, or idle)."""
        ksm = self.host.ksm
        if not ksm.ksmd_should_run() or not ksm.ksm_thread_pages_to_scan:
            return True
        if self.settle_window() is not None and self.steady_passes() >= CPU_PASSES:
            return True
        return len(self.pass_ends) - self.settle_from >= self.max_passes

    def steady_start(self) -> int:
        """Return the index of the pass end from which ksmd's cost is steady: the savings have
        settled and the timeline is over."""
        return max(self.settled_index(), min(self.settle_from, len(self.pass_ends) - 1))

    def steady_passes(self) -> int:
        """Return how many full scans ended since the steady state began."""
        return len(self.pass_ends) - 1 - self.steady_start()


class _PredictRunner(ModelRunner):
    """A ModelRunner whose ``run`` and ``scan`` actions feed a tracker."""

    tracker: _Tracker

    def _run(self, a: sc.Run) -> None:
        self.churn.run(self.host, a.seconds, sample=self.tracker.sample)

    def _scan(self, a: sc.Scan) -> None:
        super()._scan(a)
        self.tracker.sample()


def _first_reach(curve: list[tuple[float, int, float]], target: float) -> float | None:
    """Return the first time the curve reaches ``target`` pages."""
    for t, saved, _ in curve:
        if saved >= target:
            return t
    return None


def _finish(
    tracker: _Tracker,
    *,
    workload: Workload,
    kind: str,
    tunables: dict[str, int],
    pages: int,
    started: float,
    notes: list[str],
    info: dict[str, Any],
) -> Prediction:
    """Read the prediction off a tracker whose run has ended."""
    host = tracker.host
    tracker.sample()
    window = tracker.settle_window()
    converged = window is not None
    idle = not host.ksm.ksm_thread_pages_to_scan or not host.procs
    if tracker.pass_ends:
        last = tracker.pass_ends[-1]
        counters, final = last.counters, last.saved_pages
    else:
        counters, final = host.counters(), tracker.saved()
        converged = converged or idle
    if tracker.pass_ends:
        settled = tracker.pass_ends[tracker.settled_index()]
    else:
        t, cpu = tracker.now()
        settled = PassEnd(t, cpu, final, counters)
    if not converged:
        notes.append(
            f"the savings had not settled after {len(tracker.pass_ends)} full scans "
            f"({tracker.now()[0]:.0f} s): the figures are those of the last scan"
        )
    ends = tracker.pass_ends
    first = ends[tracker.steady_start()] if len(ends) >= 2 else None
    if first is not None and ends[-1].t_s <= first.t_s:
        first = ends[-2]
    if first is not None and ends[-1].t_s > first.t_s:
        share = (ends[-1].cpu_s - first.cpu_s) / (ends[-1].t_s - first.t_s)
    else:
        t, cpu = tracker.now()
        share = cpu / t if t > 0 else 0.0
    items = [
        counters.get(k, 0)
        for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
    ]
    candidates = sum(items)
    # Volatile: rewritten by the background writers within one full scan, so never the same
    # at two visits. (The kernel's pages_volatile also counts the pages smart_scan skips.)
    scan_s = ends[-1].t_s - ends[-2].t_s if len(ends) >= 2 else tracker.now()[0]
    volatile = min(candidates, tracker.churn.pages_touched(host, scan_s))
    rmap_items = candidates
    profit = counters.get("general_profit")
    if profit is not None:
        saved_bytes = final * PAGE_SIZE
        rmap_items = (saved_bytes - profit) // SIZEOF_KSM_RMAP_ITEM
    curve = tracker.curve
    reach = {q: _first_reach(curve, q / 100 * final) if final > 0 else None for q in (50, 90, 99)}
    t_end, _ = tracker.now()
    return Prediction(
        workload=workload.name,
        kind=kind,
        kernel=host.profile.name,
        tunables=tunables,
        pages=pages,
        pages_shared=counters.get("pages_shared", 0),
        pages_sharing=counters.get("pages_sharing", 0),
        pages_unshared=counters.get("pages_unshared", 0),
        pages_volatile=counters.get("pages_volatile", 0),
        ksm_zero_pages=counters.get("ksm_zero_pages", 0),
        saved_pages=final,
        t50_s=reach[50],
        t90_s=reach[90],
        t99_s=reach[99],
        converged=converged,
        converged_s=settled.t_s,
        ksmd_cpu_s=settled.cpu_s,
        ksmd_cpu_share=share,
        volatile_fraction=volatile / candidates if candidates else 0.0,
        rmap_items=rmap_items,
        general_profit=profit,
        full_scans=counters.get("full_scans", 0),
        sim_time_s=t_end,
        churn_writes_per_s=tracker.churn.writes_per_s,
        wall_s=time.perf_counter() - started,
        curve=curve,
        pass_ends=list(tracker.pass_ends),
        notes=notes,
        workload_info=info,
    )


def _check_tunables(tunables: dict[str, int]) -> None:
    """Refuse a tunable the scenario format does not know, or a negative value."""
    for name, value in tunables.items():
        if name not in sc.TUNABLES:
            raise PredictError(f"unknown tunable {name!r} (one of {', '.join(sc.TUNABLES)})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PredictError(f"tunable {name} must be a non-negative integer, not {value!r}")


def predict(
    workload: Workload,
    *,
    tunables: dict[str, int] | None = None,
    kernel: str | None = None,
    max_passes: int = DEFAULT_MAX_PASSES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> Prediction:
    """Run a workload on the model until KSM's savings settle and return the prediction.

    ``tunables`` override the workload's own (a scenario's, or the host's recorded in a
    snapshot). Raises PredictError (one line) for a workload that cannot run.
    """
    overrides = dict(tunables or {})
    _check_tunables(overrides)
    if max_passes < 1 or not max_seconds > 0:
        raise PredictError("max_passes and max_seconds must be positive")
    started = time.perf_counter()
    try:
        if isinstance(workload, SnapshotWorkload):
            return _predict_snapshot(workload, overrides, kernel, max_passes, max_seconds, started)
        return _predict_scenario(workload, overrides, kernel, max_passes, max_seconds, started)
    except RunError as exc:
        raise PredictError(str(exc)) from None
    except (HostError, SysfsError, FaultError, UnknownProfile, ValueError) as exc:
        raise PredictError(f"{workload.name}: {exc}") from None


def _predict_scenario(
    workload: ScenarioWorkload,
    overrides: dict[str, int],
    kernel: str | None,
    max_passes: int,
    max_seconds: float,
    started: float,
) -> Prediction:
    """Predict a scenario: its timeline, then ksmd until the savings settle."""
    scenario = workload.scenario
    if overrides:
        scenario = dataclasses.replace(scenario, tunables={**scenario.tunables, **overrides})
    profile = resolve_profile(scenario, kernel)
    runner = _PredictRunner(scenario, profile)
    tracker = _Tracker(runner.host, runner.churn, max_passes=max_passes)
    runner.tracker = tracker
    result = runner.run()
    notes: list[str] = []
    fatal = [e for e in result["errors"] if e.get("fatal")]
    if fatal:
        raise PredictError(f"{fatal[0]['path']}: {fatal[0]['message']}")
    tracker.settle_from = len(tracker.pass_ends)
    tracker.sample()
    pages = _mapped_pages(runner.host)
    runner.churn.run(runner.host, max_seconds, sample=tracker.sample, stop=tracker.should_stop)
    return _finish(
        tracker,
        workload=workload,
        kind="scenario",
        tunables=result["tunables"],
        pages=pages,
        started=started,
        notes=notes,
        info={"processes": len(runner.host.procs)},
    )


def _mapped_pages(host: Host) -> int:
    """Return the anonymous pages mapped by the host's live processes (each pte counted)."""
    return sum(p.mm.anon_rss for p in host.procs.values())


def _predict_snapshot(
    workload: SnapshotWorkload,
    overrides: dict[str, int],
    kernel: str | None,
    max_passes: int,
    max_seconds: float,
    started: float,
) -> Prediction:
    """Predict a snapshot: its processes' pages as they were, then ksmd until they settle."""
    snap = workload.passes[-1]
    name = kernel or sc.DEFAULT_KERNEL
    profile = get_profile(name)
    tunables = snapshot_tunables(snap, overrides)
    have = set(Host(profile, ram_pages=64).sysfs.writable())
    tunables = {k: v for k, v in tunables.items() if k in have or k in overrides}
    host, churn, info = build_snapshot_host(
        list(workload.passes),
        kernel=name,
        tunables=tunables,
        only_mergeable=workload.only_mergeable,
    )
    notes = list(info.notes)
    if workload.only_mergeable and info.excluded_pages:
        notes.append(f"{info.excluded_pages} pages of areas not madvised mergeable were left out")
    tracker = _Tracker(host, churn, max_passes=max_passes, t0_ns=host.machine.clock_ns)
    pages = info.pages - info.zero_page_mappings
    if pages:
        churn.run(host, max_seconds, sample=tracker.sample, stop=tracker.should_stop)
    else:
        notes.append("the snapshot holds no page that KSM could merge")
    return _finish(
        tracker,
        workload=workload,
        kind="snapshot",
        tunables=tunables,
        pages=pages,
        started=started,
        notes=notes,
        info=info.to_json(),
    )
