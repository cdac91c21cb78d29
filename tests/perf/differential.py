"""Run a scenario with one set of shortcuts and another, and compare everything, snapshot by snapshot.

``compare_shortcuts(doc)`` runs a scenario document twice, with every shortcut on and with
every shortcut off (or any two ``Shortcuts``), recording at each snapshot the result snapshot
and the machine's whole state (``state.machine_state``), and returns the first difference, if
any: in the result documents (everything but the wall time) or in the recorded states.

``extended_mix(seed)`` adds to ``random_mix`` what it does not draw: the v6.18, keyhole and
pinned kernels, small max_page_sharing (stable node chains), a low pages_to_scan (passes cut
into batches with user actions in between), swap with memory pressure, migration, ksmd
running on the clock with background writers, and short runs that stop ksmd mid-pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ksmsim.kernel.ksm_shortcuts import Shortcuts, using_shortcuts
from ksmsim.workload.generators import random_mix
from ksmsim.workload.runner import ModelRunner, RunError, resolve_profile
from ksmsim.workload.scenario import parse_scenario

from .state import first_difference, machine_state


class RecordingRunner(ModelRunner):
    """A model runner that also records the whole machine state at every snapshot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.states: list[tuple[str, dict[str, Any]]] = []

    def snapshot(self, label: str, expect: Any = ()) -> dict[str, Any]:
        snap = super().snapshot(label, expect)
        self.states.append((label, machine_state(self.host.machine)))
        return snap


@dataclass
class Outcome:
    """What one run produced: the result document (or error) and the recorded states."""

    result: dict[str, Any] | None
    error: str | None
    states: list[tuple[str, dict[str, Any]]]
    final: dict[str, Any]


def run_with(doc: dict[str, Any], shortcuts: Shortcuts, *, check: bool = False) -> Outcome:
    """Run a scenario document on the model with the given shortcuts."""
    scenario = parse_scenario(doc, "differential")
    with using_shortcuts(shortcuts):
        runner = RecordingRunner(scenario, resolve_profile(scenario), check=check)
        assert runner.host.ksm.shortcuts == shortcuts
        # A scenario error is an outcome to compare; anything else (the model's AssertionError
        # included) is a model bug even when both runs meet it alike, and fails the test.
        try:
            result: dict[str, Any] | None = runner.run()
            error = None
        except RunError as exc:
            result, error = exc.partial, str(exc)
    if result is not None:
        result = {k: v for k, v in result.items() if k != "wall_time_s"}
    return Outcome(result, error, runner.states, machine_state(runner.host.machine))


def compare_outcomes(a: Outcome, b: Outcome) -> str | None:
    """Return the first difference between two runs, or None when they are identical."""
    if a.error != b.error:
        return f"error: {a.error!r} != {b.error!r}"
    if len(a.states) != len(b.states):
        return f"{len(a.states)} snapshots != {len(b.states)}"
    for (la, sa), (lb, sb) in zip(a.states, b.states, strict=True):
        if la != lb:
            return f"snapshot label {la!r} != {lb!r}"
        d = first_difference(sa, sb, f"state@{la}")
        if d is not None:
            return d
    d = first_difference(a.result, b.result, "result")
    if d is not None:
        return d
    return first_difference(a.final, b.final, "final")


def compare_shortcuts(
    doc: dict[str, Any],
    on: Shortcuts | None = None,
    off: Shortcuts | None = None,
    *,
    check: bool = False,
) -> str | None:
    """Run ``doc`` with shortcuts ``on`` and ``off`` (default: all and none); return the first
    difference, or None."""
    a = run_with(doc, on or Shortcuts.all_on(), check=check)
    b = run_with(doc, off or Shortcuts.all_off(), check=check)
    return compare_outcomes(a, b)


KERNELS = ("v6.18", "v6.18", "v6.18", "keyhole", "pinned")


def extended_mix(seed: int) -> dict[str, Any]:
    """Return random_mix(seed) with the extras listed in the module docstring, from ``seed``."""
    rng = random.Random(f"extended-{seed}")
    kernel = rng.choice(KERNELS)
    doc = random_mix(seed, steps=rng.choice((20, 30, 40)), kernel=kernel)
    tunables: dict[str, int] = doc.setdefault("tunables", {})
    if rng.random() < 0.4:
        tunables["pages_to_scan"] = rng.choice((3, 7, 20, 64))
    if kernel == "v6.18" and rng.random() < 0.4:
        tunables["max_page_sharing"] = rng.choice((2, 3, 4))
    if rng.random() < 0.3:
        tunables["use_zero_pages" if kernel == "v6.18" else "pages_to_scan"] = 1
    procs = [p["name"] for p in doc["processes"]]
    timeline: list[dict[str, Any]] = doc["timeline"]
    live = set(procs)
    extras: list[tuple[int, dict[str, Any]]] = []
    # Insert the extras only before any exit or fork, where the processes are the initial ones.
    cut = next(
        (i for i, a in enumerate(timeline) if a["op"] in ("exit", "fork", "mmap", "munmap")),
        len(timeline),
    )
    if rng.random() < 0.35:
        doc["machine"] = {"swap_pages": rng.choice((64, 256)), "ram_pages": rng.choice((96, 160))}
        extras.append((rng.randint(0, cut), {"op": "pressure", "pages": rng.randint(16, 80)}))
    if rng.random() < 0.3:
        p = rng.choice(sorted(live))
        extras.append((rng.randint(0, cut), {"op": "migrate", "proc": p}))
    if rng.random() < 0.4:
        p = rng.choice(sorted(live))
        at = rng.randint(0, cut)
        extras.append(
            (
                at,
                {
                    "op": "churn",
                    "proc": p,
                    "writes_per_s": rng.choice((20, 200, 2000)),
                    "pattern": rng.choice(("unique", "repeat:3", "x")),
                },
            )
        )
        extras.append((at, {"op": "run", "seconds": rng.choice((0.05, 0.2, 0.5))}))
    for at, action in sorted(extras, key=lambda e: -e[0]):
        timeline.insert(at, action)
    if rng.random() < 0.5:
        # Short runs anywhere stop ksmd in the middle of a pass, so that user actions land
        # between two halves of one pass (the condition the unstable-tree shortcut watches).
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(0, len(timeline))
            timeline.insert(at, {"op": "run", "seconds": rng.choice((0.01, 0.03, 0.1))})
    if "machine" in doc and "ram_pages" in doc["machine"]:
        mapped = sum(r["pages"] for p in doc["processes"] for r in p["regions"])
        doc["machine"]["ram_pages"] = max(doc["machine"]["ram_pages"], mapped // 2 + 32)
    return doc


__all__ = ["Outcome", "compare_outcomes", "compare_shortcuts", "extended_mix", "run_with"]
