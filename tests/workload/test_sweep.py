"""Sweeps: the grid, parallel execution (local processes, Dask), Pareto front, recommendation."""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from ksmsim.cli import main
from ksmsim.workload.predict import Prediction, ScenarioWorkload, predict
from ksmsim.workload.scenario import parse_scenario
from ksmsim.workload.sweep import (
    SweepError,
    SweepPoint,
    SweepResult,
    grid,
    parse_budget,
    parse_set,
    run_sweep,
)

DOC: dict[str, Any] = {
    "kernel": "v6.18",
    "processes": [
        {"name": n, "regions": [{"name": "r", "pages": 300, "fill": "repeat:30"}]}
        for n in ("a", "b")
    ],
}
GRID = [{"pages_to_scan": p, "sleep_millisecs": s} for p in (50, 600) for s in (20, 100)]


def workload() -> ScenarioWorkload:
    """The sweep's small workload."""
    return ScenarioWorkload(parse_scenario(DOC, "pair"))


def fake(saved: int, share: float, t99: float | None, settled: float = 1.0) -> Prediction:
    """Return a prediction with just the figures a recommendation looks at."""
    return Prediction(
        workload="w",
        kind="scenario",
        kernel="v6.18",
        tunables={},
        pages=1000,
        pages_shared=1,
        pages_sharing=saved,
        pages_unshared=0,
        pages_volatile=0,
        ksm_zero_pages=0,
        saved_pages=saved,
        t50_s=t99,
        t90_s=t99,
        t99_s=t99,
        converged=True,
        converged_s=settled,
        ksmd_cpu_s=0.1,
        ksmd_cpu_share=share,
        volatile_fraction=0.0,
        rmap_items=1000,
        general_profit=None,
        full_scans=3,
        sim_time_s=10.0,
        churn_writes_per_s=0.0,
        wall_s=0.0,
    )


def result(points: dict[str, Prediction | None], budget: float | None = 0.05) -> SweepResult:
    """Wrap fake predictions into a sweep result (labels are pages_to_scan values)."""
    return SweepResult(
        "w",
        ["pages_to_scan"],
        [
            SweepPoint({"pages_to_scan": int(k)}, v, None if v else "boom")
            for k, v in points.items()
        ],
        cpu_budget=budget,
    )


def test_parse_set_budget_and_grid() -> None:
    assert parse_set("pages_to_scan=100, 1000,100") == ("pages_to_scan", [100, 1000])
    assert parse_budget("5%") == pytest.approx(0.05)
    assert parse_budget("0.2") == pytest.approx(0.2)
    sets = [("pages_to_scan", [1, 2]), ("sleep_millisecs", [20, 200, 2000])]
    cells = grid(sets)
    assert len(cells) == 6 and cells[0] == {"pages_to_scan": 1, "sleep_millisecs": 20}
    assert cells[-1] == {"pages_to_scan": 2, "sleep_millisecs": 2000}
    for bad in ("pages_to_scan", "=1", "bogus=1", "pages_to_scan=x", "pages_to_scan=-5"):
        with pytest.raises(SweepError):
            parse_set(bad)
    for bad in ("x", "0%", "-1", "nan"):
        with pytest.raises(SweepError):
            parse_budget(bad)
    with pytest.raises(SweepError, match="twice"):
        grid([("pages_to_scan", [1]), ("pages_to_scan", [2])])


def test_pareto_front_and_recommendation() -> None:
    r = result(
        {
            "1": fake(100, 0.01, 50.0),  # front: cheapest
            "2": fake(200, 0.03, 20.0),  # front
            "3": fake(200, 0.04, 10.0),  # dominated by 2 (same savings, more CPU)
            "4": fake(300, 0.20, 5.0),  # front, over budget
            "5": fake(150, 0.05, 1.0),  # dominated by 2
            "6": None,  # failed
        }
    )
    assert [p.settings["pages_to_scan"] for p in r.pareto_front()] == [1, 2, 4]
    best = r.recommend()
    # Most savings within 5%: 2 and 3 tie at 200; 3 converges sooner (t99 10 s < 20 s).
    assert best is not None and best.settings["pages_to_scan"] == 3
    assert result({"1": fake(100, 0.5, 1.0)}).recommend() is None  # nothing fits
    assert result({"1": fake(100, 0.01, 1.0)}, budget=None).recommend() is None
    tie = result({"1": fake(50, 0.01, None, 9.0), "2": fake(50, 0.02, None, 3.0)})
    assert tie.recommend() is not None and tie.recommend().settings["pages_to_scan"] == 2  # type: ignore[union-attr]
    doc = r.to_json()
    assert doc["recommended"]["settings"] == {"pages_to_scan": 3}
    assert [p.get("pareto") for p in doc["points"]] == [True, True, False, True, False, None]
    assert doc["points"][-1]["error"] == "boom"
    json.dumps(doc)


def test_local_processes_give_the_same_results_as_one_process() -> None:
    parallel = run_sweep(workload(), GRID, jobs=2, cpu_budget=0.02)
    serial = run_sweep(workload(), GRID, jobs=1)
    assert [p.settings for p in parallel.points] == GRID
    for a, b in zip(parallel.points, serial.points, strict=True):
        assert a.prediction is not None and b.prediction is not None
        assert a.prediction.to_json(curve_points=0) | {"wall_s": 0} == b.prediction.to_json(
            curve_points=0
        ) | {"wall_s": 0}
    direct = predict(workload(), tunables=GRID[0])
    assert serial.points[0].prediction is not None
    assert serial.points[0].prediction.saved_pages == direct.saved_pages == 570
    assert parallel.executor == "2 local processes"


class CountingExecutor(cf.ThreadPoolExecutor):
    """A stand-in for a cluster's executor: threads, counting what it was given."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Count, then run on a thread."""
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


def test_any_executor_can_run_the_grid() -> None:
    with CountingExecutor() as ex:
        r = run_sweep(workload(), GRID[:2], executor=ex)
    assert ex.calls == 2 and r.executor == "CountingExecutor"
    assert all(p.prediction is not None for p in r.points)


def test_the_scheduler_option_goes_through_a_dask_client(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Client:
        def __init__(self, address: str, timeout: str) -> None:
            seen["address"] = address
            self.executor = CountingExecutor()

        def get_executor(self) -> cf.Executor:
            return self.executor

        def close(self) -> None:
            seen["closed"] = True
            seen["calls"] = self.executor.calls
            self.executor.shutdown()

    monkeypatch.setitem(sys.modules, "distributed", types.SimpleNamespace(Client=Client))
    r = run_sweep(workload(), GRID[:3], scheduler="tcp://10.9.8.7:8786")
    assert seen == {"address": "tcp://10.9.8.7:8786", "closed": True, "calls": 3}
    assert r.executor == "dask tcp://10.9.8.7:8786"
    assert all(p.prediction is not None for p in r.points)


def test_without_distributed_the_scheduler_option_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(SweepError, match=r"ksmsim\[cluster\]"):
        run_sweep(workload(), GRID[:1], scheduler="tcp://127.0.0.1:8786")


def test_a_real_local_dask_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        r = run_sweep(workload(), GRID[:2], scheduler=cluster.scheduler_address)
    local = run_sweep(workload(), GRID[:2], jobs=1)
    for a, b in zip(r.points, local.points, strict=True):
        assert a.prediction is not None and b.prediction is not None
        assert a.prediction.saved_pages == b.prediction.saved_pages
        assert a.prediction.ksmd_cpu_share == b.prediction.ksmd_cpu_share


def test_a_failing_point_keeps_its_error_and_the_rest_go_on() -> None:
    r = run_sweep(
        workload(), [{"pages_to_scan": 100}, {"max_page_sharing": 1}], jobs=1, cpu_budget=1.0
    )
    assert r.points[0].prediction is not None
    assert r.points[1].prediction is None and "max_page_sharing" in (r.points[1].error or "")
    assert r.recommend() is r.points[0]


def test_sweep_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "pair.json"
    scenario.write_text(json.dumps(DOC))
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    argv = [
        "sweep",
        str(scenario),
        "--set",
        "pages_to_scan=50,600",
        "--set",
        "sleep_millisecs=20,100",
    ]
    argv += ["--jobs", "2", "--cpu-budget", "2%", "-o", str(out), "--plot", str(png)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "pages_to_scan" in table and "> recommended for a ksmd CPU budget of 2.0%" in table
    doc = json.loads(out.read_text())
    assert len(doc["points"]) == 4 and doc["recommended"] is not None
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["sweep", str(scenario), "--set", "pages_to_scan=50", "--jobs", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points"][0]["prediction"]["saved_pages"] == 570


@pytest.mark.parametrize(
    "extra",
    [
        ["--set", "pages_to_scan=x"],
        ["--set", "pages_to_scan=1", "--cpu-budget", "lots"],
        ["--set", "pages_to_scan=1", "--jobs", "0"],
        ["--set", "max_page_sharing=1", "--jobs", "1"],
    ],
)
def test_sweep_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    scenario = tmp_path / "pair.json"
    scenario.write_text(json.dumps(DOC))
    assert main(["sweep", str(scenario), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ksmsim: error: sweep:")
