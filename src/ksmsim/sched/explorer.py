"""The explorer: many schedules of one race, an invariant check after every step, and the
smallest schedule that shows what it finds.

Every schedule runs from scratch (the race's setup is replayed on a fresh host), so a schedule
is nothing but the list of choices. Modes:

- ``exhaustive``: depth-first over all schedules with at most ``preemptions`` preemptive
  switches (a switch away from a task that could have gone on; CHESS's bound), pruned by state
  hashing: a decision whose state (``state.fingerprint``, with the task that ran last) was
  already reached with no more preemptions spent has nothing new below it.
- ``random``: a uniformly random runnable task at each decision, one seed per schedule.
- ``pct``: PCT priority schedules of the given depth.

A finding (a task crashing, a task's own assertion, an invariant violated, a deadlock) is shrunk
to a schedule with as few forced choices as still reproduce it: the rest of the run is what
the non-preemptive default does.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Final

from ksmsim.kernel.invariants import InvariantError
from ksmsim.kernel.profile import Profile
from ksmsim.sched.checks import check_interleaved
from ksmsim.sched.race import RaceScenario, build_world
from ksmsim.sched.scheduler import Decision, Outcome, Scheduler, Step, Strategy
from ksmsim.sched.state import fingerprint
from ksmsim.sched.strategies import NonPreemptive, Pct, RandomWalk, Replay

MODES: Final = ("exhaustive", "random", "pct")


@dataclass(slots=True)
class RunRecord:
    """One schedule's run: how it ended, its choices and the decisions they answered."""

    outcome: Outcome
    schedule: list[str]
    decisions: list[Decision]
    trace: list[Step]
    preemptions: int


@dataclass(slots=True)
class Finding:
    """A bug: the run that found it and its shrunk schedule."""

    outcome: Outcome
    found: RunRecord
    minimal: RunRecord


@dataclass(slots=True)
class Report:
    """What an exploration did and found."""

    mode: str
    schedules: int = 0
    states: int = 0
    steps: int = 0
    pruned: int = 0
    complete: bool = False
    """Exhaustive only: every schedule within the bound was covered."""
    seconds: float = 0.0
    finding: Finding | None = None
    outcomes: dict[str, int] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        """Return schedules and distinct states per second."""
        s = max(self.seconds, 1e-9)
        return {"schedules_per_s": self.schedules / s, "states_per_s": self.states / s}

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON-able document."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "schedules": self.schedules,
            "distinct_states": self.states,
            "steps": self.steps,
            "pruned": self.pruned,
            "complete": self.complete,
            "seconds": round(self.seconds, 4),
            **{k: round(v, 1) for k, v in self.rates().items()},
            "outcomes": dict(self.outcomes),
        }
        if self.finding is not None:
            o = self.finding.outcome
            m = self.finding.minimal
            out["finding"] = {
                "status": o.status,
                "message": o.message,
                "task": o.task,
                "where": o.where,
                "aftermath": o.aftermath,
                "schedule": m.schedule,
                "steps": len(m.trace),
                "preemptions": m.preemptions,
            }
        return out


class _Sparse:
    """Forced choices at some decisions, the non-preemptive default everywhere else."""

    def __init__(self, forced: dict[int, str]) -> None:
        self.forced = forced
        self.default = NonPreemptive()

    def pick(self, decision: Decision) -> str:
        name = self.forced.get(decision.index)
        if name is not None and name in decision.enabled:
            return name
        return self.default.pick(decision)


class Explorer:
    """Runs schedules of one race on one profile (with any mutations switched on)."""

    def __init__(
        self,
        race: RaceScenario,
        profile: Profile,
        mutations: frozenset[str] = frozenset(),
        *,
        check: bool = True,
        max_steps: int = 20000,
    ) -> None:
        self.race = race
        self.profile = profile
        self.mutations = mutations
        self.check = check
        self.max_steps = max_steps
        self.states: set[int] = set()

    # -- one run -----------------------------------------------------------------------------
    def run_once(
        self,
        strategy: Strategy,
        *,
        hash_states: bool = True,
        prune: dict[Any, int] | None = None,
        replayed: int = 0,
    ) -> RunRecord:
        """Run one schedule from a fresh setup; ``prune`` (exhaustive) maps states already
        explored to the fewest preemptions they were reached with, and is not consulted for
        the first ``replayed`` decisions (the prefix being replayed)."""
        world = build_world(self.race, self.profile, self.mutations)
        decisions: list[Decision] = []

        def on_decision(sched: Scheduler, d: Decision) -> bool:
            if hash_states or prune is not None:
                h = fingerprint(world)
                self.states.add(h)
                if prune is not None and d.index >= replayed:
                    key = (h, d.previous)
                    seen = prune.get(key)
                    if seen is not None and seen <= d.preemptions:
                        return False
                    prune[key] = d.preemptions
            decisions.append(d)
            return True

        outcome = world.sched.run(
            strategy,
            on_step=self._check if self.check else None,
            on_decision=on_decision,
            max_steps=self.max_steps,
        )
        s = world.sched
        return RunRecord(outcome, list(s.decisions), decisions, list(s.trace), s.preemptions)

    @staticmethod
    def _check(sched: Scheduler) -> Outcome | None:
        try:
            check_interleaved(sched)
        except InvariantError as exc:
            return Outcome("invariant", str(exc))
        return None

    def replay(self, schedule: list[str]) -> RunRecord:
        """Replay a recorded schedule exactly (the non-preemptive default past its end)."""
        return self.run_once(Replay(schedule), hash_states=False)

    # -- exploring ---------------------------------------------------------------------------
    def explore(
        self,
        mode: str = "exhaustive",
        *,
        schedules: int | None = None,
        seconds: float | None = None,
        seed: int = 0,
        preemptions: int = 2,
        depth: int = 3,
        shrink: bool = True,
    ) -> Report:
        """Explore until the budget (schedules or seconds) is spent, the exhaustive search is
        complete, or a bug is found; shrink the bug's schedule."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        report = Report(mode)
        start = time.perf_counter()
        deadline = start + seconds if seconds is not None else None

        def budget_left() -> bool:
            if schedules is not None and report.schedules >= schedules:
                return False
            return deadline is None or time.perf_counter() < deadline

        found: RunRecord | None
        if mode == "exhaustive":
            found = self._exhaustive(report, preemptions, budget_left)
        else:
            found = self._sampled(report, mode, seed, depth, budget_left)
        report.states = len(self.states)
        if found is not None:
            minimal = self.shrink(found) if shrink else found
            report.finding = Finding(found.outcome, found, minimal)
        report.seconds = time.perf_counter() - start
        return report

    def _count(self, report: Report, record: RunRecord) -> None:
        report.schedules += 1
        report.steps += len(record.trace)
        status = record.outcome.status
        report.outcomes[status] = report.outcomes.get(status, 0) + 1
        if status == "pruned":
            report.pruned += 1

    def _sampled(
        self, report: Report, mode: str, seed: int, depth: int, budget_left: Any
    ) -> RunRecord | None:
        rng = random.Random(seed)
        names = [t.name for t in self.race.tasks]
        length = 0
        if mode == "pct":
            first = self.run_once(NonPreemptive())
            self._count(report, first)
            if first.outcome.is_finding:
                return first
            length = len(first.decisions)
        while budget_left():
            s = rng.getrandbits(64)
            strategy: Strategy = (
                RandomWalk(s) if mode == "random" else Pct(s, names, depth, max(length, 1))
            )
            record = self.run_once(strategy)
            self._count(report, record)
            if record.outcome.is_finding:
                return record
        return None

    def _exhaustive(self, report: Report, bound: int, budget_left: Any) -> RunRecord | None:
        """Depth-first search over schedules within the preemption bound, with state hashing."""
        visited: dict[Any, int] = {}
        # One node per decision on the current path: the decision, and the choices tried there.
        path: list[tuple[Decision, list[str]]] = []
        prefix: list[str] = []
        while budget_left():
            record = self.run_once(Replay(prefix), prune=visited, replayed=len(prefix))
            self._count(report, record)
            if record.outcome.is_finding:
                return record
            for d in record.decisions:
                if d.index >= len(path):
                    path.append((d, [record.schedule[d.index]]))
            # Backtrack to the deepest decision with an untried choice within the bound.
            while path:
                d, tried = path[-1]
                options = [
                    name
                    for name in d.enabled
                    if name not in tried
                    and d.preemptions + (1 if d.previous_enabled and name != d.previous else 0)
                    <= bound
                ]
                if options:
                    tried.append(options[0])
                    prefix = [t[-1] for _, t in path]
                    break
                path.pop()
            if not path:
                report.complete = True
                return None
        return None

    # -- shrinking ---------------------------------------------------------------------------
    def shrink(self, record: RunRecord, max_runs: int = 400) -> RunRecord:
        """Return a run with the fewest forced choices that still shows the same bug."""
        signature = record.outcome.signature()
        default = NonPreemptive()
        forced = {
            d.index: name
            for d, name in zip(record.decisions, record.schedule, strict=False)
            if name != default.pick(d)
        }
        best = record
        runs = 0
        changed = True
        while changed and runs < max_runs:
            changed = False
            for index in sorted(forced, reverse=True):
                if runs >= max_runs:
                    break
                candidate = {k: v for k, v in forced.items() if k != index}
                runs += 1
                attempt = self.run_once(_Sparse(candidate), hash_states=False)
                if attempt.outcome.signature() == signature:
                    forced, best, changed = candidate, attempt, True
        if best.preemptions > 1:
            # A bug that one well-placed preemption shows: look for that single choice along
            # the non-preemptive run (which a single forced choice follows up to it).
            base = self.run_once(_Sparse({}), hash_states=False)
            runs += 1
            for d in base.decisions:
                for name in d.enabled:
                    if runs >= max_runs or name == default.pick(d):
                        continue
                    runs += 1
                    attempt = self.run_once(_Sparse({d.index: name}), hash_states=False)
                    if attempt.outcome.signature() == signature:
                        return attempt
        if best is record:
            # Re-run the original sparsely so its recorded schedule is exactly what replays.
            best = self.run_once(_Sparse(forced), hash_states=False)
            if best.outcome.signature() != signature:
                return record
        return best
