"""Predictions: final savings, t50/t90/t99, ksmd's CPU, read off the model's simulated clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ksmsim.cli import main
from ksmsim.workload.host import Host
from ksmsim.workload.predict import (
    CPU_PASSES,
    PredictError,
    ScenarioWorkload,
    load_workload,
    predict,
    thin,
)
from ksmsim.workload.scenario import parse_scenario

REQUIRED = ("pages_shared", "pages_sharing", "saved_bytes", "t50_s", "t90_s", "t99_s", "ksmd_cpu_s")


def two_procs(pages: int = 400, k: int = 40, **extra: Any) -> dict[str, Any]:
    """Two processes with ``pages`` pages of ``k`` repeated contents each."""
    doc: dict[str, Any] = {
        "kernel": "v6.18",
        "processes": [
            {"name": n, "regions": [{"name": "r", "pages": pages, "fill": f"repeat:{k}"}]}
            for n in ("a", "b")
        ],
        "timeline": [],
    }
    doc.update(extra)
    return doc


def workload(doc: dict[str, Any]) -> ScenarioWorkload:
    """Parse a document into a workload."""
    return ScenarioWorkload(parse_scenario(doc, "w"))


def test_final_savings_and_times_come_from_the_simulated_run() -> None:
    pred = predict(workload(two_procs()), tunables={"pages_to_scan": 100, "sleep_millisecs": 20})
    assert (pred.pages_shared, pred.pages_sharing) == (40, 760)
    assert pred.saved_pages == 760 and pred.saved_bytes == 760 * 4096
    assert pred.converged
    assert pred.t50_s is not None and pred.t90_s is not None and pred.t99_s is not None
    assert 0 < pred.t50_s <= pred.t90_s <= pred.t99_s <= pred.converged_s
    ends = pred.pass_ends
    # v6.18 merges nothing in the first pass (a checksum must be seen unchanged first), and
    # 800 pages at 100 pages per 20 ms take 8 batches: the pass ends 160-200 ms in.
    assert ends[0].saved_pages == 0
    assert 0.16 <= ends[0].t_s <= 0.2
    assert ends[0].t_s < pred.t50_s
    # The curve is what the counters read after each batch: savings only grow here.
    saved = [s for _, s, _ in pred.curve]
    assert saved == sorted(saved) and saved[-1] == 760
    assert pred.t50_s == next(t for t, s, _ in pred.curve if s >= 380)
    # Settled: the last three full scans agree.
    assert len({e.saved_pages for e in ends[-3:]}) == 1


def test_the_prediction_equals_a_host_scanned_pass_by_pass() -> None:
    pred = predict(workload(two_procs()), tunables={"pages_to_scan": 100})
    host = Host("v6.18", ram_pages=262144)
    for name, value in pred.tunables.items():
        host.set_tunable(name, value)
    for name in ("a", "b"):
        host.spawn(name)
        host.mmap(name, "r", 400)
        host.fill(name, "r", "repeat:40")
    for end in pred.pass_ends:
        host.scan(1)
        assert host.counters()["pages_sharing"] == end.saved_pages
        host.ksmd.sleep()


def test_cpu_share_is_averaged_over_the_steady_full_scans() -> None:
    slow = predict(workload(two_procs()), tunables={"pages_to_scan": 100, "sleep_millisecs": 20})
    fast = predict(workload(two_procs()), tunables={"pages_to_scan": 800, "sleep_millisecs": 20})
    ends = slow.pass_ends
    # Averaged over the full scans since the savings settled (at least CPU_PASSES of them).
    settled = next(i for i in range(len(ends)) if all(e.saved_pages == 760 for e in ends[i:]))
    a, b = ends[settled], ends[-1]
    assert len(ends) - 1 - settled >= CPU_PASSES
    assert slow.ksmd_cpu_share == pytest.approx((b.cpu_s - a.cpu_s) / (b.t_s - a.t_s))
    assert 0 < slow.ksmd_cpu_share < fast.ksmd_cpu_share < 1
    assert fast.t99_s is not None and slow.t99_s is not None and fast.t99_s < slow.t99_s
    assert slow.saved_pages == fast.saved_pages
    assert slow.ksmd_cpu_s > 0


def test_counters_overhead_and_volatile_fraction() -> None:
    doc = two_procs(
        timeline=[
            {"op": "mmap", "proc": "a", "region": {"name": "u", "pages": 200, "fill": "unique"}},
            {"op": "churn", "proc": "a", "region": "u", "writes_per_s": 20000},
            {"op": "run", "seconds": 1},
        ]
    )
    pred = predict(workload(doc), tunables={"pages_to_scan": 400, "smart_scan": 0})
    assert pred.churn_writes_per_s == 20000
    assert pred.converged
    assert pred.pages_sharing == 760
    assert pred.pages_volatile == 200
    assert pred.volatile_fraction == pytest.approx(200 / 1000)
    assert pred.rmap_items == 1000 and pred.rmap_item_bytes == 64_000
    assert pred.general_profit == 760 * 4096 - 64_000


def test_a_scenario_timeline_runs_first_and_ksmd_goes_on_after_it() -> None:
    doc = two_procs(timeline=[{"op": "run", "seconds": 0.05}])
    pred = predict(workload(doc), tunables={"pages_to_scan": 100})
    assert pred.saved_pages == 760
    assert pred.sim_time_s > 0.05


def test_nothing_to_scan_ends_at_once() -> None:
    doc = two_procs(timeline=[{"op": "exit", "proc": "a"}, {"op": "exit", "proc": "b"}])
    pred = predict(workload(doc))
    assert pred.saved_pages == 0 and pred.t50_s is None and pred.converged
    idle = predict(workload(two_procs()), tunables={"pages_to_scan": 0})
    assert idle.saved_pages == 0 and idle.full_scans == 0


def test_a_run_that_does_not_settle_says_so() -> None:
    doc = two_procs(
        timeline=[
            {"op": "churn", "proc": "a", "region": "r", "writes_per_s": 3000, "pattern": "repeat:2"}
        ]
    )
    pred = predict(workload(doc), tunables={"pages_to_scan": 800}, max_passes=3)
    assert not pred.converged
    assert any("had not settled" in n for n in pred.notes)


@pytest.mark.parametrize(
    ("tunables", "message"),
    [
        ({"bogus": 1}, "unknown tunable"),
        ({"pages_to_scan": -1}, "non-negative"),
        ({"max_page_sharing": 1}, "max_page_sharing"),
    ],
)
def test_bad_tunables_are_prediction_errors(tunables: dict[str, int], message: str) -> None:
    with pytest.raises(PredictError, match=message):
        predict(workload(two_procs()), tunables=tunables)


def test_load_workload_errors(tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="no such file"):
        load_workload(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("processes = 3\n")
    with pytest.raises(PredictError, match="processes"):
        load_workload(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(two_procs()))
    with pytest.raises(PredictError, match="only-mergeable"):
        load_workload(good, only_mergeable=True)
    with pytest.raises(PredictError, match="only snapshots"):
        load_workload([good, good])


def test_json_form_has_the_operators_figures() -> None:
    pred = predict(workload(two_procs()), tunables={"pages_to_scan": 100})
    doc = pred.to_json(curve_points=5)
    for key in REQUIRED:
        assert key in doc
    assert len(doc["curve"]) <= 5 and doc["curve"][-1][1] == 760
    json.dumps(doc)


def test_thin_keeps_the_ends() -> None:
    points = [(float(i), i, 0.0) for i in range(100)]
    out = thin(points, 10)
    assert len(out) == 10 and out[0] == points[0] and out[-1] == points[-1]
    assert thin(points[:3], 10) == points[:3]


def test_predict_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps(two_procs()))
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    argv = ["predict", str(scenario), "--pages-to-scan", "200", "-o", str(out), "--plot", str(png)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "saved" in table and "760 pages" in table and "time to 50% / 90% / 99%" in table
    assert json.loads(out.read_text())["pages_sharing"] == 760
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["predict", str(scenario), "--json", "--set", "sleep_millisecs=100"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tunables"]["sleep_millisecs"] == 100


def test_predict_command_keeps_the_table_when_the_plot_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps(two_procs()))
    assert main(["predict", str(scenario), "--plot", str(tmp_path / "p.png")]) == 2
    captured = capsys.readouterr()
    assert "760 pages" in captured.out
    assert captured.err.count("\n") == 1 and "matplotlib" in captured.err
    assert main(["predict", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_pages_smart_scan_skips_are_not_counted_volatile() -> None:
    doc = two_procs(
        timeline=[
            {"op": "mmap", "proc": "a", "region": {"name": "u", "pages": 200, "fill": "unique"}},
            {"op": "run", "seconds": 1},  # long enough for smart_scan to skip the unique pages
        ]
    )
    smart = predict(workload(doc), tunables={"pages_to_scan": 1000, "smart_scan": 1})
    plain = predict(workload(doc), tunables={"pages_to_scan": 1000, "smart_scan": 0})
    assert smart.saved_pages == plain.saved_pages == 760
    assert plain.pages_volatile == 0 and plain.volatile_fraction == 0
    # The kernel's arithmetic counts the 200 skipped unique pages as volatile; they are not.
    assert smart.pages_volatile == 200 and smart.volatile_fraction == 0
    doc["timeline"].insert(1, {"op": "churn", "proc": "a", "region": "u", "writes_per_s": 50})
    churned = predict(workload(doc), tunables={"pages_to_scan": 1000, "smart_scan": 1})
    a, b = churned.pass_ends[-2:]
    assert churned.volatile_fraction == pytest.approx(int(50 * (b.t_s - a.t_s)) / 1000)
