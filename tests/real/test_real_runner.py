"""``ksmsim real`` on the running kernel: results, exact stops, and deterministic counters.

Every test here drives the machine's KSM (serially) and checks, through the ``default_state``
fixture, that it is left stopped with its default tunables.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ksmsim.real.runner import run_real
from ksmsim.workload.patterns import PAGE_SIZE, page_bytes
from ksmsim.workload.scenario import parse_scenario
from tests.real.conftest import ksmsim, needs_real_kernel, one_line, write_scenario

pytestmark = [pytest.mark.realkernel, needs_real_kernel, pytest.mark.usefixtures("default_state")]

SMALL: dict[str, Any] = {
    "name": "small",
    "processes": [
        {"name": "a", "regions": [{"name": "buf", "pages": 4, "fill": 7}]},
        {"name": "b", "regions": [{"name": "buf", "pages": 4, "fill": 7}]},
    ],
    "timeline": [
        {"op": "scan", "label": "first", "expect": {"pages_shared": 0, "pages_volatile": 8}},
        {
            "op": "scan",
            "label": "second",
            "expect": {
                "pages_shared": 1,
                "pages_sharing": 7,
                "pages_unshared": 0,
                "full_scans": 2,
                "pages_scanned": 16,
                "proc:a:ksm_merging_pages": 4,
                "proc:b:ksm_rmap_items": 4,
            },
        },
    ],
}
"""Two processes with four identical pages each: nothing merges in the first full scan (the
checksum must hold still for one scan), all eight pages share one KSM page after the second."""

FLOWS: dict[str, Any] = {
    "name": "flows",
    "processes": [
        {
            "name": "a",
            "regions": [
                {"name": "dup", "pages": 16, "fill": 7},
                {"name": "uniq", "pages": 8, "fill": "unique"},
                {"name": "rep", "pages": 12, "fill": "repeat:3", "salt": "s"},
            ],
        },
        {
            "name": "b",
            "regions": [
                {"name": "dup", "pages": 16, "fill": 7},
                {"name": "rep", "pages": 12, "fill": "repeat:3", "salt": "s"},
            ],
        },
    ],
    "timeline": [
        {"op": "scan", "label": "s1", "full_scans": 2},
        {"op": "fork", "proc": "a", "child": "c"},
        {"op": "fill", "proc": "c", "region": "uniq", "pattern": "unique"},
        {"op": "write", "proc": "b", "region": "dup", "value": 1, "count": 8, "stride": 2},
        {"op": "munmap", "proc": "a", "region": "dup", "start": 4, "count": 4},
        {"op": "madvise", "proc": "b", "region": "rep", "advice": "unmergeable", "start": 6},
        {"op": "read", "proc": "b", "region": "dup"},
        {"op": "mmap", "proc": ["a", "b"], "region": {"name": "late", "pages": 4, "fill": "zero"}},
        {"op": "scan", "label": "s2", "full_scans": 2, "snapshot_each": True},
        {"op": "digest"},
        {"op": "exit", "proc": "a"},
        {"op": "madvise", "proc": "c", "region": "dup", "advice": "dontneed", "count": 2},
        {"op": "scan", "label": "s3", "full_scans": 2},
        {"op": "set", "tunables": {"max_page_sharing": 2}},
        {"op": "unmerge_all", "label": "u"},
        {"op": "set", "tunables": {"max_page_sharing": 2, "use_zero_pages": 1}},
        {"op": "scan", "label": "s4", "full_scans": 2},
        {"op": "digest"},
    ],
}
"""Every memory operation the real runner supports, between scans."""


def run(doc: dict[str, Any]) -> dict[str, Any]:
    """Run a scenario document on the kernel, in-process, and return the result."""
    return run_real(parse_scenario(doc, str(doc.get("name", "test"))), notify=print)


def counters(result: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Return each snapshot's label, global counters and per-process counters."""
    return [(s["label"], s["global"], s["procs"]) for s in result["snapshots"]]


def digest_of(pages: list[bytes]) -> str:
    """Return the sha256 of pages in order."""
    h = hashlib.sha256()
    for page in pages:
        h.update(page)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# End to end


def test_small_scenario_end_to_end(tmp_path: Path) -> None:
    """Two processes x four identical pages: one KSM page after two full scans, exact stops."""
    out = tmp_path / "result.json"
    proc = ksmsim("real", write_scenario(tmp_path, SMALL), "-o", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["expect_failures"] == []
    assert result["source"] == "kernel"
    assert result["kernel"] == os.uname().release
    assert result["scenario"] == "small"
    assert result["schema_version"] == 1
    assert result["tunables"]["pages_to_scan"] == 100000
    assert result["tunables"]["sleep_millisecs"] == 20
    assert result["machine"]["cpus"] >= 1 and result["machine"]["ram_pages"] > 0

    for name in ("a", "b"):
        region = result["processes"][name]["regions"]["buf"]
        assert region["pages"] == 4
        assert region["address"] > 0 and region["address"] % PAGE_SIZE == 0

    labels = [s["label"] for s in result["snapshots"]]
    assert labels == ["first", "second"]
    second = result["snapshots"][1]
    assert second["after_op"] == 1
    assert second["global"]["pages_shared"] == 1
    assert second["global"]["pages_sharing"] == 7
    assert second["global"]["run"] == 0
    assert second["timed_out"] is False
    assert set(second["procs"]) == {"a", "b"}
    assert second["procs"]["a"]["ksm_mergeable"] == "yes"
    assert second["procs"]["a"]["ksm_merge_any"] == "no"
    assert {"free_pages", "anon_pages"} <= set(second["memory"])

    assert len(result["scans"]) == 2
    for scan in result["scans"]:
        assert set(scan) >= {"path", "label", "full_scans", "exact", "ksmd_cpu_s", "timed_out"}
        assert scan["exact"] == [True], "ksmd was not stopped exactly at the scan boundary"
        assert scan["timed_out"] is False
        assert scan["completed"] == scan["full_scans"] == 1
        assert len(scan["ksmd_cpu_s"]) == 1 and scan["ksmd_cpu_s"][0] >= 0
    assert result["errors"] == []


def test_failed_expectation_exits_1(tmp_path: Path) -> None:
    """A failed expectation is printed on stderr and the exit status is 1."""
    doc = json.loads(json.dumps(SMALL))
    doc["timeline"][1]["expect"] = {"pages_shared": 5}
    out = tmp_path / "result.json"
    proc = ksmsim("real", write_scenario(tmp_path, doc), "-o", out)
    assert proc.returncode == 1
    assert one_line(proc.stderr) == "expect failed at second: pages_shared expected 5, got 1"
    result = json.loads(out.read_text())
    assert result["ok"] is False
    assert result["expect_failures"] == [
        {"label": "second", "counter": "pages_shared", "expected": 5, "actual": 1}
    ]


def test_snapshot_each_stops_exactly_after_every_pass() -> None:
    """With snapshot_each, ksmd is stopped after each pass, and each stop is exact."""
    doc = json.loads(json.dumps(SMALL))
    doc["timeline"] = [{"op": "scan", "label": "s", "full_scans": 3, "snapshot_each": True}]
    result = run(doc)
    assert [s["label"] for s in result["snapshots"]] == ["s.1", "s.2", "s.3"]
    assert [s["global"]["full_scans"] for s in result["snapshots"]] == [1, 2, 3]
    assert [s["global"]["pages_scanned"] for s in result["snapshots"]] == [8, 16, 24]
    scan = result["scans"][0]
    assert scan["exact"] == [True, True, True]
    assert scan["completed"] == 3
    assert len(scan["ksmd_cpu_s"]) == len(scan["wall_s"]) == 3


# --------------------------------------------------------------------------------------------------
# Memory operations


def test_flows_are_deterministic_across_two_runs() -> None:
    """Fork, exit, munmap, madvise, write, read, mmap, set and unmerge_all give the same counters
    (and digests) in two runs."""
    first = run(FLOWS)
    second = run(FLOWS)
    assert counters(first) == counters(second)
    assert [d["sha256"] for d in first["digests"]] == [d["sha256"] for d in second["digests"]]
    assert all(all(s["exact"]) for s in first["scans"] + second["scans"])

    snaps = {s["label"]: s for s in first["snapshots"]}
    # After two scans: the 32 "dup" pages share one KSM page, the 24 "rep" pages three.
    assert snaps["s1"]["global"]["pages_shared"] == 4
    assert snaps["s1"]["global"]["pages_sharing"] == 52
    assert snaps["s1"]["global"]["pages_unshared"] == 8  # a's unique pages
    # The exited process is gone from the per-process counters, not from the processes.
    assert set(snaps["s3"]["procs"]) == {"b", "c"}
    assert set(first["processes"]) == {"a", "b", "c"}
    # The forked child inherits its parent's regions at the same addresses.
    a_regions = first["processes"]["a"]["regions"]
    c_regions = first["processes"]["c"]["regions"]
    for name, region in c_regions.items():
        assert a_regions[name] == region
    # max_page_sharing can't change while pages are shared: EBUSY, recorded, not fatal.
    assert [e["kind"] for e in first["errors"]] == ["sysfs"]
    assert "EBUSY" in first["errors"][0]["message"]
    assert first["errors"][0]["fatal"] is False
    assert first["ok"] is True
    # unmerge_all resets full_scans; pages_scanned keeps counting from the scenario's start.
    assert snaps["u"]["global"]["full_scans"] == 0
    assert snaps["u"]["global"]["pages_shared"] == 0
    assert snaps["u"]["global"]["pages_scanned"] == snaps["s3"]["global"]["pages_scanned"]
    # With use_zero_pages, the zero-filled "late" pages merge with the kernel's zero page.
    assert snaps["s4"]["global"]["ksm_zero_pages"] > 0
    assert snaps["s4"]["global"]["stable_node_dups"] > 0  # max_page_sharing=2 makes chains


def test_munmap_hole_is_reused_by_a_later_mapping() -> None:
    """A region mapped after a munmap lands in the hole, as the format's layout says."""
    result = run(FLOWS)
    a = result["processes"]["a"]["regions"]
    assert a["late"]["address"] == a["dup"]["address"] + 4 * PAGE_SIZE
    # Regions mapped later sit below the earlier ones.
    assert a["rep"]["address"] < a["uniq"]["address"] < a["dup"]["address"]


def test_digests_are_the_exact_bytes_of_the_format() -> None:
    """A digest is the sha256 of the format's page bytes; a forked child's unique fill uses its
    own name; untouched pages hash as zeros; unmapped pages are skipped."""
    doc = {
        "name": "digests",
        "processes": [
            {
                "name": "p",
                "regions": [
                    {"name": "u", "pages": 5, "fill": "unique", "salt": "x"},
                    {"name": "r", "pages": 6, "fill": "repeat:4"},
                    {"name": "blank", "pages": 3},
                ],
            }
        ],
        "timeline": [
            {"op": "fork", "proc": "p", "child": "kid"},
            {"op": "fill", "proc": "kid", "region": "u", "pattern": "unique", "salt": "x"},
            {"op": "munmap", "proc": "p", "region": "r", "start": 1, "count": 2},
            {"op": "write", "proc": "p", "region": "r", "value": 9, "offset": 0},
            {"op": "digest"},
        ],
    }
    result = run(doc)
    got = {(d["proc"], d["region"]): d["sha256"] for d in result["digests"]}

    def unique(proc: str) -> str:
        """Return the digest of region u filled with unique pages by ``proc``."""
        return digest_of(
            [page_bytes("unique", i, proc=proc, region="u", salt="x") for i in range(5)]
        )

    assert got[("p", "u")] == unique("p")
    assert got[("kid", "u")] == unique("kid")
    written = [
        bytes([9]) + page_bytes("repeat:4", i, proc="p", region="r")[1:] for i in (0, 3, 4, 5)
    ]
    assert got[("p", "r")] == digest_of(written)
    assert got[("kid", "r")] == digest_of(
        [page_bytes("repeat:4", i, proc="kid", region="r") for i in range(6)]
    )
    assert got[("p", "blank")] == digest_of([bytes(PAGE_SIZE)] * 3)


# --------------------------------------------------------------------------------------------------
# Scans that cannot complete, refused tunables, fatal errors


def test_scan_without_mergeable_memory_times_out() -> None:
    """No mm registered with KSM: full_scans stops, the scan ends after timeout_s, timed out."""
    doc = {
        "name": "no-mm",
        "processes": [{"name": "p", "regions": [{"name": "r", "pages": 2, "mergeable": False}]}],
        "timeline": [
            {"op": "scan", "label": "t", "timeout_s": 0.3, "allow_timeout": True},
            {"op": "scan", "label": "t2", "timeout_s": 0.3},
        ],
    }
    result = run(doc)
    first, second = result["scans"]
    assert second["timed_out"] is True
    assert first["timed_out"] is True and first["completed"] == 0 and first["exact"] == []
    assert [s["timed_out"] for s in result["snapshots"]] == [True, True]
    assert [e["kind"] for e in result["errors"]] == ["scan_timeout", "scan_timeout"]
    assert [e["fatal"] for e in result["errors"]] == [False, True]
    assert result["ok"] is False
    assert result["snapshots"][0]["procs"]["p"]["ksm_mergeable"] == "no"


def test_kernel_refusals_of_set_are_recorded_not_fatal() -> None:
    """EINVAL (max_page_sharing < 2) from a set is an error entry, and the run goes on."""
    doc = json.loads(json.dumps(SMALL))
    doc["timeline"] = [
        {"op": "set", "tunables": {"max_page_sharing": 1, "pages_to_scan": 50}},
        {"op": "snapshot", "label": "after"},
    ]
    result = run(doc)
    assert len(result["errors"]) == 1
    assert "max_page_sharing" in result["errors"][0]["message"]
    assert "EINVAL" in result["errors"][0]["message"]
    assert result["ok"] is True


def test_fatal_error_mid_run_gives_partial_result(tmp_path: Path) -> None:
    """A range past a region's end stops the run: exit 2, one line, the partial result kept."""
    doc = json.loads(json.dumps(SMALL))
    doc["timeline"] = [
        {"op": "snapshot", "label": "before"},
        {"op": "fill", "proc": "a", "region": "buf", "pattern": 1, "start": 9},
    ]
    out = tmp_path / "partial.json"
    proc = ksmsim("real", write_scenario(tmp_path, doc), "-o", out)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "timeline[1]" in line and "start 9 is past its end" in line
    partial = json.loads(out.read_text())
    assert partial["ok"] is False
    assert [s["label"] for s in partial["snapshots"]] == ["before"]
    assert partial["errors"][-1]["fatal"] is True


def test_process_that_exited_cannot_be_used(tmp_path: Path) -> None:
    """Naming an exited process is a fatal error, as on the model."""
    doc = json.loads(json.dumps(SMALL))
    doc["timeline"] = [{"op": "exit", "proc": "a"}, {"op": "read", "proc": "a"}]
    proc = ksmsim("real", write_scenario(tmp_path, doc))
    assert proc.returncode == 2
    assert "process 'a' has exited" in one_line(proc.stderr)


def test_refused_start_tunable_restores_and_exits_2(tmp_path: Path) -> None:
    """A starting tunable the kernel refuses (max_page_sharing=1: EINVAL) stops the run."""
    doc = json.loads(json.dumps(SMALL))
    doc["tunables"] = {"max_page_sharing": 1}
    proc = ksmsim("real", write_scenario(tmp_path, doc))
    assert proc.returncode == 2
    assert "tunables.max_page_sharing" in one_line(proc.stderr)


def test_exact_flag_tells_whether_ksmd_stopped_at_the_boundary() -> None:
    """With sleep_millisecs = 0 ksmd starts the next scan at once and usually runs past the
    boundary; ``exact`` says whether it did (full_scans ends where asked, or not)."""
    doc = json.loads(json.dumps(SMALL))
    doc["tunables"] = {"sleep_millisecs": 0}
    doc["timeline"] = [{"op": "scan", "label": "s", "full_scans": 5}]
    notices: list[str] = []
    result = run_real(parse_scenario(doc, "zero-sleep"), notify=notices.append)
    full_scans = result["snapshots"][0]["global"]["full_scans"]
    assert full_scans >= 5
    assert result["scans"][0]["exact"] == [full_scans == 5]
    assert bool(notices) == (full_scans != 5)
