"""The model's v6.18 profile against the running kernel, scenario by scenario.

Every scenario of ``tests/scenarios/`` was run on Linux 6.18 with ``ksmsim validate --record
tests/scenarios/kernel`` (the release is in each result's ``kernel`` field); here the model must
reproduce each recorded result exactly, snapshot by snapshot, counter by counter (the global
counters and every process's ksm_stat). This runs anywhere; tests/real/ checks the live kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ksmsim.report.compare import compare_results
from ksmsim.workload.runner import run_scenario
from ksmsim.workload.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
RECORDED = SCENARIOS / "kernel"
FILES = sorted(p for p in SCENARIOS.iterdir() if p.suffix in (".toml", ".json"))


def test_the_suite_is_complete() -> None:
    assert len(FILES) >= 15
    for path in FILES:
        assert (RECORDED / f"{path.stem}.json").exists(), f"no kernel result for {path.name}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_model_equals_recorded_kernel(path: Path) -> None:
    recorded = json.loads((RECORDED / f"{path.stem}.json").read_text())
    assert recorded["source"] == "kernel" and recorded["kernel"].startswith("6.18")
    model = run_scenario(load_scenario(path), check=True)
    comp = compare_results(model, recorded)
    assert comp.snapshots, "nothing was compared"
    assert sum(len(s.rows) for s in comp.snapshots) > 0
    assert comp.equal, [
        (s.label, [(r.key, r.left, r.right) for r in s.differences])
        for s in comp.snapshots
        if s.differences
    ] + comp.problems
