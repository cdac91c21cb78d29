"""Strategies: who runs next at each decision of the scheduler.

- ``NonPreemptive``: keep running the task that ran last while it can; else the first runnable
  one (in spawn order). The default completion of every prefix schedule.
- ``Replay``: follow a recorded list of task names, then fall back to another strategy.
- ``RandomWalk``: a uniformly random runnable task at every decision, from a seed.
- ``Pct``: probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): random task
  priorities and ``depth - 1`` random priority-change points; the highest-priority runnable task
  runs. A bug of depth d is found with probability at least 1/(n k^(d-1)) per run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ksmsim.sched.scheduler import Decision, SchedulerError, Strategy


class NonPreemptive:
    """Run the last task on while it can; otherwise the first runnable task."""

    def pick(self, decision: Decision) -> str:
        """Return the previous task if runnable, else the first runnable."""
        if decision.previous_enabled and decision.previous is not None:
            return decision.previous
        return decision.enabled[0]


class Replay:
    """Follow ``schedule`` choice by choice, then ``then`` (non-preemptive by default)."""

    def __init__(self, schedule: Sequence[str], then: Strategy | None = None) -> None:
        self.schedule = list(schedule)
        self.then: Strategy = then if then is not None else NonPreemptive()

    def pick(self, decision: Decision) -> str:
        """Return the recorded choice for this decision, or the fallback's past the end."""
        if decision.index < len(self.schedule):
            name = self.schedule[decision.index]
            if name not in decision.enabled:
                raise SchedulerError(
                    f"the schedule does not replay: at decision {decision.index} it runs "
                    f"{name!r}, which cannot run (runnable: {', '.join(decision.enabled)})"
                )
            return name
        return self.then.pick(decision)


class RandomWalk:
    """Pick a runnable task uniformly at random at each decision."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, decision: Decision) -> str:
        """Return a random runnable task."""
        return self.rng.choice(decision.enabled)


class Pct:
    """PCT: priorities fixed per task, lowered at ``depth - 1`` random change points.

    ``tasks`` are all the tasks' names; ``steps`` an estimate of the run's length in decisions
    (the explorer measures one run first).
    """

    def __init__(self, seed: int, tasks: Sequence[str], depth: int, steps: int) -> None:
        if depth < 1:
            raise ValueError("PCT depth must be at least 1")
        rng = random.Random(seed)
        order = list(tasks)
        rng.shuffle(order)
        # Initial priorities depth .. depth + n - 1, highest first in ``order``.
        n = len(order)
        self.priority = {name: depth + n - 1 - i for i, name in enumerate(order)}
        self.change_points = {
            rng.randrange(1, max(2, steps + 1)): depth - 1 - j for j in range(depth - 1)
        }
        self.last: str | None = None

    def pick(self, decision: Decision) -> str:
        """Return the highest-priority runnable task, after any change point at this step."""
        lowered = self.change_points.get(decision.index)
        if lowered is not None and decision.previous is not None:
            self.priority[decision.previous] = lowered
        return max(decision.enabled, key=lambda name: self.priority.get(name, -1))
