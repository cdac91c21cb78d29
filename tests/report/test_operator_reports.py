"""Terminal tables and PNG plots of predictions and sweeps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ksmsim.report.plot import PlotUnavailable, plot_prediction, plot_sweep
from ksmsim.report.prediction import (
    format_bytes,
    format_prediction,
    format_seconds,
    format_share,
)
from ksmsim.report.sweep import format_sweep
from ksmsim.workload.predict import PassEnd, Prediction
from ksmsim.workload.sweep import SweepPoint, SweepResult

PNG = b"\x89PNG\r\n\x1a\n"


def prediction(saved: int = 1000, share: float = 0.004, t99: float | None = 42.0) -> Prediction:
    """A prediction with round figures."""
    return Prediction(
        workload="fleet",
        kind="scenario",
        kernel="v6.18",
        tunables={"pages_to_scan": 100, "sleep_millisecs": 20},
        pages=4000,
        pages_shared=10,
        pages_sharing=saved,
        pages_unshared=2000,
        pages_volatile=990,
        ksm_zero_pages=0,
        saved_pages=saved,
        t50_s=None if t99 is None else t99 / 4,
        t90_s=None if t99 is None else t99 / 2,
        t99_s=t99,
        converged=True,
        converged_s=50.0,
        ksmd_cpu_s=0.25,
        ksmd_cpu_share=share,
        volatile_fraction=0.2475,
        rmap_items=4000,
        general_profit=saved * 4096 - 4000 * 64,
        full_scans=7,
        sim_time_s=80.0,
        churn_writes_per_s=12.5,
        wall_s=1.0,
        curve=[(1.0, 100, 0.01), (10.0, 500, 0.05), (40.0, saved, 0.2)],
        pass_ends=[PassEnd(20.0, 0.1, 500, {}), PassEnd(40.0, 0.2, saved, {})],
        notes=["a note"],
    )


def test_units() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(4096) == "4.00 KiB"
    assert format_bytes(1000 * 4096) == "3.91 MiB"
    assert format_bytes(3 << 30) == "3.00 GiB"
    assert format_bytes(-(5 << 20)) == "-5.00 MiB"
    assert format_seconds(None) == "never"
    assert format_seconds(1.234) == "1.23 s"
    assert format_seconds(61.0) == "61.0 s"
    assert format_seconds(600.0) == "10.0 min"
    assert format_seconds(7200.0) == "2.0 h"
    assert format_share(0) == "0%"
    assert format_share(0.05) == "5.0%"
    assert format_share(0.0004) == "0.040%"
    assert format_share(0.5) == "50%"


def test_prediction_table() -> None:
    text = format_prediction(prediction())
    rows = dict(line.split("  ", 1) for line in text.splitlines() if not line.startswith("note"))
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["saved"] == "1,000 pages = 3.91 MiB (25% of the pages)"
    assert rows["time to 50% / 90% / 99%"] == "10.5 s / 21.0 s / 42.0 s"
    assert rows["ksmd CPU, steady state"] == "0.40% of one CPU"
    assert rows["rmap_items"] == "4,000 (250 KiB of KSM's own memory)"
    assert rows["background writes"] == "12.5 pages/s"
    assert text.endswith("note: a note\n")
    never = format_prediction(prediction(saved=0, t99=None))
    assert "never / never / never" in never


def sweep(budget: float | None = 0.01) -> SweepResult:
    """Three settings: one cheap, one best within 1%, one over budget; one failed."""
    points = [
        SweepPoint({"pages_to_scan": 100, "sleep_millisecs": 20}, prediction(900, 0.002)),
        SweepPoint({"pages_to_scan": 1000, "sleep_millisecs": 20}, prediction(1000, 0.008)),
        SweepPoint({"pages_to_scan": 10000, "sleep_millisecs": 20}, prediction(1000, 0.09, 4.0)),
        SweepPoint({"pages_to_scan": 5, "sleep_millisecs": 20}, None, "it broke"),
    ]
    return SweepResult("fleet", ["pages_to_scan", "sleep_millisecs"], points, cpu_budget=budget)


def test_sweep_table_marks_front_and_recommendation() -> None:
    lines = format_sweep(sweep()).splitlines()
    assert lines[0].split()[:3] == ["pages_to_scan", "sleep_millisecs", "saved"]
    assert lines[1].endswith("*") and not lines[1].endswith(">*")
    assert lines[2].endswith(">*")
    assert not lines[3].endswith("*")  # same savings as 1000 for more CPU: dominated
    assert "error: it broke" in lines[4]
    assert any(
        line.startswith("> recommended for a ksmd CPU budget of 1.0%: pages_to_scan=1000")
        for line in lines
    )
    assert lines[-1] == "1 of 4 settings failed"
    assert "no setting keeps ksmd within" in format_sweep(sweep(budget=0.001))


def test_plots_are_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot_prediction(prediction(), tmp_path / "p.png")
    plot_prediction(prediction(saved=0, t99=None), tmp_path / "empty.png")
    plot_sweep(sweep(), tmp_path / "s.png")
    for name in ("p.png", "empty.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    with pytest.raises(PlotUnavailable, match="cannot write"):
        plot_sweep(sweep(), tmp_path / "missing" / "s.png")


def test_without_matplotlib_plots_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotUnavailable, match=r"pip install 'ksmsim\[plot\]'"):
        plot_prediction(prediction(), tmp_path / "p.png")
