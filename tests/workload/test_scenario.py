"""Tests of scenario parsing: equal JSON/TOML forms, defaults, repeat expansion, error paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ksmsim.workload.patterns import Pattern
from ksmsim.workload.scenario import (
    ALL,
    Churn,
    Comment,
    Digest,
    Exit,
    Expectation,
    Fill,
    Fork,
    Machine,
    Madvise,
    Migrate,
    Mmap,
    Munmap,
    Pressure,
    Process,
    Read,
    Region,
    Run,
    Scan,
    Scenario,
    ScenarioError,
    Set,
    Snapshot,
    UnmergeAll,
    Write,
    load_scenario,
    parse_scenario,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FULL: dict[str, Any] = {
    "name": "full",
    "description": "every op",
    "seed": 42,
    "kernel": "keyhole",
    "machine": {"ram_pages": 65536, "swap_pages": 1024, "hz": 1000, "cpus": 4},
    "tunables": {"pages_to_scan": 500, "sleep_millisecs": 10},
    "processes": [
        {
            "name": "a",
            "regions": [
                {"name": "r1", "pages": 8, "fill": "repeat:2", "salt": "s"},
                {"name": "r2", "pages": 4, "mergeable": False, "thp": True},
            ],
        },
        {"name": "b", "regions": [{"name": "r1", "pages": 8, "fill": "c"}]},
    ],
    "timeline": [
        {"op": "fill", "proc": ["a", "b"], "region": "r1", "pattern": "unique", "count": 2},
        {"op": "write", "proc": "a", "region": "r1", "value": "e", "offset": 0, "stride": 2},
        {"op": "read", "proc": "b", "start": 1, "count": 3},
        {"op": "mmap", "proc": "a", "region": {"name": "r3", "pages": 2, "fill": "zero"}},
        {"op": "munmap", "proc": "a", "region": "r3", "start": 1},
        {"op": "madvise", "region": "r2", "advice": "unmergeable"},
        {"op": "fork", "proc": "a", "child": "kid"},
        {
            "op": "scan",
            "full_scans": 2,
            "label": "s1",
            "snapshot_each": True,
            "expect": {"pages_shared": 1, "proc:a:ksm_merging_pages": [0, 4]},
            "expect_each": {"full_scans": [0, 10]},
            "timeout_s": 5,
            "allow_timeout": True,
        },
        {"op": "snapshot", "label": "snap", "expect": {"free_pages": [0, 1000000]}},
        {"op": "set", "tunables": {"max_page_sharing": 2}},
        {"op": "digest", "proc": "kid"},
        {"op": "comment", "text": "hello"},
        {"op": "churn", "proc": "b", "region": "r1", "writes_per_s": 10.5, "pattern": 7},
        {"op": "run", "seconds": 1.5},
        {"op": "pressure", "pages": 100},
        {"op": "migrate", "proc": "b", "region": "r1", "count": 2},
        {"op": "exit", "proc": "kid"},
        {"op": "unmerge_all", "label": "end"},
    ],
}

FULL_TOML = """
name = "full"
description = "every op"
seed = 42
kernel = "keyhole"

[machine]
ram_pages = 65536
swap_pages = 1024
hz = 1000
cpus = 4

[tunables]
pages_to_scan = 500
sleep_millisecs = 10

[[processes]]
name = "a"
regions = [
  { name = "r1", pages = 8, fill = "repeat:2", salt = "s" },
  { name = "r2", pages = 4, mergeable = false, thp = true },
]

[[processes]]
name = "b"
[[processes.regions]]
name = "r1"
pages = 8
fill = "c"

[[timeline]]
op = "fill"
proc = ["a", "b"]
region = "r1"
pattern = "unique"
count = 2

[[timeline]]
op = "write"
proc = "a"
region = "r1"
value = "e"
offset = 0
stride = 2

[[timeline]]
op = "read"
proc = "b"
start = 1
count = 3

[[timeline]]
op = "mmap"
proc = "a"
region = { name = "r3", pages = 2, fill = "zero" }

[[timeline]]
op = "munmap"
proc = "a"
region = "r3"
start = 1

[[timeline]]
op = "madvise"
region = "r2"
advice = "unmergeable"

[[timeline]]
op = "fork"
proc = "a"
child = "kid"

[[timeline]]
op = "scan"
full_scans = 2
label = "s1"
snapshot_each = true
expect = { pages_shared = 1, "proc:a:ksm_merging_pages" = [0, 4] }
expect_each = { full_scans = [0, 10] }
timeout_s = 5
allow_timeout = true

[[timeline]]
op = "snapshot"
label = "snap"
expect = { free_pages = [0, 1000000] }

[[timeline]]
op = "set"
tunables = { max_page_sharing = 2 }

[[timeline]]
op = "digest"
proc = "kid"

[[timeline]]
op = "comment"
text = "hello"

[[timeline]]
op = "churn"
proc = "b"
region = "r1"
writes_per_s = 10.5
pattern = 7

[[timeline]]
op = "run"
seconds = 1.5

[[timeline]]
op = "pressure"
pages = 100

[[timeline]]
op = "migrate"
proc = "b"
region = "r1"
count = 2

[[timeline]]
op = "exit"
proc = "kid"

[[timeline]]
op = "unmerge_all"
label = "end"
"""


def _parse(data: dict[str, Any]) -> Scenario:
    """Parse a scenario dict named 't'."""
    return parse_scenario(data, "t")


def _with_timeline(*actions: dict[str, Any], **top: Any) -> dict[str, Any]:
    """Build a small scenario with two processes and the given timeline."""
    data: dict[str, Any] = {
        "processes": [
            {"name": "a", "regions": [{"name": "r", "pages": 4}]},
            {"name": "b", "regions": [{"name": "r", "pages": 4}]},
        ],
        "timeline": list(actions),
    }
    data.update(top)
    return data


def _error(data: dict[str, Any]) -> str:
    """Parse and return the one-line error message."""
    with pytest.raises(ScenarioError) as info:
        _parse(data)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# valid scenarios


def test_full_scenario_json_and_toml_are_equal(tmp_path: Path) -> None:
    """The same scenario in JSON and in TOML parses to equal objects."""
    json_file = tmp_path / "full.json"
    json_file.write_text(json.dumps(FULL))
    toml_file = tmp_path / "full.toml"
    toml_file.write_text(FULL_TOML)
    from_json = load_scenario(json_file)
    from_toml = load_scenario(toml_file)
    assert from_json == from_toml
    assert from_json == _parse(FULL)
    assert [a.path for a in from_json.timeline] == [a.path for a in from_toml.timeline]


def test_full_scenario_values() -> None:
    """Every field of every op is parsed as written."""
    s = _parse(FULL)
    assert s.name == "full"
    assert s.description == "every op"
    assert s.seed == 42
    assert s.kernel == "keyhole"
    assert s.machine == Machine(ram_pages=65536, swap_pages=1024, hz=1000, cpus=4)
    assert s.tunables == {"pages_to_scan": 500, "sleep_millisecs": 10}
    assert s.processes == (
        Process(
            "a",
            (
                Region("r1", 8, fill=Pattern("repeat", 2), salt="s"),
                Region("r2", 4, mergeable=False, thp=True),
            ),
        ),
        Process("b", (Region("r1", 8, fill=Pattern("byte", 99)),)),
    )
    assert s.timeline == (
        Fill(proc=("a", "b"), region=("r1",), pattern=Pattern("unique"), count=2),
        Write(proc=("a",), region=("r1",), value=ord("e"), offset=0, stride=2),
        Read(proc=("b",), start=1, count=3),
        Mmap(proc=("a",), region=Region("r3", 2, fill=Pattern("zero"))),
        Munmap(proc=("a",), region=("r3",), start=1),
        Madvise(region=("r2",), advice="unmergeable"),
        Fork(proc="a", child="kid"),
        Scan(
            full_scans=2,
            label="s1",
            snapshot_each=True,
            expect=(
                Expectation("pages_shared", "global", None, "pages_shared", 1, 1),
                Expectation("proc:a:ksm_merging_pages", "proc", "a", "ksm_merging_pages", 0, 4),
            ),
            expect_each=(Expectation("full_scans", "global", None, "full_scans", 0, 10),),
            timeout_s=5.0,
            allow_timeout=True,
        ),
        Snapshot(
            label="snap",
            expect=(Expectation("free_pages", "memory", None, "free_pages", 0, 1000000),),
        ),
        Set(tunables={"max_page_sharing": 2}),
        Digest(proc=("kid",)),
        Comment(text="hello"),
        Churn(proc=("b",), region=("r1",), writes_per_s=10.5, pattern=Pattern("byte", 7)),
        Run(seconds=1.5),
        Pressure(pages=100),
        Migrate(proc=("b",), region=("r1",), count=2),
        Exit(proc=("kid",)),
        UnmergeAll(label="end"),
    )
    assert [a.path for a in s.timeline] == [f"timeline[{k}]" for k in range(18)]
    scan = s.timeline[7]
    assert isinstance(scan, Scan)
    assert scan.snapshot_labels == ("s1.1", "s1.2")


def test_to_dict_round_trip() -> None:
    """to_dict is JSON-able and parses back to an equal scenario."""
    s = _parse(FULL)
    data = s.to_dict()
    text = json.dumps(data)
    assert parse_scenario(json.loads(text), "other") == s
    assert data["timeline"][0] == {
        "op": "fill",
        "proc": ["a", "b"],
        "region": ["r1"],
        "pattern": "unique",
        "start": 0,
        "count": 2,
        "salt": "",
    }
    assert data["timeline"][5]["proc"] == "*"
    assert data["timeline"][7]["expect"] == {"pages_shared": 1, "proc:a:ksm_merging_pages": [0, 4]}


def test_defaults() -> None:
    """Unset keys take the format's defaults."""
    s = _parse(
        {
            "processes": [{"name": "p", "regions": [{"name": "r", "pages": 1}]}],
            "timeline": [
                {"op": "fill", "pattern": 1},
                {"op": "write", "value": 3},
                {"op": "scan"},
                {"op": "snapshot"},
                {"op": "unmerge_all"},
                {"op": "scan", "snapshot": False},
                {"op": "churn", "writes_per_s": 0},
                {"op": "exit"},
            ],
        }
    )
    assert s.name == "t"
    assert s.description == ""
    assert s.seed is None
    assert s.kernel is None
    assert s.machine == Machine(ram_pages=None, swap_pages=0, hz=250, cpus=2)
    assert s.tunables == {}
    assert s.processes[0].regions[0] == Region("r", 1, True, False, None, "")
    fill, write, scan, snap, unmerge, quiet, churn, exit_ = s.timeline
    assert fill == Fill(proc=ALL, region=ALL, pattern=Pattern("byte", 1), start=0, count=None)
    assert isinstance(write, Write)
    assert (write.offset, write.stride, write.start, write.count) == (2048, 1, 0, None)
    assert scan == Scan(
        full_scans=1,
        label="scan-1",
        snapshot_each=False,
        snapshot=True,
        expect=(),
        expect_each=(),
        timeout_s=120.0,
        allow_timeout=False,
    )
    assert snap == Snapshot(label="snapshot-1")
    assert unmerge == UnmergeAll(label="unmerge_all-1", snapshot=True)
    assert quiet == Scan(snapshot=False, label="")
    assert churn == Churn(writes_per_s=0.0, pattern=Pattern("unique"))
    assert exit_ == Exit(proc=ALL)


def test_auto_labels_skip_explicit_ones() -> None:
    """Automatic labels never collide with labels written in the file."""
    s = _parse(_with_timeline({"op": "snapshot", "label": "scan-1"}, {"op": "scan"}))
    assert [a.label for a in s.timeline if isinstance(a, Snapshot | Scan)] == ["scan-1", "scan-2"]


def test_repeat_expansion() -> None:
    """repeat formats {i}; a string that formats to an integer becomes one."""
    s = _parse(
        _with_timeline(
            {
                "op": "repeat",
                "times": 3,
                "start": 1,
                "actions": [
                    {"op": "write", "proc": "a", "value": "{i}", "start": "{i}", "count": 1},
                    {"op": "scan", "label": "after-{i}", "expect": {"full_scans": "{i}"}},
                ],
            },
            {"op": "comment", "text": "{i} stays"},
        )
    )
    writes = [a for a in s.timeline if isinstance(a, Write)]
    assert [(w.value, w.start) for w in writes] == [(1, 1), (2, 2), (3, 3)]
    scans = [a for a in s.timeline if isinstance(a, Scan)]
    assert [x.label for x in scans] == ["after-1", "after-2", "after-3"]
    assert [x.expect[0].lo for x in scans] == [1, 2, 3]
    assert [a.path for a in s.timeline] == [
        "timeline[0](i=1).actions[0]",
        "timeline[0](i=1).actions[1]",
        "timeline[0](i=2).actions[0]",
        "timeline[0](i=2).actions[1]",
        "timeline[0](i=3).actions[0]",
        "timeline[0](i=3).actions[1]",
        "timeline[1]",
    ]
    comment = s.timeline[-1]
    assert isinstance(comment, Comment)
    assert comment.text == "{i} stays"


def test_repeat_int_only_when_whole_string_is_integer() -> None:
    """A pattern '{i}' becomes the byte i; 'x{i}' stays text and '{i:03d}' becomes an int."""
    s = _parse(
        _with_timeline(
            {
                "op": "repeat",
                "times": 2,
                "actions": [
                    {"op": "fill", "proc": "a", "pattern": "{i}"},
                    {"op": "snapshot", "label": "{i:03d}"},
                    {"op": "snapshot", "label": "x{i:03d}"},
                ],
            }
        )
    )
    fills = [a.pattern for a in s.timeline if isinstance(a, Fill)]
    assert fills == [Pattern("byte", 0), Pattern("byte", 1)]
    labels = [a.label for a in s.timeline if isinstance(a, Snapshot)]
    assert labels == ["0", "x000", "1", "x001"]


def test_nested_repeat_and_custom_var() -> None:
    """Nested repeats see the outer variable; an inner var of the same name shadows it."""
    s = _parse(
        _with_timeline(
            {
                "op": "repeat",
                "times": 2,
                "var": "n",
                "actions": [
                    {
                        "op": "repeat",
                        "times": "{n}",
                        "start": 10,
                        "var": "m",
                        "actions": [{"op": "comment", "text": "{n}.{m}"}],
                    },
                    {
                        "op": "repeat",
                        "times": 1,
                        "start": 7,
                        "var": "n",
                        "actions": [{"op": "comment", "text": "inner {n}"}],
                    },
                ],
            }
        )
    )
    texts = [a.text for a in s.timeline if isinstance(a, Comment)]
    assert texts == ["inner 7", "1.10", "inner 7"]
    assert s.timeline[1].path == "timeline[0](n=1).actions[0](m=10).actions[0]"


def test_repeat_fork_children() -> None:
    """Children forked in a repeat can be addressed by formatted names."""
    s = _parse(
        _with_timeline(
            {
                "op": "repeat",
                "times": 2,
                "actions": [
                    {"op": "fork", "proc": "a", "child": "c{i}"},
                    {"op": "scan", "expect": {"proc:c{i}:ksm_merging_pages": 0}},
                ],
            }
        )
    )
    forks = [a.child for a in s.timeline if isinstance(a, Fork)]
    assert forks == ["c0", "c1"]
    scans = [a for a in s.timeline if isinstance(a, Scan)]
    assert [x.expect[0].proc for x in scans] == ["c0", "c1"]
    assert [x.label for x in scans] == ["scan-1", "scan-2"]


def test_examples_parse() -> None:
    """Every example scenario parses, names the keyhole profile and has no expect values."""
    files = sorted(EXAMPLES.glob("*.toml"))
    assert len(files) >= 2
    for file in files:
        s = load_scenario(file)
        assert s.kernel == "keyhole"
        assert s.name == file.stem


def test_ltp_example() -> None:
    """The LTP ksm01 example follows the four stages."""
    s = load_scenario(EXAMPLES / "ltp_ksm01_small.toml")
    assert [p.regions[0].fill for p in s.processes] == [
        Pattern("byte", ord("c")),
        Pattern("byte", ord("a")),
        Pattern("byte", ord("a")),
    ]
    labels = [a.label for a in s.timeline if isinstance(a, Scan)]
    assert labels == ["stage1", "stage2", "stage3", "stage4"]
    assert isinstance(s.timeline[-1], UnmergeAll)


def test_unknown_suffix_tries_json_then_toml(tmp_path: Path) -> None:
    """A file with another suffix is read as JSON, else as TOML; the name is the stem."""
    as_json = tmp_path / "one.scn"
    as_json.write_text(json.dumps({"description": "j"}))
    as_toml = tmp_path / "two.txt"
    as_toml.write_text('description = "t"\n')
    assert load_scenario(as_json).description == "j"
    assert load_scenario(as_toml).name == "two"


# ---------------------------------------------------------------------------------------------
# errors

P2 = {"processes": [{"name": "a", "regions": [{"name": "r", "pages": 4}]}]}

MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({"foo": 1}, 'unknown top-level key "foo"'),
    ({"kernel": "v5.0"}, 'kernel: unknown kernel "v5.0"'),
    ({"seed": "x"}, 'seed: expected an integer, got "x"'),
    ({"name": 3}, "name: expected a string, got 3"),
    ({"machine": {"ram": 1}}, 'machine: unknown key "ram"'),
    ({"machine": {"hz": 0}}, "machine.hz: expected a positive integer, got 0"),
    ({"machine": {"swap_pages": -1}}, "machine.swap_pages: expected a non-negative integer"),
    ({"tunables": {"run": 1}}, 'tunables.run: "run" is driven by the runner'),
    ({"tunables": {"advisor_mode": 1}}, 'tunables.advisor_mode: "advisor_mode" cannot be set'),
    ({"tunables": {"pages_to_scn": 1}}, 'tunables.pages_to_scn: unknown tunable "pages_to_scn"'),
    ({"tunables": {"pages_to_scan": -1}}, "tunables.pages_to_scan: expected a non-negative"),
    ({"tunables": {"smart_scan": True}}, "tunables.smart_scan: expected a non-negative integer"),
    ({"processes": {}}, "processes: expected a list of processes"),
    ({"processes": [{"regions": []}]}, 'processes[0]: missing required key "name"'),
    ({"processes": [{"name": "a b"}]}, "processes[0].name: expected a process name"),
    ({"processes": [{"name": "a", "x": 1}]}, 'processes[0]: unknown key "x"'),
    (
        {"processes": [{"name": "a"}, {"name": "a"}]},
        'processes[1].name: duplicate process name "a"',
    ),
    (
        {"processes": [{"name": "a", "regions": [{"name": "r", "pages": 1, "pagez": 2}]}]},
        'processes[0].regions[0]: unknown key "pagez"',
    ),
    (
        {"processes": [{"name": "a", "regions": [{"name": "r"}]}]},
        'processes[0].regions[0]: missing required key "pages"',
    ),
    (
        {"processes": [{"name": "a", "regions": [{"name": "r", "pages": "x"}]}]},
        'processes[0].regions[0].pages: expected a positive integer, got "x"',
    ),
    (
        {"processes": [{"name": "a", "regions": [{"name": "r", "pages": 0}]}]},
        "processes[0].regions[0].pages: expected a positive integer, got 0",
    ),
    (
        {"processes": [{"name": "a", "regions": [{"name": "r", "pages": 1, "fill": "repeat:0"}]}]},
        "processes[0].regions[0].fill: repeat:K needs K >= 1",
    ),
    (
        {"processes": [{"name": "a", "regions": [{"name": "r", "pages": 1, "thp": 1}]}]},
        "processes[0].regions[0].thp: expected true or false, got 1",
    ),
    (
        {
            "processes": [
                {"name": "a", "regions": [{"name": "r", "pages": 1}, {"name": "r", "pages": 2}]}
            ]
        },
        'processes[0].regions[1].name: duplicate region name "r"',
    ),
    ({"timeline": {}}, "timeline: expected a list of actions"),
    ({"timeline": [1]}, "timeline[0]: expected an action table, got 1"),
    ({"timeline": [{}]}, 'timeline[0]: missing required key "op"'),
    ({"timeline": [{"op": "fil"}]}, 'timeline[0].op: unknown op "fil" (did you mean "fill"?)'),
    ({**P2, "timeline": [{"op": "fill"}]}, 'timeline[0]: missing required key "pattern"'),
    (
        {**P2, "timeline": [{"op": "comment"}, {"op": "pressure", "pages": "x"}]},
        'timeline[1].pages: expected a positive integer, got "x"',
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": 256}]},
        "timeline[0].pattern: byte pattern must be 0-255, got 256",
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": "ab"}]},
        "timeline[0].pattern: expected a pattern",
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": "repeat:x"}]},
        "timeline[0].pattern: repeat pattern must be",
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": 1, "count": 0}]},
        "timeline[0].count: expected a positive integer, got 0",
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": 1, "start": -1}]},
        "timeline[0].start: expected a non-negative integer, got -1",
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": 1, "proc": []}]},
        "timeline[0].proc: expected a process name",
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": 1, "proc": ["a", "*"]}]},
        'timeline[0].proc[1]: "*" must be used alone',
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": 1, "proc": ["a", "a"]}]},
        'timeline[0].proc[1]: duplicate process name "a"',
    ),
    (
        {**P2, "timeline": [{"op": "fill", "pattern": 1, "proc": "zz"}]},
        'timeline[0].proc: unknown process "zz"',
    ),
    (
        {**P2, "timeline": [{"op": "read", "region": ["r", "q"]}]},
        'timeline[0].region: unknown region "q"',
    ),
    (
        {**P2, "timeline": [{"op": "write", "value": "ee"}]},
        "timeline[0].value: expected a byte",
    ),
    (
        {**P2, "timeline": [{"op": "write", "value": 1, "offset": 4096}]},
        "timeline[0].offset: expected an offset 0-4095, got 4096",
    ),
    (
        {**P2, "timeline": [{"op": "write", "value": 1, "stride": 0}]},
        "timeline[0].stride: expected a positive integer, got 0",
    ),
    (
        {**P2, "timeline": [{"op": "madvise", "advice": "merge"}]},
        "timeline[0].advice: expected one of mergeable, unmergeable, dontneed, hugepage, "
        'nohugepage, got "merge"',
    ),
    (
        {**P2, "timeline": [{"op": "mmap", "region": {"name": "n", "pagez": 1}}]},
        'timeline[0].region: unknown key "pagez"',
    ),
    (
        {**P2, "timeline": [{"op": "mmap", "region": "r"}]},
        'timeline[0].region: expected a table, got "r"',
    ),
    (
        {**P2, "timeline": [{"op": "fork", "proc": "a"}]},
        'timeline[0]: missing required key "child"',
    ),
    (
        {**P2, "timeline": [{"op": "fork", "proc": ["a"], "child": "b"}]},
        "timeline[0].proc: expected a process name",
    ),
    (
        {**P2, "timeline": [{"op": "fork", "proc": "a", "child": "a"}]},
        'timeline[0].child: process name "a" is already used',
    ),
    (
        {**P2, "timeline": [{"op": "scan", "full_scans": 0}]},
        "timeline[0].full_scans: expected a positive integer, got 0",
    ),
    (
        {**P2, "timeline": [{"op": "scan", "timeout_s": 0}]},
        "timeline[0].timeout_s: expected a positive number, got 0",
    ),
    (
        {**P2, "timeline": [{"op": "scan", "expect": {"pages_shred": 1}}]},
        'timeline[0].expect.pages_shred: unknown counter "pages_shred" (did you mean',
    ),
    (
        {**P2, "timeline": [{"op": "scan", "expect": {"pages_shared": [3, 1]}}]},
        "timeline[0].expect.pages_shared: expected an integer or [lo, hi] with lo <= hi",
    ),
    (
        {**P2, "timeline": [{"op": "scan", "expect": {"pages_shared": 1.5}}]},
        "timeline[0].expect.pages_shared: expected an integer or [lo, hi]",
    ),
    (
        {**P2, "timeline": [{"op": "scan", "expect": {"proc:a:pages_shared": 1}}]},
        'timeline[0].expect["proc:a:pages_shared"]: unknown per-process counter "pages_shared"',
    ),
    (
        {**P2, "timeline": [{"op": "scan", "expect": {"proc:z:ksm_merging_pages": 1}}]},
        'timeline[0].expect["proc:z:ksm_merging_pages"]: unknown process "z"',
    ),
    (
        {**P2, "timeline": [{"op": "scan", "snapshot": False, "expect": {"run": 0}}]},
        "timeline[0].expect: needs a snapshot",
    ),
    (
        {**P2, "timeline": [{"op": "scan", "expect_each": {"run": 0}}]},
        "timeline[0].expect_each: needs snapshot_each = true",
    ),
    (
        {**P2, "timeline": [{"op": "snapshot", "label": "x"}, {"op": "snapshot", "label": "x"}]},
        'timeline[1].label: duplicate snapshot label "x" (also at timeline[0])',
    ),
    (
        {
            **P2,
            "timeline": [
                {"op": "snapshot", "label": "x.2"},
                {"op": "scan", "label": "x", "full_scans": 2, "snapshot_each": True},
            ],
        },
        'timeline[1].label: duplicate snapshot label "x.2"',
    ),
    ({**P2, "timeline": [{"op": "snapshot", "label": ""}]}, "timeline[0].label: expected a non"),
    (
        {**P2, "timeline": [{"op": "set", "tunables": {}}]},
        "timeline[0].tunables: expected at least",
    ),
    (
        {**P2, "timeline": [{"op": "set", "tunables": {"run": 1}}]},
        'timeline[0].tunables.run: "run" is driven by the runner',
    ),
    (
        {**P2, "timeline": [{"op": "run", "seconds": -1}]},
        "timeline[0].seconds: expected a positive number, got -1",
    ),
    (
        {**P2, "timeline": [{"op": "churn", "writes_per_s": "fast"}]},
        'timeline[0].writes_per_s: expected a non-negative number, got "fast"',
    ),
    ({**P2, "timeline": [{"op": "comment", "text": 5}]}, "timeline[0].text: expected a string"),
    (
        {**P2, "timeline": [{"op": "repeat", "times": -1, "actions": []}]},
        "timeline[0].times: expected a non-negative integer, got -1",
    ),
    (
        {**P2, "timeline": [{"op": "repeat", "times": 1}]},
        'timeline[0]: missing required key "actions"',
    ),
    (
        {**P2, "timeline": [{"op": "repeat", "times": 1, "var": "1x", "actions": []}]},
        'timeline[0].var: expected an identifier, got "1x"',
    ),
    (
        {**P2, "timeline": [{"op": "repeat", "times": 1, "actions": [], "each": 1}]},
        'timeline[0]: unknown key "each"',
    ),
    (
        {
            **P2,
            "timeline": [
                {"op": "comment"},
                {
                    "op": "repeat",
                    "times": 3,
                    "actions": [{"op": "comment"}, {"op": "pressure", "pages": "{i}"}],
                },
            ],
        },
        "timeline[1](i=0).actions[1].pages: expected a positive integer, got 0",
    ),
    (
        {
            **P2,
            "timeline": [
                {"op": "repeat", "times": 2, "actions": [{"op": "snapshot", "label": "{i:q}"}]}
            ],
        },
        "timeline[0](i=0).actions[0].label: cannot format {i:q}",
    ),
    (
        {**P2, "timeline": [{"op": "repeat", "times": 10**6, "actions": [{"op": "comment"}] * 2}]},
        "timeline[0]: the timeline expands to more than",
    ),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed(data: dict[str, Any], message: str) -> None:
    """Each malformed scenario fails with a one-line message naming the key's path."""
    assert _error(data).startswith(message)


UNKNOWN_KEY_LEVELS: list[tuple[dict[str, Any], str]] = [
    ({**P2, "bogus": 1}, 'unknown top-level key "bogus"'),
    ({**P2, "machine": {"bogus": 1}}, 'machine: unknown key "bogus"'),
    ({"processes": [{"name": "a", "bogus": 1}]}, 'processes[0]: unknown key "bogus"'),
    (
        {"processes": [{"name": "a", "regions": [{"name": "r", "pages": 1, "bogus": 1}]}]},
        'processes[0].regions[0]: unknown key "bogus"',
    ),
    ({**P2, "timeline": [{"op": "scan", "bogus": 1}]}, 'timeline[0]: unknown key "bogus"'),
    (
        {**P2, "timeline": [{"op": "repeat", "times": 1, "actions": [{"op": "exit", "bogus": 1}]}]},
        'timeline[0](i=0).actions[0]: unknown key "bogus"',
    ),
    (
        {**P2, "timeline": [{"op": "mmap", "region": {"name": "n", "pages": 1, "bogus": 1}}]},
        'timeline[0].region: unknown key "bogus"',
    ),
    (
        {**P2, "timeline": [{"op": "fork", "proc": "a", "child": "b", "pattern": 1}]},
        'timeline[0]: unknown key "pattern"',
    ),
]


@pytest.mark.parametrize(
    ("data", "message"), UNKNOWN_KEY_LEVELS, ids=[m for _, m in UNKNOWN_KEY_LEVELS]
)
def test_unknown_keys(data: dict[str, Any], message: str) -> None:
    """Unknown keys are errors at every level."""
    assert _error(data) == message


def test_every_op_refuses_unknown_keys() -> None:
    """No op accepts a key outside its field list."""
    for op in (
        "fill",
        "write",
        "read",
        "mmap",
        "munmap",
        "madvise",
        "fork",
        "exit",
        "scan",
        "snapshot",
        "unmerge_all",
        "set",
        "digest",
        "comment",
        "run",
        "churn",
        "pressure",
        "migrate",
    ):
        message = _error({**P2, "timeline": [{"op": op, "zzz": 1}]})
        assert message == 'timeline[0]: unknown key "zzz"'


def test_error_is_value_error() -> None:
    """ScenarioError is a ValueError carrying the path and the reason."""
    with pytest.raises(ValueError) as info:
        _parse({"timeline": [{"op": "nope"}]})
    err = info.value
    assert isinstance(err, ScenarioError)
    assert err.path == "timeline[0].op"
    assert err.reason.startswith('unknown op "nope"')


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ScenarioError naming the path."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(missing)
    assert str(info.value) == f"{missing}: no such file"


def test_malformed_json(tmp_path: Path) -> None:
    """Malformed JSON names the file and the line and column."""
    file = tmp_path / "bad.json"
    file.write_text('{\n  "name": "x",\n  "seed": ,\n}\n')
    with pytest.raises(ScenarioError) as info:
        load_scenario(file)
    assert str(info.value).startswith(f"{file}: invalid JSON at line 3, column 11:")


def test_malformed_toml(tmp_path: Path) -> None:
    """Malformed TOML names the file and the line and column."""
    file = tmp_path / "bad.toml"
    file.write_text('name = "x"\nseed = = 3\n')
    with pytest.raises(ScenarioError) as info:
        load_scenario(file)
    message = str(info.value)
    assert message.startswith(f"{file}: invalid TOML:")
    assert "line 2" in message
    assert "\n" not in message


def test_neither_json_nor_toml(tmp_path: Path) -> None:
    """A file of another suffix that is neither format reports both errors on one line."""
    file = tmp_path / "bad.scenario"
    file.write_text("{{ nope\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(file)
    assert str(info.value).startswith(f"{file}: neither JSON (invalid JSON at line 1")


def test_json_duplicate_keys_and_nan(tmp_path: Path) -> None:
    """Duplicate JSON keys and NaN are refused."""
    file = tmp_path / "dup.json"
    file.write_text('{"seed": 1, "seed": 2}')
    with pytest.raises(ScenarioError, match='duplicate key "seed"'):
        load_scenario(file)
    file.write_text('{"timeline": [{"op": "run", "seconds": NaN}]}')
    with pytest.raises(ScenarioError, match="NaN is not allowed"):
        load_scenario(file)


def test_file_errors_carry_the_file_name(tmp_path: Path) -> None:
    """Validation errors of a file start with its name, then the key path."""
    file = tmp_path / "x.toml"
    file.write_text('[[timeline]]\nop = "pressure"\npages = "x"\n')
    with pytest.raises(ScenarioError) as info:
        load_scenario(file)
    assert str(info.value) == f'{file}: timeline[0].pages: expected a positive integer, got "x"'
    assert info.value.file == str(file)
    assert info.value.path == "timeline[0].pages"
