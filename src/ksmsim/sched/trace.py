"""Schedules on disk and traces on screen.

A saved schedule is JSON: the race it belongs to, the kernel profile and mutations, the list of
task names chosen at each decision (enough to replay the run exactly), the finding it shows and
its trace. A trace prints one line per step: which task ran, from which preemption point to
which (the kernel function names), and the operation it was doing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ksmsim.sched.scheduler import Outcome, Step

SCHEDULE_FORMAT: Final = 1


@dataclass(slots=True)
class SavedSchedule:
    """A schedule with what it needs to be replayed and what it showed."""

    race: str
    kernel: str
    mutations: list[str]
    schedule: list[str]
    outcome: Outcome
    trace: list[Step] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "ksmsim_schedule": SCHEDULE_FORMAT,
            "race": self.race,
            "kernel": self.kernel,
            "mutations": self.mutations,
            "schedule": self.schedule,
            "outcome": {
                "status": self.outcome.status,
                "message": self.outcome.message,
                "task": self.outcome.task,
                "where": self.outcome.where,
                "aftermath": self.outcome.aftermath,
            },
            "trace": [
                {"task": s.task, "from": s.start, "to": s.end, "doing": s.doing} for s in self.trace
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write the schedule to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


class ScheduleError(ValueError):
    """A schedule file that cannot be read; the message is one line."""


def load_schedule(path: str | Path) -> SavedSchedule:
    """Read a schedule saved by ``SavedSchedule.save``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ScheduleError(f"{p}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ScheduleError(f"{p}: not a schedule file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("ksmsim_schedule") != SCHEDULE_FORMAT:
        raise ScheduleError(f"{p}: not a ksmsim schedule (format {SCHEDULE_FORMAT})")
    schedule = doc.get("schedule")
    if not isinstance(schedule, list) or not all(isinstance(s, str) for s in schedule):
        raise ScheduleError(f"{p}: schedule must be a list of task names")
    mutations = doc.get("mutations", [])
    if not isinstance(mutations, list) or not all(isinstance(s, str) for s in mutations):
        raise ScheduleError(f"{p}: mutations must be a list of names")
    out = doc.get("outcome", {})
    outcome = Outcome(
        str(out.get("status", "")),
        str(out.get("message", "")),
        str(out.get("task", "")),
        str(out.get("where", "")),
    )
    return SavedSchedule(
        str(doc.get("race", "")), str(doc.get("kernel", "")), mutations, schedule, outcome
    )


def format_trace(trace: list[Step], outcome: Outcome | None = None) -> list[str]:
    """Return the trace as lines: step, task, from -> to point, and the operation."""
    width = max((len(s.task) for s in trace), default=4)
    lines = []
    for s in trace:
        end = s.end
        if end == "crashed" and outcome is not None and outcome.task == s.task:
            end = f"CRASH {outcome.message}"
        doing = f"  [{s.doing}]" if s.doing else ""
        lines.append(f"{s.index:4}  {s.task:<{width}}  {s.start} -> {end}{doing}")
    if outcome is not None and outcome.where:
        lines.append(f"      at {outcome.where}")
    if outcome is not None and outcome.aftermath:
        lines.append(f"      and the state it left violates: {outcome.aftermath}")
    if outcome is not None and outcome.status == "invariant":
        lines.append(f"      invariant violated: {outcome.message}")
    if outcome is not None and outcome.status == "deadlock":
        lines.append(f"      {outcome.message}")
    return lines
