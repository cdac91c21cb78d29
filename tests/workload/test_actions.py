"""The action -> handler table shared by the model and the real runner (``workload.actions``).

The real runner is only constructed and validated here, against a fake sysfs directory: nothing
touches the kernel's KSM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ksmsim.real.errors import RealError
from ksmsim.real.runner import REFUSED_ACTIONS, SUPPORTED_ACTIONS, RealRunner
from ksmsim.real.sysfs import KsmControl
from ksmsim.workload import scenario as sc
from ksmsim.workload.actions import (
    HANDLER_NAMES,
    ActionHandlers,
    bind_handlers,
    expectations,
    initial_tunables,
)
from ksmsim.workload.results import RESULT_SCHEMA_VERSION, result_head
from ksmsim.workload.runner import ModelRunner, resolve_profile
from ksmsim.workload.scenario import parse_scenario

SCENARIO: dict[str, Any] = {
    "name": "tiny",
    "processes": [{"name": "a", "regions": [{"name": "r", "pages": 2, "fill": 1}]}],
    "timeline": [{"op": "scan", "label": "s"}],
}


def test_every_action_class_has_a_handler_name() -> None:
    """HANDLER_NAMES names a method for each action class of the format, ``_<op>``."""
    assert set(HANDLER_NAMES) == set(sc.ACTION_TYPES.values())
    assert HANDLER_NAMES[sc.Fill] == "_fill"
    assert HANDLER_NAMES[sc.UnmergeAll] == "_unmerge_all"
    assert HANDLER_NAMES[sc.Snapshot] == "_snapshot_action"


def test_the_model_runner_handles_every_action() -> None:
    """The model refuses nothing: its table has every action class."""
    scenario = parse_scenario(SCENARIO, "t")
    runner = ModelRunner(scenario, resolve_profile(scenario, "keyhole"))
    assert set(runner._handlers) == set(sc.ACTION_TYPES.values())


def test_the_real_runner_handles_or_refuses_every_action() -> None:
    """The real runner's table is its supported actions; churn, pressure, migrate are refused."""
    handlers = bind_handlers(RealRunner.__new__(RealRunner), REFUSED_ACTIONS)
    assert set(handlers) == set(SUPPORTED_ACTIONS)
    assert set(REFUSED_ACTIONS) == {sc.Churn, sc.Pressure, sc.Migrate}
    assert set(SUPPORTED_ACTIONS) | set(REFUSED_ACTIONS) == set(sc.ACTION_TYPES.values())


def test_a_missing_handler_is_a_one_line_error() -> None:
    """An action class with neither a handler nor a refusal fails at construction."""

    class Partial(ActionHandlers):
        def _fill(self, a: sc.Fill) -> None:
            """Do nothing."""

    with pytest.raises(TypeError, match=r"^Partial has no handler _write for the 'write' action"):
        bind_handlers(Partial())
    refused = [cls for cls in sc.ACTION_TYPES.values() if cls not in (sc.Fill, sc.Comment)]
    assert set(bind_handlers(Partial(), refused)) == {sc.Fill, sc.Comment}


@pytest.mark.parametrize(
    ("timeline", "message"),
    [
        ([{"op": "churn", "proc": "a", "writes_per_s": 5}], "timeline[0]: 'churn'"),
        ([{"op": "scan"}, {"op": "pressure", "pages": 10}], "timeline[1]: 'pressure'"),
        ([{"op": "migrate"}], "timeline[0]: 'migrate'"),
    ],
)
def test_the_real_runner_still_refuses_model_only_actions(
    tmp_path: Path, timeline: list[dict[str, Any]], message: str
) -> None:
    """validate() refuses them with the same one-line message (fake sysfs, nothing written)."""
    root = tmp_path / "ksm"
    root.mkdir()
    for name, value, mode in (("pages_to_scan", "100", 0o644), ("full_scans", "0", 0o444)):
        (root / name).write_text(value + "\n")
        (root / name).chmod(mode)
    doc = {**SCENARIO, "timeline": timeline}
    runner = RealRunner(
        parse_scenario(doc, "t"), control=KsmControl(root), directory=tmp_path / "state"
    )
    with pytest.raises(RealError) as info:
        runner.validate()
    assert str(info.value) == f"{message} is not supported by the real runner yet"
    assert not (tmp_path / "state").exists()


def test_expectations_of_an_action() -> None:
    """An action's expect then expect_each; none for an action without expectations."""
    scenario = parse_scenario(
        {
            **SCENARIO,
            "timeline": [
                {"op": "comment", "text": "x"},
                {
                    "op": "scan",
                    "full_scans": 2,
                    "snapshot_each": True,
                    "expect": {"pages_shared": 1},
                    "expect_each": {"full_scans": 1},
                },
            ],
        },
        "t",
    )
    comment, scan = scenario.timeline
    assert expectations(comment) == ()
    assert [e.counter for e in expectations(scan)] == ["pages_shared", "full_scans"]


def test_initial_tunables_order_and_precedence() -> None:
    """Sorted by name: the scenario's value, else the format default, else the fallback."""
    out = initial_tunables(
        ["sleep_millisecs", "zz_unknown", "max_kernel_pages", "pages_to_scan"],
        {"pages_to_scan": 7},
        {"max_kernel_pages": 5, "sleep_millisecs": 999},
    )
    assert list(out) == ["max_kernel_pages", "pages_to_scan", "sleep_millisecs"]
    assert out["pages_to_scan"] == 7
    assert out["max_kernel_pages"] == 5
    assert out["sleep_millisecs"] == sc.DEFAULT_TUNABLES["sleep_millisecs"]


def test_result_head() -> None:
    """The first keys of a result document, in the format's order."""
    head = result_head("model", "s", "keyhole", {"run": 1})
    assert list(head) == [
        "schema_version",
        "ksmsim_version",
        "source",
        "scenario",
        "kernel",
        "tunables",
    ]
    assert head["schema_version"] == RESULT_SCHEMA_VERSION
    assert head["source"] == "model"
