"""The ``ksmsim`` command line: exit statuses, one-line errors, and the result document.

Most tests call ``ksmsim.cli.main`` in-process and read stdout/stderr through ``capsys``; two
run the installed entry points in a subprocess (the ``ksmsim`` console script and
``python -m ksmsim``). Scenario files live in ``examples/`` and ``tests/scenarios/model/``;
variants are written to ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import ksmsim
from ksmsim.cli import main
from ksmsim.demo import demo_scenario
from ksmsim.kernel.profile import PLANNED_PROFILES, PROFILES
from ksmsim.workload.runner import run_scenario

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
SCENARIOS = ROOT / "tests" / "scenarios" / "model"

# The format's default kernel. While it is not modelled, a scenario naming no kernel must be
# refused (exit 2) rather than run on another profile; once it is, such a scenario runs on it.
DEFAULT_KERNEL = "v6.18"
DEFAULT_MODELLED = DEFAULT_KERNEL in PROFILES
UNMODELLED = ["bogus", *sorted(PLANNED_PROFILES)]

KEYHOLE_GLOBAL = {
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "run",
}
MEMORY_FIELDS = {
    "free_pages",
    "anon_pages",
    "ksm_pages",
    "swap_cache_pages",
    "swap_used_pages",
    "pages_swapped_out",
    "oom_events",
}


# --------------------------------------------------------------------------------------------------
# Helpers


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``ksmsim ARGS`` in-process; return (status, stdout, stderr)."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    """Assert that stderr is exactly one line without a traceback and return it."""
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    return lines[0]


def base(name: str = "cli_expect.toml") -> dict[str, Any]:
    """Return a scenario of tests/scenarios/model as a dict."""
    return tomllib.loads((SCENARIOS / name).read_text())


def write(tmp_path: Path, doc: dict[str, Any], name: str = "scenario.json") -> Path:
    """Write a scenario document as JSON and return its path."""
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def small(**top: Any) -> dict[str, Any]:
    """Return a small keyhole scenario (one process, four pages of two contents) plus ``top``."""
    doc: dict[str, Any] = {
        "kernel": "keyhole",
        "processes": [
            {"name": "a", "regions": [{"name": "buf", "pages": 4, "fill": "repeat:2"}]},
        ],
        "timeline": [{"op": "scan", "full_scans": 2, "label": "merged"}],
    }
    doc.update(top)
    return doc


def assert_result_format(doc: dict[str, Any]) -> None:
    """Check a result document has the scenario format's fields with the right shapes."""
    for key in (
        "scenario",
        "kernel",
        "tunables",
        "processes",
        "snapshots",
        "ok",
        "expect_failures",
        "wall_time_s",
    ):
        assert key in doc, key
    assert isinstance(doc["scenario"], str) and doc["scenario"]
    assert doc["kernel"] == "keyhole"
    assert isinstance(doc["tunables"], dict)
    assert all(isinstance(v, int) for v in doc["tunables"].values())
    assert isinstance(doc["processes"], dict) and doc["processes"]
    for proc in doc["processes"].values():
        assert proc["regions"]
        for region in proc["regions"].values():
            assert isinstance(region["address"], int)
            assert region["address"] > 0 and region["address"] % 4096 == 0
            assert isinstance(region["pages"], int) and region["pages"] > 0
    assert isinstance(doc["snapshots"], list) and doc["snapshots"]
    for snap in doc["snapshots"]:
        for key in ("label", "after_op", "sim_time_s", "global", "procs", "memory"):
            assert key in snap, key
        assert isinstance(snap["label"], str)
        assert isinstance(snap["after_op"], int)
        assert isinstance(snap["sim_time_s"], int | float) and snap["sim_time_s"] >= 0
        # Counters the profile lacks are absent, not zero.
        assert set(snap["global"]) == KEYHOLE_GLOBAL
        assert all(isinstance(v, int) for v in snap["global"].values())
        assert isinstance(snap["procs"], dict)
        assert set(snap["memory"]) == MEMORY_FIELDS
    labels = [s["label"] for s in doc["snapshots"]]
    assert len(labels) == len(set(labels))
    assert isinstance(doc["ok"], bool)
    assert isinstance(doc["expect_failures"], list)
    assert isinstance(doc["wall_time_s"], float) and doc["wall_time_s"] >= 0


# --------------------------------------------------------------------------------------------------
# demo and profiles


def test_demo_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "demo")
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("ksmsim demo: 3 guests")
    assert "kernel profile keyhole" in lines[0]
    header = next(line for line in lines if line.startswith("snapshot"))
    assert header.split() == [
        "snapshot",
        "scans",
        "shared",
        "sharing",
        "unshared",
        "volatile",
        "saved",
        "KiB",
    ]
    # One row per snapshot, with the counters of the result document.
    result = run_scenario(demo_scenario())
    for snap in result["snapshots"]:
        row = next(line for line in lines if line.split()[:1] == [snap["label"]])
        g = snap["global"]
        numbers = [int(x) for x in row.split()[1:7]]
        assert numbers == [
            g["full_scans"],
            g["pages_shared"],
            g["pages_sharing"],
            g["pages_unshared"],
            g["pages_volatile"],
            g["pages_sharing"] * 4,
        ]
    assert any(line.startswith("ksmd did ") for line in lines)


def test_demo_merges_the_image(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "demo", "--json")
    assert status == 0
    doc = json.loads(out)
    assert_result_format(doc)
    snaps = {s["label"]: s["global"] for s in doc["snapshots"]}
    assert snaps["boot.1"]["pages_shared"] == 0  # the first pass only checksums
    assert snaps["boot.2"]["pages_sharing"] > 0
    assert snaps["unmerged"]["pages_shared"] == snaps["unmerged"]["full_scans"] == 0


def test_demo_json_is_valid_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "demo", "--json")
    assert status == 0
    assert err == ""
    doc = json.loads(out)
    assert doc["scenario"] == "demo"
    assert [s["label"] for s in doc["snapshots"]] == [
        "boot.1",
        "boot.2",
        "boot.3",
        "rewrite.1",
        "rewrite.2",
        "exit.1",
        "exit.2",
        "unmerged",
    ]
    assert doc["ok"] is True


def test_profiles_lists_keyhole(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "profiles")
    assert status == 0
    assert err == ""
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "keyhole" in rows
    assert "planned" not in rows["keyhole"]
    assert "4035c07a" in rows["keyhole"]
    assert set(rows) == set(PROFILES) | set(PLANNED_PROFILES)
    for name in PROFILES:
        assert "planned" not in rows[name], name
    for name in PLANNED_PROFILES:
        assert "planned" in rows[name], name
    assert DEFAULT_KERNEL in rows


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ksmsim {ksmsim.__version__}"


# --------------------------------------------------------------------------------------------------
# run: the examples and the result document


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_run_example(capsys: pytest.CaptureFixture[str], example: Path) -> None:
    status, out, err = cli(capsys, "run", example)
    assert status == 0, err
    assert err == ""
    doc = json.loads(out)
    assert_result_format(doc)
    assert doc["scenario"] == example.stem
    assert doc["ok"] is True
    assert doc["expect_failures"] == []


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "fork_repeat.toml",
        "ltp_ksm01_small.toml",
        "two_processes.toml",
    }


def test_run_ltp_ksm01_small_counters(capsys: pytest.CaptureFixture[str]) -> None:
    """LTP ksm01's expected counters at each stage (3 x 64 pages)."""
    status, out, _ = cli(capsys, "run", ROOT / "examples" / "ltp_ksm01_small.toml")
    assert status == 0
    snaps = {s["label"]: s["global"] for s in json.loads(out)["snapshots"]}
    want = {
        "stage1": (2, 190, 0),
        "stage2": (3, 189, 0),
        "stage3": (1, 191, 0),
        "stage4": (1, 190, 1),
        "unmerged": (0, 0, 0),
    }
    for label, (shared, sharing, unshared) in want.items():
        g = snaps[label]
        assert (g["pages_shared"], g["pages_sharing"], g["pages_unshared"]) == (
            shared,
            sharing,
            unshared,
        ), label
        assert g["pages_volatile"] == 0


def test_run_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "out.json"
    status, out, err = cli(capsys, "run", ROOT / "examples" / "two_processes.toml", "-o", out_file)
    assert status == 0
    assert out == "" and err == ""
    doc = json.loads(out_file.read_text())
    assert_result_format(doc)
    assert [s["label"] for s in doc["snapshots"]] == ["scan1", "scan2", "scan3"]


def test_run_output_long_option_and_dash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "long.json"
    status, _, _ = cli(capsys, "run", SCENARIOS / "cli_expect.toml", "--output", out_file)
    assert status == 0
    assert json.loads(out_file.read_text())["scenario"] == "cli_expect"
    status, out, _ = cli(capsys, "run", SCENARIOS / "cli_expect.toml", "-o", "-")
    assert status == 0
    assert json.loads(out)["scenario"] == "cli_expect"


def test_run_output_unwritable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "out.json"
    status, out, err = cli(capsys, "run", SCENARIOS / "cli_expect.toml", "-o", target)
    assert status == 2
    assert out == ""
    assert str(target) in one_line(err)


def test_run_check_option(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "run", ROOT / "examples" / "fork_repeat.toml", "--check")
    assert status == 0
    assert json.loads(out)["ok"] is True


# --------------------------------------------------------------------------------------------------
# run: expectations


def test_expect_holds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = base()
    doc["timeline"][1]["expect"] = {"pages_shared": 0, "pages_volatile": 16, "full_scans": 1}
    doc["timeline"][2]["expect"] = {
        "pages_shared": 4,
        "pages_sharing": 4,
        "pages_unshared": 8,
        "ksm_pages": 4,
        "anon_pages": 12,
    }
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 0, err
    assert err == ""
    result = json.loads(out)
    assert result["ok"] is True
    assert result["expect_failures"] == []


def test_expect_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = base()
    doc["timeline"][2]["expect"] = {"pages_shared": 5}
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 1
    line = one_line(err)
    assert "scan2" in line
    assert "pages_shared" in line
    assert "expected 5" in line
    assert "got 4" in line
    result = json.loads(out)  # the result is still printed
    assert result["ok"] is False
    assert result["expect_failures"] == [
        {"label": "scan2", "counter": "pages_shared", "expected": 5, "actual": 4}
    ]


def test_expect_failure_does_not_stop_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = base()
    doc["timeline"][1]["expect"] = {"pages_sharing": 1}
    doc["timeline"][2]["expect"] = {"pages_unshared": 0}
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert "scan1" in lines[0] and "pages_sharing" in lines[0] and "got 0" in lines[0]
    assert "scan2" in lines[1] and "pages_unshared" in lines[1] and "got 8" in lines[1]
    assert [s["label"] for s in json.loads(out)["snapshots"]] == ["scan1", "scan2"]


@pytest.mark.parametrize(
    ("bounds", "status"),
    [([3, 5], 0), ([4, 4], 0), ([0, 100], 0), ([5, 9], 1), ([0, 3], 1)],
)
def test_expect_range(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bounds: list[int], status: int
) -> None:
    doc = base()
    doc["timeline"][2]["expect"] = {"pages_shared": bounds}  # actual: 4
    got, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert got == status
    result = json.loads(out)
    if status == 0:
        assert err == ""
        assert result["ok"] is True
    else:
        line = one_line(err)
        assert "pages_shared" in line
        assert f"[{bounds[0]}, {bounds[1]}]" in line
        assert "got 4" in line
        assert result["expect_failures"][0]["expected"] == bounds


def test_expect_range_in_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = (SCENARIOS / "cli_expect.toml").read_text()
    text += '\n[[timeline]]\nop = "snapshot"\nlabel = "end"\nexpect = { pages_sharing = [1, 8] }\n'
    path = tmp_path / "range.toml"
    path.write_text(text)
    status, out, err = cli(capsys, "run", path)
    assert status == 0, err
    assert json.loads(out)["ok"] is True


def test_expect_each(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = base()
    doc["timeline"][1:] = [
        {
            "op": "scan",
            "full_scans": 3,
            "snapshot_each": True,
            "label": "s",
            "expect_each": {"pages_shared": 4},
        }
    ]
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 1
    # Only the first of the three scans leaves pages_shared at 0.
    assert one_line(err).startswith("expect failed at s.1: pages_shared expected 4, got 0")
    assert [f["label"] for f in json.loads(out)["expect_failures"]] == ["s.1"]


# --------------------------------------------------------------------------------------------------
# run: bad input


def _malformed_cases() -> list[tuple[str, str, str, list[str]]]:
    """(id, file name, text, fragments the one-line error must contain)."""
    region = '[[processes]]\nname = "a"\n[[processes.regions]]\nname = "buf"\n'
    return [
        ("bad-toml", "s.toml", 'kernel = "keyhole\n', ["invalid TOML", "line 1"]),
        ("bad-json", "s.json", '{"kernel": "keyhole",', ["invalid JSON", "line 1"]),
        (
            "unknown-top-key",
            "s.toml",
            'kernel = "keyhole"\ncolour = "blue"\n',
            ['unknown top-level key "colour"'],
        ),
        (
            "unknown-process-key",
            "s.toml",
            'kernel = "keyhole"\n[[processes]]\nname = "a"\nfoo = 1\n',
            ["processes[0]", '"foo"'],
        ),
        (
            "unknown-action-key",
            "s.toml",
            f'kernel = "keyhole"\n{region}pages = 4\n[[timeline]]\nop = "scan"\nlabl = "x"\n',
            ["timeline[0]", '"labl"', "label"],
        ),
        (
            "wrong-type-pages",
            "s.toml",
            f'kernel = "keyhole"\n{region}pages = "x"\n',
            ["processes[0].regions[0].pages", "positive integer"],
        ),
        (
            "wrong-type-full-scans",
            "s.json",
            json.dumps(small(timeline=[{"op": "scan", "full_scans": "two"}])),
            ["timeline[0].full_scans"],
        ),
        (
            "wrong-type-in-repeat",
            "s.json",
            json.dumps(
                small(
                    timeline=[
                        {
                            "op": "repeat",
                            "times": 2,
                            "actions": [{"op": "fill", "pattern": "repeat:0"}],
                        }
                    ]
                )
            ),
            ["timeline[0](i=0).actions[0].pattern"],
        ),
        (
            "unknown-op",
            "s.json",
            json.dumps(small(timeline=[{"op": "scna"}])),
            ["timeline[0].op", '"scna"'],
        ),
        (
            "unknown-counter",
            "s.json",
            json.dumps(small(timeline=[{"op": "snapshot", "expect": {"pages_shard": 1}}])),
            ["timeline[0].expect.pages_shard"],
        ),
        (
            "unknown-process",
            "s.json",
            json.dumps(small(timeline=[{"op": "exit", "proc": "zz"}])),
            ["timeline[0].proc", '"zz"'],
        ),
        (
            "unknown-kernel-in-file",
            "s.json",
            json.dumps(small(kernel="bogus")),
            ["kernel", '"bogus"'],
        ),
        (
            "top-level-not-a-table",
            "s.json",
            "[1, 2]",
            ["expected a table"],
        ),
    ]


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [case[1:] for case in _malformed_cases()],
    ids=[case[0] for case in _malformed_cases()],
)
def test_malformed_scenario(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    name: str,
    text: str,
    fragments: list[str],
) -> None:
    path = tmp_path / name
    path.write_text(text)
    status, out, err = cli(capsys, "run", path)
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert line.startswith("ksmsim: error: ")
    assert str(path) in line
    for fragment in fragments:
        assert fragment in line


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    status, out, err = cli(capsys, "run", path)
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert str(path) in line and "no such file" in line


def test_no_kernel_named(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "run", SCENARIOS / "cli_no_kernel.toml")
    if DEFAULT_MODELLED:
        assert status == 0, err
        assert json.loads(out)["kernel"] == DEFAULT_KERNEL
        return
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert DEFAULT_KERNEL in line
    assert "not modelled" in line
    assert "keyhole" in line  # says how to get a run


def test_explicit_default_kernel(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = cli(capsys, "run", write(tmp_path, small(kernel=DEFAULT_KERNEL)))
    if DEFAULT_MODELLED:
        assert status == 0, err
        assert json.loads(out)["kernel"] == DEFAULT_KERNEL
        return
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert DEFAULT_KERNEL in line and "not modelled" in line


def test_kernel_option_overrides_missing_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "run", SCENARIOS / "cli_no_kernel.toml", "--kernel", "keyhole")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["kernel"] == "keyhole"
    assert doc["snapshots"][0]["global"]["pages_shared"] == 2


def test_kernel_option_overrides_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = cli(
        capsys, "run", write(tmp_path, small(kernel="v6.18")), "--kernel", "keyhole"
    )
    assert status == 0, err
    assert json.loads(out)["kernel"] == "keyhole"


@pytest.mark.parametrize("kernel", UNMODELLED)
def test_kernel_option_unmodelled(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kernel: str
) -> None:
    status, out, err = cli(capsys, "run", write(tmp_path, small()), "--kernel", kernel)
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert kernel in line
    assert "not modelled" in line or "unknown" in line


@pytest.mark.parametrize("kernel", sorted(PLANNED_PROFILES) or UNMODELLED)
def test_file_kernel_unmodelled(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kernel: str
) -> None:
    status, out, err = cli(capsys, "run", write(tmp_path, small(kernel=kernel)))
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert kernel in line
    assert "not modelled" in line or "unknown" in line


# --------------------------------------------------------------------------------------------------
# bad command-line usage


def test_no_arguments_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys)
    assert status == 2
    assert out == ""
    assert err.strip()
    assert "Traceback" not in err


def test_no_arguments_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys)
    assert status == 2
    one_line(err)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["frobnicate"], "frobnicate"),
        (["run"], "scenario"),
        (["run", "x.toml", "--bogus"], "--bogus"),
        (["run", "x.toml", "--kernel"], "--kernel"),
        (["demo", "extra"], "extra"),
        (["--frob"], "--frob"),
    ],
    ids=[
        "unknown-command",
        "missing-scenario",
        "unknown-option",
        "option-without-value",
        "extra-arg",
        "unknown-global-option",
    ],
)
def test_bad_usage(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    status, out, err = cli(capsys, *args)
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert line.startswith("ksmsim")
    assert fragment in line


# --------------------------------------------------------------------------------------------------
# run: errors while running


def test_midrun_error_writes_partial_result(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "partial.json"
    status, out, err = cli(capsys, "run", SCENARIOS / "cli_midrun_error.toml", "-o", out_file)
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert "timeline[3]" in line
    assert "'a'" in line and "exited" in line
    assert str(out_file) in line
    doc = json.loads(out_file.read_text())
    assert_result_format(doc)
    assert [s["label"] for s in doc["snapshots"]] == ["first", "after-exit"]
    assert doc["snapshots"][0]["global"]["pages_shared"] == 2
    assert doc["ok"] is False
    fatal = [e for e in doc["errors"] if e["fatal"]]
    assert len(fatal) == 1
    assert fatal[0]["path"] == "timeline[3]"
    assert "exited" in fatal[0]["message"]
    assert "c" not in doc["processes"]


def test_midrun_error_without_output_file(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "run", SCENARIOS / "cli_midrun_error.toml")
    assert status == 2
    assert out == ""  # no half-written document on stdout
    assert "timeline[3]" in one_line(err)


def test_midrun_error_past_end_of_region(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = small(
        timeline=[
            {"op": "snapshot", "label": "before"},
            {"op": "write", "value": 1, "start": 10},
        ]
    )
    out_file = tmp_path / "partial.json"
    status, _, err = cli(capsys, "run", write(tmp_path, doc), "-o", out_file)
    assert status == 2
    line = one_line(err)
    assert "timeline[1]" in line and "past its end" in line
    assert [s["label"] for s in json.loads(out_file.read_text())["snapshots"]] == ["before"]


def test_scan_with_no_mm_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "run", SCENARIOS / "cli_no_mm.toml")
    assert status == 1
    line = one_line(err)
    assert "timeline[1]" in line and "no mm" in line
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["snapshots"][-1]["label"] == "nothing"
    assert doc["snapshots"][-1]["timed_out"] is True
    assert doc["snapshots"][-1]["global"]["full_scans"] == 0
    (error,) = doc["errors"]
    assert error["kind"] == "scan_timeout"
    assert error["path"] == "timeline[1]"
    assert error["fatal"] is True


def test_scan_with_no_mm_allow_timeout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = base("cli_no_mm.toml")
    doc["timeline"][1]["allow_timeout"] = True
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 0, err
    assert err == ""
    result = json.loads(out)
    assert result["ok"] is True
    assert result["snapshots"][-1]["timed_out"] is True
    (error,) = result["errors"]
    assert error["kind"] == "scan_timeout" and error["fatal"] is False


def test_scan_completes_when_the_exited_mm_still_has_rmap_items(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """__ksm_exit leaves a slot with rmap_items for ksmd to free: one more full scan runs."""
    doc = small(
        timeline=[
            {"op": "scan", "label": "one"},
            {"op": "exit"},
            {"op": "scan", "full_scans": 2, "label": "two", "allow_timeout": True},
        ]
    )
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 0, err
    result = json.loads(out)
    assert result["snapshots"][-1]["global"]["full_scans"] == 2
    assert "1 of 2" in result["errors"][0]["message"]


def test_set_tunable_the_profile_lacks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = small(timeline=[{"op": "set", "tunables": {"max_page_sharing": 10}}])
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert "max_page_sharing" in line and "timeline[0]" in line


def test_top_level_tunable_the_profile_lacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = small(tunables={"merge_across_nodes": 1})
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 2
    assert out == ""
    assert "tunables.merge_across_nodes" in one_line(err)


def test_expect_on_counter_the_profile_lacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = small(timeline=[{"op": "snapshot", "expect": {"pages_scanned": 0}}])
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 2
    assert out == ""
    assert "pages_scanned" in one_line(err)


@pytest.mark.parametrize("name", ["pages_to_scan", "sleep_millisecs"])
def test_set_value_the_kernel_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    too_big = 2**32  # UINT_MAX + 1: EINVAL from the keyhole kernel's store function
    doc = small(
        timeline=[
            {"op": "set", "tunables": {name: too_big}},
            {"op": "scan", "full_scans": 2, "label": "merged", "expect": {"pages_shared": 2}},
        ]
    )
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 0, err
    result = json.loads(out)
    assert result["ok"] is True
    (error,) = result["errors"]
    assert error["path"] == "timeline[0]"
    assert error["kind"] == "sysfs"
    assert error["fatal"] is False
    assert name in error["message"] and "EINVAL" in error["message"]


def test_top_level_tunable_value_the_kernel_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = small(tunables={"pages_to_scan": 2**32})
    status, out, err = cli(capsys, "run", write(tmp_path, doc))
    assert status == 2
    assert out == ""
    assert "pages_to_scan" in one_line(err)


# --------------------------------------------------------------------------------------------------
# The installed entry points, in a subprocess


def test_subprocess_ksmsim_demo() -> None:
    exe = Path(sys.executable).with_name("ksmsim")
    command = str(exe) if exe.exists() else shutil.which("ksmsim")
    assert command, "the ksmsim console script is not installed"
    proc = subprocess.run(
        [command, "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("ksmsim demo:")
    assert "unmerged" in proc.stdout


def test_subprocess_python_m_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ksmsim", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ksmsim {ksmsim.__version__}"


@pytest.mark.parametrize("to_stdout", [False, True])
@pytest.mark.parametrize("expect_ok", [True, False])
def test_subprocess_run_ends_at_once_with_the_same_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], to_stdout: bool, expect_ok: bool
) -> None:
    """``ksmsim run`` in a process of its own (which ends with os._exit after its output):
    the same result, the same exit status and the same stderr as main() in-process."""
    doc = small()
    doc["timeline"][0]["expect"] = {"pages_sharing": 2 if expect_ok else 99}
    path = write(tmp_path, doc)
    out_file = tmp_path / "out.json"
    target = "-" if to_stdout else str(out_file)
    proc = subprocess.run(
        [sys.executable, "-m", "ksmsim", "run", str(path), "-o", target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    status, out, err = cli(capsys, "run", path, "-o", "-")
    assert proc.returncode == status == (0 if expect_ok else 1)
    assert proc.stderr == err
    theirs = json.loads(proc.stdout if to_stdout else out_file.read_text())
    mine = json.loads(out)
    theirs.pop("wall_time_s")
    mine.pop("wall_time_s")
    assert theirs == mine


@pytest.mark.parametrize("value", ["-1", "x", "nan", "inf"])
def test_run_sample_every_refuses_bad_seconds(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    status, out, err = cli(capsys, "run", EXAMPLES[0], "--sample-every", value)
    assert status == 2
    assert out == ""
    assert "--sample-every" in one_line(err)


def test_run_sample_every_thins_the_time_series(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    scenario = ROOT / "examples" / "swap_pressure.toml"
    full, sparse = tmp_path / "full.json", tmp_path / "sparse.json"
    assert cli(capsys, "run", scenario, "-o", full)[0] == 0
    assert cli(capsys, "run", scenario, "-o", sparse, "--sample-every", "5")[0] == 0
    a, b = json.loads(full.read_text()), json.loads(sparse.read_text())
    assert a["snapshots"] == b["snapshots"]
    assert 0 < len(b["timeseries"]) < len(a["timeseries"]) / 50
    assert all(s in a["timeseries"] for s in b["timeseries"])
