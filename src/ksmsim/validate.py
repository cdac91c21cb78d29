"""``ksmsim validate``: run scenarios on the model and on the kernel, and compare the results.

For each scenario the model runs it (on the scenario's profile, v6.18 by default) and either
the running kernel runs it too (``ksmsim real``'s runner) or a result recorded earlier is read
(``--model-only``). The two results are compared snapshot by snapshot; any difference makes the
exit status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ksmsim.report.compare import Comparison, compare_results, print_comparison
from ksmsim.workload.runner import run_scenario
from ksmsim.workload.scenario import Scenario, load_scenario


class ValidateError(Exception):
    """Bad input to validate (a missing recorded result, a mismatch of names)."""


KernelRunner = Callable[[Scenario], dict[str, Any]]


def load_result(path: str) -> dict[str, Any]:
    """Read a recorded result document, or raise ValidateError naming the problem."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValidateError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValidateError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise ValidateError(f"{path}: {exc.strerror}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("snapshots"), list):
        raise ValidateError(f"{path}: not a ksmsim result document (no snapshots)")
    return doc


def validate(
    scenario_paths: Sequence[str],
    *,
    recorded: Sequence[str] | None = None,
    kernel_runner: KernelRunner | None = None,
    kernel: str | None = None,
    out: TextIO,
    only_differences: bool = False,
    record_dir: str | None = None,
) -> list[Comparison]:
    """Validate each scenario against the kernel (live or recorded) and print the comparisons."""
    if recorded is not None and len(recorded) != len(scenario_paths):
        raise ValidateError(
            f"--model-only needs one recorded result per scenario "
            f"({len(scenario_paths)} scenarios, {len(recorded)} results)"
        )
    comparisons = []
    for i, path in enumerate(scenario_paths):
        scenario = load_scenario(path)
        if recorded is not None:
            truth = load_result(recorded[i])
            truth_name = "recorded"
        else:
            assert kernel_runner is not None
            truth = kernel_runner(scenario)
            truth_name = "kernel"
            if record_dir is not None:
                target = Path(record_dir) / f"{scenario.name}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(truth, indent=1) + "\n")
        model = run_scenario(scenario, kernel=kernel)
        comp = compare_results(model, truth, "model", truth_name)
        comp.scenario = scenario.name
        print_comparison(comp, out, only_differences=only_differences)
        comparisons.append(comp)
    equal = sum(1 for c in comparisons if c.equal)
    out.write(f"{equal} of {len(comparisons)} scenario(s) equal\n")
    return comparisons
