"""The ``churn`` action: background writers interleaved with ksmd on the simulated clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ksmsim.kernel.memory import peek_user_page
from ksmsim.kernel.profile import get_profile
from ksmsim.workload.churn import CHURN_SALT, ChurnSet
from ksmsim.workload.host import Host, HostError
from ksmsim.workload.patterns import page_bytes
from ksmsim.workload.runner import ModelRunner, RunError, run_scenario
from ksmsim.workload.scenario import parse_scenario


def doc(timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """Two processes with 200 pages of 10 repeated contents each; ``a`` also has a ``hot``
    region of 100 pages of the same contents."""
    return {
        "kernel": "v6.18",
        "tunables": {"pages_to_scan": 100, "sleep_millisecs": 20},
        "processes": [
            {
                "name": "a",
                "regions": [
                    {"name": "d", "pages": 200, "fill": "repeat:10"},
                    {"name": "hot", "pages": 100, "fill": "repeat:10"},
                ],
            },
            {"name": "b", "regions": [{"name": "d", "pages": 200, "fill": "repeat:10"}]},
        ],
        "timeline": timeline,
    }


def final_global(timeline: list[dict[str, Any]]) -> dict[str, int]:
    """Run the scenario and return the global counters of its last snapshot."""
    result = run_scenario(parse_scenario(doc(timeline), "churn"))
    assert result["ok"], result["errors"]
    counters: dict[str, int] = result["snapshots"][-1]["global"]
    return counters


def test_a_churned_region_stays_volatile_and_the_rest_merges() -> None:
    churned = final_global(
        [
            {"op": "churn", "proc": "a", "region": "hot", "writes_per_s": 500},
            {"op": "run", "seconds": 10},
            {"op": "snapshot", "label": "end"},
        ]
    )
    assert churned["pages_shared"] == 10
    assert churned["pages_sharing"] == 390  # the two `d` regions only
    assert churned["pages_volatile"] == 100  # every hot page changes between two visits
    calm = final_global(
        [
            {"op": "churn", "proc": "a", "region": "hot", "writes_per_s": 500},
            {"op": "churn", "proc": "a", "region": "hot", "writes_per_s": 0},  # stops it
            {"op": "run", "seconds": 10},
            {"op": "snapshot", "label": "end"},
        ]
    )
    assert calm["pages_sharing"] == 490
    assert calm["pages_volatile"] == 0


def test_writes_fall_due_at_the_rate_and_only_during_runs() -> None:
    scenario = parse_scenario(
        doc(
            [
                {"op": "churn", "proc": "a", "region": "hot", "writes_per_s": 250},
                {"op": "run", "seconds": 2},
                {"op": "scan", "full_scans": 3},  # not a run: the writer is idle
                {"op": "run", "seconds": 1},
            ]
        ),
        "rate",
    )
    runner = ModelRunner(scenario, get_profile("v6.18"))
    runner.run()
    (writer,) = runner.churn.writers.values()
    # Active for the two runs only (each may end up to one ksmd step late).
    assert 3.0 <= writer.active_ns / 1e9 < 3.1
    assert writer.written == int(writer.active_ns * 250 / 1e9)
    assert runner.churn.writes == writer.written


def test_the_nth_write_stores_pattern_page_n_at_page_n_mod_pages() -> None:
    host = Host("v6.18", ram_pages=4096)
    host.spawn("p")
    region = host.mmap("p", "r", 7)
    churn = ChurnSet()
    churn.set(host, "p", "r", 1000.0, "unique")
    churn.run(host, 0.02)
    n = churn.writes
    assert n >= 20
    mm = host.procs["p"].mm
    for page in range(7):
        last = max(k for k in range(n) if k % 7 == page)
        expected = page_bytes("unique", last, proc="p", region="r", salt=CHURN_SALT)
        assert peek_user_page(mm, region.page_address(page)) == expected


def test_writes_are_interleaved_with_ksmd_batches() -> None:
    host = Host("v6.18", ram_pages=4096)
    host.set_tunable("pages_to_scan", 10)
    host.set_tunable("sleep_millisecs", 20)
    host.spawn("p")
    host.mmap("p", "r", 50)
    host.fill("p", "r", "repeat:5")
    churn = ChurnSet()
    churn.set(host, "p", "r", 100.0)
    seen: list[tuple[float, int]] = []
    churn.run(host, 1.0, sample=lambda: seen.append((host.sim_time_s, churn.writes)))
    assert len(seen) > 40  # one sample per batch (every 20 ms)
    for (t_prev, _), (_, writes) in itertools.pairwise(seen):
        # Before each step, the writes due by its start were issued.
        assert writes >= int(t_prev * 100)
    assert churn.writes == int(host.sim_time_s * 100)


def test_without_writers_the_loop_equals_host_run() -> None:
    def build() -> Host:
        host = Host("v6.18", ram_pages=8192)
        host.set_tunable("pages_to_scan", 64)
        for name in ("a", "b"):
            host.spawn(name)
            host.mmap(name, "r", 300)
            host.fill(name, "r", "repeat:30")
        return host

    one, two = build(), build()
    one.run(3.0)
    ChurnSet().run(two, 3.0)
    assert one.counters() == two.counters()
    assert one.machine.clock_ns == two.machine.clock_ns
    assert one.ksmd.cpu_ns == two.ksmd.cpu_ns


def test_a_writer_ends_with_its_process_and_skips_unmapped_pages() -> None:
    host = Host("v6.18", ram_pages=4096)
    host.spawn("p")
    host.spawn("q")
    host.mmap("p", "r", 4)
    host.mmap("q", "r", 4)
    host.munmap("q", "r", start=1, count=2)
    churn = ChurnSet()
    churn.set(host, "p", "r", 100.0)
    churn.set(host, "q", "r", 100.0)
    host.exit("p")
    churn.run(host, 0.1)
    assert list(churn.writers) == [("q", "r")]
    written = churn.writers[("q", "r")].written
    assert written >= 10
    assert churn.writes == sum(1 for k in range(written) if k % 4 in (0, 3))  # 1, 2 skipped


def test_churn_on_a_missing_region_is_an_error() -> None:
    host = Host("v6.18", ram_pages=1024)
    host.spawn("p")
    with pytest.raises(HostError, match="no region"):
        ChurnSet().set(host, "p", "nope", 10.0)
    bad = doc([{"op": "exit", "proc": "a"}, {"op": "churn", "proc": "a", "writes_per_s": 5}])
    with pytest.raises(RunError, match="has exited"):
        run_scenario(parse_scenario(bad, "bad"))
