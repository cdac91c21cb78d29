"""benchmarks/calibrate_ksmd_cost.py without the kernel: its NNLS, its fit, its errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_ksmd_cost.py"


def load_script() -> ModuleType:
    """Import the benchmark script as a module."""
    spec = importlib.util.spec_from_file_location("calibrate_ksmd_cost", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cal = load_script()

KNOWN = {
    "batch": 30_000.0,
    "address": 100.0,
    "scanned": 200.0,
    "checksum_xxhash": 800.0,
    "memcmp": 150.0,
    "merge": 2_000.0,
    "kpage_copy": 0.0,
    "item_alloc": 50.0,
    "break_cow": 0.0,
}
"""A cost table the synthetic kernel runs below are made from."""

NAMES = ["unique_1x16", "rewrite_2x32", "identical_3x32_smart", "batches_100", "zero_4x32_uzp"]
"""Small workloads that separate every kind of work the table charges (a few seconds)."""


def test_nnls_finds_the_exact_nonnegative_solution() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (12, 4))
    x = np.array([3.0, 0.0, 1.5, 7.0])
    assert np.allclose(cal.nnls(a, a @ x), x, atol=1e-8)


def test_nnls_clamps_a_coefficient_least_squares_would_make_negative() -> None:
    a = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    b = np.array([3.0, 2.0, 1.0])  # falling: unconstrained slope -1
    x = cal.nnls(a, b)
    assert x[1] == 0.0 and x[0] == pytest.approx(2.0)


def test_rounding_keeps_two_significant_figures() -> None:
    assert [cal.rounded(v) for v in (26171.5, 847.07, 114.7, 43.56, 0.0, -3.0)] == [
        26000,
        850,
        110,
        44,
        0,
        0,
    ]


def synthetic_runs(tmp_path: Path) -> Path:
    """Write an 'earlier output' whose kernel runtimes are exactly KNOWN's charge of the work."""
    workloads: dict[str, Any] = {}
    for name in NAMES:
        passes, _ = cal.model_passes(cal.workloads()[name], name)
        runtimes = [cal.predict(KNOWN, work) / 1e9 for work in passes]
        workloads[name] = {
            "kernel_runtime_s": [runtimes, runtimes],
            "kernel_stops_exact": True,
            "counters_equal": True,
        }
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"workloads": workloads}))
    return path


def test_refit_recovers_the_costs_the_runtimes_were_made_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = synthetic_runs(tmp_path)
    assert cal.main(["--kernel-runs", str(runs), *NAMES]) == 0
    out = json.loads(capsys.readouterr().out)
    fit = out["fit"]
    assert fit["abs_relerr_fit"]["max"] < 1e-6
    coef = fit["coef_ns"]
    # Every page present is both an address and a page scanned here, except in the passes
    # over pages merged into the zero page: both costs are identified, through those.
    for field, value in KNOWN.items():
        if field in fit["identified"]:
            assert coef[field] == pytest.approx(value, rel=1e-3, abs=0.5), field
    assert set(fit["not_identified"]) == {"kpage_copy", "break_cow"}
    assert fit["table"]["batch"] == 30_000 and fit["table"]["merge"] == 2_000
    assert all(w["counters_equal"] for w in out["workloads"].values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["no_such_workload"], "unknown workload 'no_such_workload'"),
        (["--kernel-runs", "/nonexistent.json"], "not an output of this script"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cal.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_recorded_runs_must_cover_the_workloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"workloads": {}}))
    assert cal.main(["--kernel-runs", str(path), "unique_1x16"]) == 2
    assert "no runs of ['unique_1x16']" in capsys.readouterr().err
