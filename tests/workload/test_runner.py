"""The scenario runner (ksmsim.workload.runner): what a run does and what its result records."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import pytest

from ksmsim.demo import demo_scenario
from ksmsim.kernel.memory import peek_user_page
from ksmsim.kernel.profile import get_profile
from ksmsim.workload.host import Host
from ksmsim.workload.patterns import ZERO_PAGE_BYTES, page_bytes
from ksmsim.workload.runner import ModelRunner, RunError, default_ram_pages, run_scenario
from ksmsim.workload.scenario import (
    DEFAULT_RAM_PAGES,
    Scenario,
    load_scenario,
    parse_scenario,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
PAGE = 4096


def scenario(
    timeline: list[dict[str, Any]] | None = None,
    processes: list[dict[str, Any]] | None = None,
    **top: Any,
) -> Scenario:
    """Parse a keyhole scenario; by default two processes with 8 pages of repeat:4 each."""
    if processes is None:
        processes = [
            {"name": name, "regions": [{"name": "buf", "pages": 8, "fill": "repeat:4"}]}
            for name in ("a", "b")
        ]
    doc: dict[str, Any] = {"kernel": "keyhole", "processes": processes, "timeline": timeline or []}
    doc.update(top)
    return parse_scenario(doc, "test")


def run_with_host(sc: Scenario, *, check: bool = False) -> tuple[dict[str, Any], Host]:
    """Run a scenario and return its result and the host it ran on."""
    runner = ModelRunner(sc, get_profile("keyhole"), check=check)
    return runner.run(), runner.host


def snaps(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the snapshots by label."""
    return {s["label"]: s for s in result["snapshots"]}


def without_wall_time(result: dict[str, Any]) -> dict[str, Any]:
    """Return the result without its wall-clock time (the one field allowed to differ)."""
    return {k: v for k, v in result.items() if k != "wall_time_s"}


# --------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_runs_are_deterministic(example: Path) -> None:
    first = run_scenario(load_scenario(example))
    second = run_scenario(load_scenario(example))
    assert without_wall_time(first) == without_wall_time(second)
    assert first["wall_time_s"] >= 0 and second["wall_time_s"] >= 0


def test_demo_is_deterministic() -> None:
    first = run_scenario(demo_scenario())
    second = run_scenario(demo_scenario())
    assert without_wall_time(first) == without_wall_time(second)


# --------------------------------------------------------------------------------------------------
# Machine size and tunables


def test_default_ram_pages_small_workload() -> None:
    sc = scenario([{"op": "snapshot", "label": "s"}])
    assert default_ram_pages(sc) == DEFAULT_RAM_PAGES == 262144
    result = run_scenario(sc)
    assert result["machine"]["ram_pages"] == 262144
    # No scan ran: both processes still hold their 8 pages each.
    assert result["snapshots"][0]["memory"]["free_pages"] == 262144 - 16


@pytest.mark.parametrize(
    ("sizes", "mmapped", "expected"),
    [
        ([300000], 0, 375000),
        ([200000, 100001], 0, 375001),  # 300001 * 1.25 = 375001.25
        ([200000], 100000, 375000),  # regions mapped by the timeline count too
        ([100000], 0, 262144),  # 125000 < 1 GiB
        ([209715], 0, 262144),  # 262143.75 < 1 GiB
        ([209716], 0, 262145),  # 262145 > 1 GiB
    ],
)
def test_default_ram_pages_rule(sizes: list[int], mmapped: int, expected: int) -> None:
    processes = [
        {"name": "a", "regions": [{"name": f"r{k}", "pages": n} for k, n in enumerate(sizes)]}
    ]
    timeline = (
        [{"op": "mmap", "proc": "a", "region": {"name": "late", "pages": mmapped}}]
        if mmapped
        else []
    )
    mapped = sum(sizes) + mmapped
    want = max(262144, int(mapped * 1.25))
    sc = scenario(timeline, processes)
    assert default_ram_pages(sc) == want
    result = run_scenario(sc)
    assert result["machine"]["ram_pages"] == want == expected
    # max_kernel_pages defaults to a quarter of the RAM, as the kernel's init did.
    assert result["tunables"]["max_kernel_pages"] == want // 4


def test_explicit_ram_pages() -> None:
    sc = scenario(machine={"ram_pages": 4096})
    result, host = run_with_host(sc)
    assert result["machine"]["ram_pages"] == 4096
    assert host.machine.zone.present_pages == 4096
    assert result["tunables"]["max_kernel_pages"] == 1024


def test_tunable_defaults() -> None:
    result, host = run_with_host(scenario())
    ram = result["machine"]["ram_pages"]
    assert result["tunables"] == {
        "pages_to_scan": 100000,
        "sleep_millisecs": 20,
        "max_kernel_pages": ram // 4,
    }
    # The defaults of the format, not the kernel's (pages_to_scan 100, max_kernel_pages 0).
    assert host.sysfs.read_int("pages_to_scan") == 100000
    assert host.sysfs.read_int("sleep_millisecs") == 20
    assert host.sysfs.read_int("max_kernel_pages") == ram // 4
    assert host.sysfs.read_int("run") == 0


def test_tunable_overrides() -> None:
    tunables = {"pages_to_scan": 7, "sleep_millisecs": 50, "max_kernel_pages": 3}
    timeline = [{"op": "scan", "full_scans": 3, "label": "s"}]
    result, host = run_with_host(scenario(timeline, tunables=tunables))
    assert result["tunables"] == tunables
    for name, value in tunables.items():
        assert host.sysfs.read_int(name) == value
    g = result["snapshots"][0]["global"]
    # max_kernel_pages = 3 caps the KSM pages (4 contents could merge).
    assert g["pages_shared"] == 3
    # 16 pages at 7 per batch: 3 batches per full scan, sleeping 50 ms (13 jiffies at 250 Hz)
    # between batches.
    assert result["ksmd"]["batches"] == 3 * 3
    assert result["sim_time_s"] >= 0.052 * 2 * 3

    baseline = run_scenario(scenario(timeline))
    assert baseline["snapshots"][0]["global"]["pages_shared"] == 4
    assert baseline["ksmd"]["batches"] == 3


def test_set_changes_tunables_mid_run() -> None:
    timeline = [
        {"op": "set", "tunables": {"pages_to_scan": 5, "sleep_millisecs": 100}},
        {"op": "scan", "label": "s"},
    ]
    result, host = run_with_host(scenario(timeline))
    assert host.sysfs.read_int("pages_to_scan") == 5
    assert host.sysfs.read_int("sleep_millisecs") == 100
    assert result["tunables"]["pages_to_scan"] == 100000  # the tunables the run started with
    assert result["ksmd"]["batches"] >= 4  # 16 pages, 5 at a time
    assert result["errors"] == []


def test_set_refused_value_is_recorded_and_leaves_the_tunable() -> None:
    timeline = [{"op": "set", "tunables": {"pages_to_scan": 2**32}}, {"op": "scan", "label": "s"}]
    result, host = run_with_host(scenario(timeline))
    assert host.sysfs.read_int("pages_to_scan") == 100000
    assert result["ok"] is True
    (error,) = result["errors"]
    assert error["kind"] == "sysfs" and error["fatal"] is False


def test_set_tunable_the_profile_lacks_is_a_run_error() -> None:
    with pytest.raises(RunError, match=r"timeline\[0\].*max_page_sharing") as exc:
        run_scenario(scenario([{"op": "set", "tunables": {"max_page_sharing": 2}}]))
    assert exc.value.partial is not None
    assert exc.value.partial["ok"] is False


# --------------------------------------------------------------------------------------------------
# Snapshots


def test_snapshot_each_labels() -> None:
    timeline = [
        {"op": "scan", "full_scans": 4, "snapshot_each": True, "label": "boot"},
        {"op": "scan", "full_scans": 2, "label": "more"},
    ]
    result = run_scenario(scenario(timeline))
    assert [s["label"] for s in result["snapshots"]] == [
        "boot.1",
        "boot.2",
        "boot.3",
        "boot.4",
        "more",
    ]
    assert [s["global"]["full_scans"] for s in result["snapshots"]] == [1, 2, 3, 4, 6]
    assert [s["after_op"] for s in result["snapshots"]] == [0, 0, 0, 0, 1]
    times = [s["sim_time_s"] for s in result["snapshots"]]
    assert times == sorted(times)


def test_snapshot_false_takes_none() -> None:
    timeline = [{"op": "scan", "full_scans": 2, "snapshot": False}, {"op": "snapshot"}]
    result = run_scenario(scenario(timeline))
    assert len(result["snapshots"]) == 1
    assert result["snapshots"][0]["global"]["full_scans"] == 2


def test_unlabelled_snapshots_are_numbered() -> None:
    timeline = [{"op": "scan"}, {"op": "scan"}, {"op": "snapshot"}, {"op": "unmerge_all"}]
    labels = [s["label"] for s in run_scenario(scenario(timeline))["snapshots"]]
    assert len(labels) == len(set(labels)) == 4
    assert all(labels)


def test_unmerge_all_snapshot() -> None:
    timeline = [
        {"op": "scan", "full_scans": 2, "label": "merged"},
        {"op": "unmerge_all", "label": "unmerged"},
        {"op": "scan", "full_scans": 2, "label": "again"},
    ]
    by = snaps(run_scenario(scenario(timeline)))
    assert by["merged"]["global"]["pages_shared"] == 4
    assert by["merged"]["global"]["pages_sharing"] == 12
    assert by["merged"]["memory"]["ksm_pages"] == 4
    unmerged = by["unmerged"]["global"]
    assert unmerged == {
        "pages_shared": 0,
        "pages_sharing": 0,
        "pages_unshared": 0,
        "pages_volatile": 0,
        "full_scans": 0,
        "run": 0,
    }
    assert by["unmerged"]["memory"]["ksm_pages"] == 0
    assert by["unmerged"]["memory"]["anon_pages"] == 16
    # KSM starts over: full_scans counts from 0 again and the pages merge again.
    assert by["again"]["global"]["full_scans"] == 2
    assert by["again"]["global"]["pages_shared"] == 4


def test_unmerge_all_without_snapshot() -> None:
    timeline = [{"op": "scan", "label": "s"}, {"op": "unmerge_all", "snapshot": False}]
    assert [s["label"] for s in run_scenario(scenario(timeline))["snapshots"]] == ["s"]


# --------------------------------------------------------------------------------------------------
# Digests


def test_digest_survives_merge_and_unmerge_but_not_a_write() -> None:
    timeline = [
        {"op": "digest", "proc": "a"},
        {"op": "scan", "full_scans": 2, "label": "merged", "expect": {"pages_sharing": 12}},
        {"op": "digest", "proc": "a"},
        {"op": "unmerge_all", "label": "unmerged"},
        {"op": "digest", "proc": "a"},
        {"op": "write", "proc": "a", "value": 1, "start": 3, "count": 1},
        {"op": "digest", "proc": "a"},
    ]
    result = run_scenario(scenario(timeline))
    assert result["ok"] is True
    digests = result["digests"]
    assert [(d["proc"], d["region"], d["after_op"]) for d in digests] == [
        ("a", "buf", 0),
        ("a", "buf", 2),
        ("a", "buf", 4),
        ("a", "buf", 6),
    ]
    before, merged, unmerged, written = (d["sha256"] for d in digests)
    expected = hashlib.sha256(
        b"".join(page_bytes("repeat:4", i, proc="a", region="buf") for i in range(8))
    ).hexdigest()
    assert before == expected
    assert merged == before  # KSM keeps every byte
    assert unmerged == before
    assert written != before
    page3 = bytearray(page_bytes("repeat:4", 3, proc="a", region="buf"))
    page3[2048] = 1
    pages = [page_bytes("repeat:4", i, proc="a", region="buf") for i in range(8)]
    pages[3] = bytes(page3)
    assert written == hashlib.sha256(b"".join(pages)).hexdigest()


def test_digest_of_every_process_and_region() -> None:
    result = run_scenario(scenario([{"op": "digest"}]))
    assert [(d["proc"], d["region"]) for d in result["digests"]] == [("a", "buf"), ("b", "buf")]
    assert result["digests"][0]["sha256"] == result["digests"][1]["sha256"]


# --------------------------------------------------------------------------------------------------
# repeat and fork


def test_repeat_expansion_runs() -> None:
    timeline = [
        {
            "op": "repeat",
            "times": 3,
            "start": 1,
            "var": "n",
            "actions": [
                {"op": "fork", "proc": "a", "child": "kid{n}"},
                {"op": "write", "proc": "kid{n}", "value": "{n}", "start": "{n}", "count": 1},
                {"op": "scan", "label": "after-{n}"},
            ],
        },
        {"op": "digest", "region": "buf"},
    ]
    result = run_scenario(scenario(timeline))
    assert [s["label"] for s in result["snapshots"]] == ["after-1", "after-2", "after-3"]
    assert [s["after_op"] for s in result["snapshots"]] == [2, 5, 8]
    assert list(result["processes"]) == ["a", "b", "kid1", "kid2", "kid3"]
    digests = {d["proc"]: d["sha256"] for d in result["digests"]}
    assert digests["a"] == digests["b"]
    assert len({digests["a"], digests["kid1"], digests["kid2"], digests["kid3"]}) == 4


def test_fork_repeat_example() -> None:
    result = run_scenario(load_scenario(ROOT / "examples" / "fork_repeat.toml"))
    assert [s["label"] for s in result["snapshots"]] == [
        "before-fork",
        "after-fork-1",
        "after-fork-2",
        "after-fork-3",
    ]
    assert set(result["processes"]) == {"parent", "child1", "child2", "child3"}
    assert len({d["sha256"] for d in result["digests"]}) == 4


def test_fork_child_inherits_regions_at_the_same_addresses() -> None:
    processes = [
        {
            "name": "parent",
            "regions": [
                {"name": "heap", "pages": 6, "fill": "repeat:3"},
                {"name": "stack", "pages": 2, "fill": "unique"},
            ],
        }
    ]
    timeline = [{"op": "fork", "proc": "parent", "child": "child"}, {"op": "digest"}]
    result, host = run_with_host(scenario(timeline, processes))
    regions = result["processes"]["parent"]["regions"]
    assert result["processes"]["child"]["regions"] == regions
    assert list(regions) == ["heap", "stack"]
    for name, region in regions.items():
        for i in range(region["pages"]):
            addr = region["address"] + i * PAGE
            assert peek_user_page(host.proc("child").mm, addr) == peek_user_page(
                host.proc("parent").mm, addr
            ), (name, i)
    digests = {(d["proc"], d["region"]): d["sha256"] for d in result["digests"]}
    assert digests["parent", "heap"] == digests["child", "heap"]
    assert digests["parent", "stack"] == digests["child", "stack"]


def test_unique_fill_in_a_forked_child_uses_the_childs_name() -> None:
    processes = [{"name": "parent", "regions": [{"name": "heap", "pages": 4, "fill": "unique"}]}]
    timeline = [
        {"op": "fork", "proc": "parent", "child": "kid"},
        {"op": "fill", "proc": "kid", "region": "heap", "pattern": "unique", "salt": "s"},
    ]
    result, host = run_with_host(scenario(timeline, processes))
    base = result["processes"]["kid"]["regions"]["heap"]["address"]
    for i in range(4):
        kid = peek_user_page(host.proc("kid").mm, base + i * PAGE)
        parent = peek_user_page(host.proc("parent").mm, base + i * PAGE)
        assert kid == page_bytes("unique", i, proc="kid", region="heap", salt="s")
        assert kid is not None and bytes(kid).startswith(f"U|s|kid|heap|{i}|".encode())
        assert parent == page_bytes("unique", i, proc="parent", region="heap")
        assert kid != parent


def test_exited_processes_stay_in_the_result() -> None:
    timeline = [{"op": "exit", "proc": "a"}, {"op": "snapshot", "label": "s"}]
    result = run_scenario(scenario(timeline))
    assert set(result["processes"]) == {"a", "b"}
    assert result["snapshots"][0]["memory"]["anon_pages"] == 8


# --------------------------------------------------------------------------------------------------
# read, fill, munmap


def test_read_of_untouched_pages_maps_the_zero_page_and_is_not_scanned() -> None:
    processes = [{"name": "a", "regions": [{"name": "buf", "pages": 8}]}]
    timeline = [
        {"op": "read"},
        {"op": "scan", "full_scans": 2, "label": "read"},
        {"op": "write", "value": 7, "start": 0, "count": 2},
        {"op": "scan", "full_scans": 2, "label": "written"},
    ]
    result, host = run_with_host(scenario(timeline, processes))
    by = snaps(result)
    g = by["read"]["global"]
    assert g["pages_volatile"] == 0
    assert g["pages_unshared"] == g["pages_shared"] == g["pages_sharing"] == 0
    assert by["read"]["memory"]["anon_pages"] == 0  # zero page: no frame allocated
    # The two written pages are now anonymous, equal, and merge into one KSM page.
    w = by["written"]["global"]
    assert (w["pages_shared"], w["pages_sharing"], w["pages_volatile"]) == (1, 1, 0)
    assert by["written"]["memory"]["anon_pages"] == 1
    address = result["processes"]["a"]["regions"]["buf"]["address"]
    assert peek_user_page(host.proc("a").mm, address + 5 * PAGE) == ZERO_PAGE_BYTES


def test_fill_skips_munmapped_pages() -> None:
    processes = [{"name": "a", "regions": [{"name": "buf", "pages": 8, "fill": "unique"}]}]
    timeline = [
        {"op": "munmap", "start": 2, "count": 3},
        {"op": "snapshot", "label": "unmapped"},
        {"op": "fill", "pattern": "b"},
        {"op": "write", "value": 1},
        {"op": "read"},
        {"op": "madvise", "advice": "unmergeable"},
        {"op": "snapshot", "label": "filled"},
        {"op": "digest"},
    ]
    result, host = run_with_host(scenario(timeline, processes))
    by = snaps(result)
    assert by["unmapped"]["memory"]["anon_pages"] == 5
    assert by["filled"]["memory"]["anon_pages"] == 5  # the hole stays a hole
    mm = host.proc("a").mm
    address = result["processes"]["a"]["regions"]["buf"]["address"]
    for i in range(8):
        page = peek_user_page(mm, address + i * PAGE)
        if 2 <= i < 5:
            assert page is None
        else:
            assert page is not None and page[0] == ord("b") and page[2048] == 1
    assert host.fill("a", "buf", "c") == 5
    # The region keeps its name and range in the result.
    assert result["processes"]["a"]["regions"]["buf"]["pages"] == 8


def test_regions_are_placed_top_down() -> None:
    processes = [
        {
            "name": "a",
            "regions": [
                {"name": "r1", "pages": 4},
                {"name": "r2", "pages": 8},
                {"name": "r3", "pages": 2},
            ],
        },
        {"name": "b", "regions": [{"name": "only", "pages": 3}]},
    ]
    timeline = [{"op": "mmap", "proc": "a", "region": {"name": "r4", "pages": 1}}]
    result = run_scenario(scenario(timeline, processes))
    regions = result["processes"]["a"]["regions"]
    assert list(regions) == ["r1", "r2", "r3", "r4"]
    addrs = [(r["address"], r["pages"]) for r in regions.values()]
    for (upper, _), (lower, lower_pages) in itertools.pairwise(addrs):
        assert lower + lower_pages * PAGE <= upper  # later regions lower, not overlapping
    # Each new mapping sits right below the previous one (highest free gap).
    for (upper, _), (lower, lower_pages) in itertools.pairwise(addrs):
        assert lower + lower_pages * PAGE == upper
    # A fresh address space starts at the same mmap base.
    assert result["processes"]["b"]["regions"]["only"]["address"] + 3 * PAGE == (
        regions["r1"]["address"] + 4 * PAGE
    )


def test_munmap_hole_is_reused_by_a_later_mapping_that_fits() -> None:
    processes = [
        {
            "name": "a",
            "regions": [
                {"name": "r1", "pages": 4},
                {"name": "r2", "pages": 8},
                {"name": "r3", "pages": 2},
            ],
        }
    ]
    timeline = [
        {"op": "munmap", "region": "r2"},
        {"op": "mmap", "region": {"name": "r4", "pages": 5}},
        {"op": "mmap", "region": {"name": "r5", "pages": 3}},
        {"op": "mmap", "region": {"name": "r6", "pages": 1}},
    ]
    regions = run_scenario(scenario(timeline, processes))["processes"]["a"]["regions"]
    r1, r2, r3 = (regions[n]["address"] for n in ("r1", "r2", "r3"))
    assert regions["r4"]["address"] == r1 - 5 * PAGE  # top of r2's hole
    assert regions["r5"]["address"] == r2  # the rest of the hole
    assert regions["r6"]["address"] == r3 - PAGE  # no room left: below r3


def test_a_later_region_is_scanned_first() -> None:
    """ksmd walks an mm in ascending addresses: the later (lower) region's pages go first."""
    processes = [
        {
            "name": "a",
            "regions": [
                {"name": "first", "pages": 4, "fill": "repeat:1"},
                {"name": "second", "pages": 4, "fill": "repeat:1"},
            ],
        }
    ]
    regions = run_scenario(scenario([], processes))["processes"]["a"]["regions"]
    assert regions["second"]["address"] < regions["first"]["address"]


# --------------------------------------------------------------------------------------------------
# Invariant checking


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_check_runs_clean_on_the_examples(example: Path) -> None:
    checked = run_scenario(load_scenario(example), check=True)
    assert checked["ok"] is True
    assert checked["errors"] == []
    plain = run_scenario(load_scenario(example))
    assert without_wall_time(checked) == without_wall_time(plain)


def test_check_runs_clean_on_fork_munmap_and_unmerge() -> None:
    timeline = [
        {"op": "scan", "full_scans": 2, "label": "merged"},
        {"op": "fork", "proc": "a", "child": "c"},
        {"op": "munmap", "proc": "c", "start": 1, "count": 2},
        {"op": "write", "proc": "b", "value": 9, "stride": 3},
        {"op": "scan", "full_scans": 2, "label": "again"},
        {"op": "exit", "proc": "a"},
        {"op": "scan", "full_scans": 2, "label": "exited"},
        {"op": "unmerge_all", "label": "unmerged"},
    ]
    result = run_scenario(scenario(timeline), check=True)
    assert result["ok"] is True


# --------------------------------------------------------------------------------------------------
# Known bugs


def _timeout_scan(*before: dict[str, Any], expect: int) -> Scenario:
    processes = [{"name": "a", "regions": [{"name": "buf", "pages": 4, "fill": "repeat:2"}]}]
    timeline = [
        *before,
        {"op": "exit"},
        {
            "op": "scan",
            "full_scans": 2,
            "snapshot_each": True,
            "label": "s",
            "allow_timeout": True,
            "expect": {"full_scans": expect},
        },
    ]
    return scenario(timeline, processes)


def test_snapshot_each_expect_when_no_scan_completes() -> None:
    try:
        result = run_scenario(_timeout_scan(expect=2))
    except RunError:
        return
    assert result["ok"] is False


def test_snapshot_each_expect_is_not_checked_against_another_snapshot() -> None:
    result = run_scenario(_timeout_scan({"op": "snapshot", "label": "pre"}, expect=0))
    # 'pre' reads full_scans 0 and so satisfies the expectation by accident; the scan itself
    # took no snapshot, so its expectation cannot have held.
    assert result["ok"] is False
    assert all(f["label"] != "pre" for f in result["expect_failures"])


def test_scan_action_keeps_ksmds_sleeps_between_full_scans() -> None:
    processes = [
        {"name": name, "regions": [{"name": "buf", "pages": 8, "fill": "repeat:4"}]}
        for name in ("a", "b")
    ]
    sc = scenario([{"op": "scan", "full_scans": 3}], processes, machine={"ram_pages": 4096})
    result = run_scenario(sc)

    host = Host("keyhole", ram_pages=4096)
    host.set_tunable("pages_to_scan", 100000)
    host.set_tunable("sleep_millisecs", 20)
    for name in ("a", "b"):
        host.spawn(name)
        host.mmap(name, "buf", 8)
        host.fill(name, "buf", "repeat:4")
    host.scan(3)
    assert host.counters() == result["snapshots"][0]["global"]
    assert result["sim_time_s"] == pytest.approx(host.sim_time_s)


def test_sample_every_takes_the_samples_due_and_nothing_else() -> None:
    doc = {
        "processes": [
            {"name": "a", "regions": [{"name": "r", "pages": 64, "fill": "repeat:4"}]},
            {"name": "b", "regions": [{"name": "r", "pages": 64, "fill": "repeat:4"}]},
        ],
        "timeline": [
            {"op": "churn", "proc": "a", "writes_per_s": 200, "pattern": "unique"},
            {"op": "run", "seconds": 3.0},
        ],
    }
    every = run_scenario(parse_scenario(doc, "sampled"))
    sparse = run_scenario(parse_scenario(doc, "sampled"), sample_every_s=0.5)
    full = every["timeseries"]
    assert len(full) > 100
    # The same run (sampling changes nothing else), its series thinned to the first sample
    # at or after each half second since the last one taken.
    assert {k: v for k, v in sparse.items() if k not in ("timeseries", "wall_time_s")} == {
        k: v for k, v in every.items() if k not in ("timeseries", "wall_time_s")
    }
    expected, due = [], 0.0
    for sample in full:
        if sample["t_s"] >= due - 1e-9:
            expected.append(sample)
            due = sample["t_s"] + 0.5
    assert sparse["timeseries"] == expected
    assert 6 <= len(expected) <= 7
