"""Compare two result documents (model against kernel) snapshot by snapshot, counter by counter.

Two results are equal when their snapshots carry the same labels in the same order and every
KSM counter both record is equal: the global counters and each process's ksm_stat. Memory
figures and times are not compared: a real host's free memory is not the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from ksmsim.workload.scenario import GLOBAL_COUNTERS

COMPARED_SECTIONS: Final = ("global", "procs")


@dataclass(slots=True)
class Row:
    """One compared value: where it is, and what each side recorded (None: absent)."""

    key: str
    left: Any
    right: Any

    @property
    def equal(self) -> bool:
        """Tell whether both sides recorded the same value."""
        return bool(self.left == self.right)


@dataclass(slots=True)
class SnapshotComparison:
    """The rows of one snapshot, by its label."""

    label: str
    rows: list[Row] = field(default_factory=list)

    @property
    def differences(self) -> list[Row]:
        """Return the rows whose values differ."""
        return [r for r in self.rows if not r.equal]


@dataclass(slots=True)
class Comparison:
    """The comparison of two results of one scenario."""

    scenario: str
    left_name: str
    right_name: str
    snapshots: list[SnapshotComparison] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        """Tell whether the two results are equal."""
        return not self.problems and all(not s.differences for s in self.snapshots)

    def difference_count(self) -> int:
        """Return how many values differ, counting a structural problem as one."""
        return len(self.problems) + sum(len(s.differences) for s in self.snapshots)


def _flatten(snap: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in snap.get("global", {}).items():
        out[name] = value
    for proc, stats in sorted(snap.get("procs", {}).items()):
        for name, value in stats.items():
            out[f"proc:{proc}:{name}"] = value
    return out


def compare_results(
    left: dict[str, Any],
    right: dict[str, Any],
    left_name: str = "model",
    right_name: str = "kernel",
) -> Comparison:
    """Compare two result documents of one scenario."""
    comp = Comparison(str(left.get("scenario", "?")), left_name, right_name)
    lsnaps = left.get("snapshots", [])
    rsnaps = right.get("snapshots", [])
    llabels = [s["label"] for s in lsnaps]
    rlabels = [s["label"] for s in rsnaps]
    if llabels != rlabels:
        comp.problems.append(
            f"snapshot labels differ: {left_name} {llabels} vs {right_name} {rlabels}"
        )
    rby = {s["label"]: s for s in rsnaps}
    for snap in lsnaps:
        other = rby.get(snap["label"])
        if other is None:
            continue
        a = _flatten(snap)
        b = _flatten(other)
        sc = SnapshotComparison(snap["label"])
        for key in sorted(set(a) | set(b), key=_order):
            if key in a and key in b:
                sc.rows.append(Row(key, a[key], b[key]))
            elif key.startswith("proc:") and (key in a) != (key in b):
                sc.rows.append(Row(key, a.get(key), b.get(key)))
            # A global counter one side lacks (a profile without it) is not a difference.
        comp.snapshots.append(sc)
    return comp


def _order(key: str) -> tuple[int, str]:
    if key in GLOBAL_COUNTERS:
        return (GLOBAL_COUNTERS.index(key), key)
    return (len(GLOBAL_COUNTERS), key)


def print_comparison(comp: Comparison, out: TextIO, *, only_differences: bool = False) -> None:
    """Print the comparison as a table per snapshot, marking each difference with '<>'."""
    verdict = "EQUAL" if comp.equal else f"{comp.difference_count()} DIFFERENCE(S)"
    out.write(f"== {comp.scenario}: {comp.left_name} vs {comp.right_name}: {verdict}\n")
    for problem in comp.problems:
        out.write(f"   !! {problem}\n")
    for snap in comp.snapshots:
        rows = snap.differences if only_differences else snap.rows
        if not rows and only_differences:
            continue
        out.write(f"   [{snap.label}]\n")
        width = max((len(r.key) for r in rows), default=10)
        out.write(f"     {'counter':<{width}} {comp.left_name:>14} {comp.right_name:>14}\n")
        for r in rows:
            mark = "  " if r.equal else "<>"
            out.write(f"   {mark}{r.key:<{width}} {_fmt(r.left):>14} {_fmt(r.right):>14}\n")


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)
