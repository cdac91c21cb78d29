"""The calibrated cost model against the running kernel's ksmd on one small workload.

KsmdCost's defaults are fitted on this machine's kernel (benchmarks/calibrate_ksmd_cost.py);
this checks that the model's predicted ksmd CPU for a workload the fit did not see stays within
a factor of TOLERANCE of the kernel's measured ksmd runtime, over the whole run and per pass.
"""

from __future__ import annotations

from typing import Any

import pytest

from ksmsim.real.runner import run_real
from ksmsim.workload.runner import ModelRunner, resolve_profile
from ksmsim.workload.scenario import parse_scenario
from tests.real.conftest import needs_real_kernel

pytestmark = [pytest.mark.realkernel, needs_real_kernel, pytest.mark.usefixtures("default_state")]

TOLERANCE = 1.5
"""The calibration's worst pass was off by about 50% (a small, cache-warm first pass)."""

WORKLOAD: dict[str, Any] = {
    "name": "cost_live",
    "tunables": {"pages_to_scan": 1_000_000, "smart_scan": 0},
    "processes": [
        {
            "name": f"p{i}",
            "regions": [
                {"name": "dup", "pages": 2048, "fill": "repeat:1024", "salt": "live"},
                {"name": "own", "pages": 2048, "fill": "unique"},
            ],
        }
        for i in range(3)
    ],
    "timeline": [{"op": "scan", "full_scans": 3, "snapshot_each": True, "label": "scan"}],
}
"""Three 16 MiB processes, half of each 1,024 contents held twice per process and in every
process (sizes and sharing unlike any calibration workload), half unique: one pass of
checksums, one that merges, one that searches the unstable tree; one batch a pass."""


def model_cpu_per_pass() -> list[float]:
    """Run the workload on the model; return ksmd's charged CPU seconds per pass."""
    scenario = parse_scenario(WORKLOAD, "cost_live")
    runner = ModelRunner(scenario, resolve_profile(scenario))
    host = runner.host
    scan = host.scan
    spent: list[float] = []

    def timed_scan(full_scans: int = 1) -> bool:
        before = host.ksmd.cpu_ns
        ok = scan(full_scans)
        spent.append((host.ksmd.cpu_ns - before) / 1e9)
        return ok

    host.scan = timed_scan  # type: ignore[method-assign]
    runner.run()
    return spent


def test_predicted_ksmd_cpu_is_within_tolerance_of_the_kernel() -> None:
    predicted = model_cpu_per_pass()
    result = run_real(parse_scenario(WORKLOAD, "cost_live"), notify=print)
    [scan] = result["scans"]
    measured = scan["ksmd_runtime_s"]
    assert all(scan["exact"]) and len(measured) == len(predicted) == 3
    assert None not in measured
    ratios = [p / m for p, m in zip(predicted, measured, strict=True)]
    total = sum(predicted) / sum(measured)
    assert 1 / TOLERANCE <= total <= TOLERANCE, (predicted, measured)
    assert all(1 / TOLERANCE <= r <= TOLERANCE for r in ratios), (predicted, measured)
