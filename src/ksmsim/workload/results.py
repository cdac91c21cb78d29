"""The result document shared by the model and the real-kernel runner: expectations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ksmsim import __version__
from ksmsim.workload.scenario import Expectation

RESULT_SCHEMA_VERSION: Final = 1


def result_head(
    source: str, scenario: str, kernel: str, tunables: dict[str, int]
) -> dict[str, Any]:
    """Return the keys a result document starts with, in the format's order.

    ``source`` is ``model`` or ``kernel``; ``kernel`` the profile's name or the running release.
    """
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "ksmsim_version": __version__,
        "source": source,
        "scenario": scenario,
        "kernel": kernel,
        "tunables": tunables,
    }


@dataclass(slots=True)
class ExpectFailure:
    """One expectation that did not hold at a snapshot."""

    label: str
    key: str
    expected: int | list[int]
    actual: int | str | None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "label": self.label,
            "counter": self.key,
            "expected": self.expected,
            "actual": self.actual,
        }

    def describe(self) -> str:
        """Return a one-line description."""
        return f"{self.label}: {self.key} expected {self.expected}, got {self.actual}"


def check_expectations(
    snap: dict[str, Any], expect: tuple[Expectation, ...]
) -> list[ExpectFailure]:
    """Return the expectations that a snapshot (``global``/``procs``/``memory``) does not meet."""
    failures = []
    for exp in expect:
        if exp.scope == "proc":
            source = snap.get("procs", {}).get(exp.proc, {})
        else:
            source = snap.get("memory" if exp.scope == "memory" else "global", {})
        actual = source.get(exp.counter)
        if (
            not isinstance(actual, int)
            or isinstance(actual, bool)
            or not exp.lo <= actual <= exp.hi
        ):
            expected: int | list[int] = exp.lo if exp.lo == exp.hi else [exp.lo, exp.hi]
            failures.append(ExpectFailure(snap["label"], exp.key, expected, actual))
    return failures
