"""Sweeps: predict one workload over a grid of tunables, in parallel, and pick a setting.

``run_sweep`` runs ``predict`` once per grid point on local processes
(``concurrent.futures.ProcessPoolExecutor``), on a Dask cluster (``scheduler="tcp://HOST:PORT"``:
``distributed.Client(...).get_executor()``; the workers need ksmsim installed), or on any
``concurrent.futures.Executor`` given. Each point's prediction is independent: the model is
deterministic, so where a point runs does not change its result.

The result's Pareto front holds the settings that no other setting beats on both savings (more)
and ksmd's steady-state CPU share (less). ``recommend`` picks, among the settings whose CPU share
stays within the budget, the one that saves the most, ties going to the faster convergence
(``t99_s``, then the time the savings settled), then to the lower CPU share.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ksmsim.workload.predict import (
    DEFAULT_MAX_PASSES,
    DEFAULT_MAX_SECONDS,
    PredictError,
    Prediction,
    Workload,
    predict,
    thin,
)
from ksmsim.workload.scenario import TUNABLES

__all__ = [
    "SweepError",
    "SweepPoint",
    "SweepResult",
    "grid",
    "open_executor",
    "parse_budget",
    "parse_set",
    "run_point",
    "run_sweep",
]

_RETURNED_CURVE = 2000
"""Curve points a worker sends back (the rest are thinned out)."""


class SweepError(Exception):
    """A sweep that cannot run; the message is one line naming the problem."""


def parse_set(spec: str) -> tuple[str, list[int]]:
    """Parse ``name=v1,v2,...`` into the tunable's name and its values (distinct, in order)."""
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise SweepError(f"--set {spec!r}: expected NAME=V1,V2,...")
    if name not in TUNABLES:
        raise SweepError(f"--set {spec!r}: unknown tunable {name!r} (one of {', '.join(TUNABLES)})")
    out: list[int] = []
    for raw in values.split(","):
        raw = raw.strip()
        try:
            value = int(raw)
        except ValueError:
            raise SweepError(f"--set {spec!r}: {raw!r} is not an integer") from None
        if value < 0:
            raise SweepError(f"--set {spec!r}: {value} is negative")
        if value not in out:
            out.append(value)
    return name, out


def parse_budget(text: str) -> float:
    """Parse a CPU budget, ``5%`` or ``0.05``, as a fraction of one CPU."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise SweepError(f"--cpu-budget {text!r}: expected a percentage such as 5%") from None
    if not (math.isfinite(value) and value > 0):
        raise SweepError(f"--cpu-budget {text!r}: must be more than 0")
    return value


def grid(sets: Sequence[tuple[str, list[int]]]) -> list[dict[str, int]]:
    """Return every combination of the swept values (the first tunable varies slowest)."""
    names = [name for name, _ in sets]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"--set {dup} is given twice")
    return [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in sets))
    ]


@dataclass(slots=True)
class SweepPoint:
    """One setting of the grid and what it gave (a prediction, or the error that stopped it)."""

    settings: dict[str, int]
    prediction: Prediction | None = None
    error: str | None = None

    def label(self) -> str:
        """Return the setting as ``pages_to_scan/sleep_millisecs`` (or ``k=v,...``)."""
        s = self.settings
        if set(s) == {"pages_to_scan", "sleep_millisecs"}:
            return f"{s['pages_to_scan']}/{s['sleep_millisecs']}"
        return ",".join(f"{k}={v}" for k, v in s.items())


def _dominates(a: Prediction, b: Prediction) -> bool:
    """Tell whether ``a`` saves at least as much for no more CPU, and is better in one."""
    return (
        a.saved_pages >= b.saved_pages
        and a.ksmd_cpu_share <= b.ksmd_cpu_share
        and (a.saved_pages > b.saved_pages or a.ksmd_cpu_share < b.ksmd_cpu_share)
    )


def _settle_key(p: Prediction) -> tuple[float, float, float]:
    """Return the tie-breaking key: convergence time (t99, then settled), then CPU share."""
    t99 = p.t99_s if p.t99_s is not None else math.inf
    return (t99, p.converged_s, p.ksmd_cpu_share)


@dataclass(slots=True)
class SweepResult:
    """The predictions of a grid, the CPU budget asked for, and how it ran."""

    workload: str
    names: list[str]
    points: list[SweepPoint]
    cpu_budget: float | None = None
    executor: str = ""
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def done(self) -> list[SweepPoint]:
        """Return the points that have a prediction."""
        return [p for p in self.points if p.prediction is not None]

    def pareto_front(self) -> list[SweepPoint]:
        """Return the points no other point dominates, by ascending CPU share."""
        done = self.done()
        front = []
        for p in done:
            assert p.prediction is not None
            if not any(
                q.prediction is not None and _dominates(q.prediction, p.prediction) for q in done
            ):
                front.append(p)
        return sorted(front, key=lambda p: p.prediction.ksmd_cpu_share if p.prediction else 0)

    def recommend(self) -> SweepPoint | None:
        """Return the most-saving point within the CPU budget (None: no budget, or none fits)."""
        if self.cpu_budget is None:
            return None
        fits = [
            p
            for p in self.done()
            if p.prediction is not None and p.prediction.ksmd_cpu_share <= self.cpu_budget
        ]
        if not fits:
            return None

        def key(p: SweepPoint) -> tuple[float, float, float, float]:
            assert p.prediction is not None
            t99, settled, share = _settle_key(p.prediction)
            return (-p.prediction.saved_pages, t99, settled, share)

        return min(fits, key=key)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (each prediction without its curve)."""
        front = {id(p) for p in self.pareto_front()}
        best = self.recommend()
        points = []
        for p in self.points:
            entry: dict[str, Any] = {"settings": p.settings, "label": p.label()}
            if p.prediction is not None:
                pred = p.prediction.to_json(curve_points=0)
                del pred["curve"], pred["pass_ends"]
                entry["prediction"] = pred
                entry["pareto"] = id(p) in front
            else:
                entry["error"] = p.error
            points.append(entry)
        return {
            "workload": self.workload,
            "swept": self.names,
            "cpu_budget": self.cpu_budget,
            "recommended": None
            if best is None
            else {"settings": best.settings, "label": best.label()},
            "executor": self.executor,
            "wall_s": self.wall_s,
            "notes": self.notes,
            "points": points,
        }


def run_point(
    workload: Workload,
    settings: dict[str, int],
    kernel: str | None = None,
    max_passes: int = DEFAULT_MAX_PASSES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> tuple[dict[str, int], Prediction | None, str | None]:
    """Predict one grid point (in a worker); return (settings, prediction, error)."""
    try:
        pred = predict(
            workload,
            tunables=settings,
            kernel=kernel,
            max_passes=max_passes,
            max_seconds=max_seconds,
        )
    except PredictError as exc:
        return settings, None, str(exc)
    pred.curve = thin(pred.curve, _RETURNED_CURVE)
    return settings, pred, None


class _Inline(cf.Executor):
    """An executor that runs each call at once in this process (``--jobs 1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn`` now and return a finished future."""
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@contextmanager
def open_executor(jobs: int | None = None, scheduler: str | None = None) -> Iterator[cf.Executor]:
    """Yield the executor a sweep runs on: a Dask cluster's, local processes, or this process."""
    if scheduler is not None:
        try:
            distributed: Any = importlib.import_module("distributed")
        except ImportError:
            raise SweepError(
                "--scheduler needs dask's distributed, which is not installed: "
                "pip install 'ksmsim[cluster]'"
            ) from None
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
        try:
            yield client.get_executor()
        finally:
            client.close()
        return
    workers = jobs if jobs is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise SweepError(f"--jobs must be at least 1, not {workers}")
    if workers == 1:
        yield _Inline()
        return
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool


def run_sweep(
    workload: Workload,
    settings: list[dict[str, int]],
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    executor: cf.Executor | None = None,
    kernel: str | None = None,
    cpu_budget: float | None = None,
    max_passes: int = DEFAULT_MAX_PASSES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    progress: Callable[[SweepPoint], None] | None = None,
) -> SweepResult:
    """Predict ``workload`` at every setting; return the grid's results in grid order.

    Runs on ``executor`` when given, else on a Dask cluster (``scheduler``) or ``jobs`` local
    processes. A point whose prediction fails keeps its error and the others go on.
    """
    if not settings:
        raise SweepError("the grid is empty")
    names = list(dict.fromkeys(k for s in settings for k in s))
    points = [SweepPoint(dict(s)) for s in settings]
    started = time.perf_counter()

    def collect(ex: cf.Executor) -> None:
        futures = {
            ex.submit(run_point, workload, p.settings, kernel, max_passes, max_seconds): p
            for p in points
        }
        for future in cf.as_completed(futures):
            point = futures[future]
            try:
                _, point.prediction, point.error = future.result()
            except cf.process.BrokenProcessPool:
                point.error = "a worker process died (out of memory?)"
            if progress is not None:
                progress(point)

    if executor is not None:
        collect(executor)
        where = type(executor).__name__
    else:
        with open_executor(jobs, scheduler) as ex:
            collect(ex)
        where = (
            f"dask {scheduler}" if scheduler else f"{jobs or os.cpu_count() or 1} local processes"
        )
    return SweepResult(
        workload=workload.name,
        names=names,
        points=points,
        cpu_budget=cpu_budget,
        executor=where,
        wall_s=time.perf_counter() - started,
    )
