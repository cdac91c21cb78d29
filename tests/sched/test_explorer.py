"""Race files, the in-flight invariant checker, state hashing and ``ksmsim check``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ksmsim.cli import main
from ksmsim.kernel.invariants import InvariantError, check_all
from ksmsim.sched.checks import check_interleaved
from ksmsim.sched.explorer import Explorer
from ksmsim.sched.race import build_world, load_race, parse_race, race_profile
from ksmsim.sched.state import fingerprint
from ksmsim.sched.strategies import NonPreemptive, Replay
from ksmsim.workload.scenario import ScenarioError

RACES = Path(__file__).resolve().parents[1] / "scenarios" / "races"


def race_doc(**tasks: Any) -> dict[str, Any]:
    return {
        "kernel": "keyhole",
        "processes": [{"name": "a", "regions": [{"name": "buf", "pages": 1, "fill": 7}]}],
        "tasks": [{"name": "ksmd", "kind": "ksmd"}, *tasks.values()],
    }


# -- the race format ---------------------------------------------------------------------------


def test_race_files_parse_with_setup_and_tasks() -> None:
    race = load_race(RACES / "keyhole_recheck.toml")
    assert [t.kind for t in race.tasks] == ["ksmd", "user"]
    assert [a.op for a in race.base.timeline] == ["fill", "scan", "mmap"]
    assert [a.op for a in race.tasks[1].actions] == ["write", "write", "fill"]
    assert race.tasks[1].actions[2].path == "timeline[5]"
    assert race.base.machine.ram_pages == 4 * 3 + 64


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"kind": "robot"}, "tasks[1].kind: unknown task kind 'robot'"),
        ({"kind": "user", "actions": [{"op": "scan"}]}, "tasks[1].actions[0].op: 'scan' is not"),
        (
            {"kind": "user", "actions": [{"op": "write", "proc": "zz", "value": 1}]},
            'tasks[1].actions[0].proc: unknown process "zz"',
        ),
        ({"kind": "ksmd", "batches": 0}, "tasks[1].batches: expected an integer >= 1"),
        ({"kind": "sysfs", "writes": [{"file": "run"}]}, "tasks[1].writes[0]: expected a table"),
        ({"kind": "user", "actions": [{"op": "exit"}], "when": 1}, "tasks[1].when: unknown key"),
    ],
)
def test_race_errors_name_the_task_key(task: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_race(race_doc(t=task), "r")
    assert str(err.value).startswith(message)


def test_a_race_needs_tasks_and_unique_names() -> None:
    with pytest.raises(ScenarioError, match="tasks: a race needs"):
        parse_race({"kernel": "keyhole"}, "r")
    with pytest.raises(ScenarioError, match="duplicate task name 'ksmd'"):
        parse_race(race_doc(t={"name": "ksmd", "kind": "kswapd"}), "r")


# -- checking states where tasks are mid-operation --------------------------------------------


def paused_in_write_protect() -> Any:
    """A world where ksmd is stopped with a pte cleared, a page locked and references held."""
    race = load_race(RACES / "keyhole_recheck.toml")
    world = build_world(race, race_profile(race), frozenset())
    sched = world.sched
    stops: list[str] = []

    def on_step(s: Any) -> Any:
        stops.append(s.trace[-1].end)
        if stops[-1] == "write_protect_page:pte_cleared":
            return check_result(s)
        return None

    results: list[Any] = []

    def check_result(s: Any) -> Any:
        try:
            check_all(s.machine)
        except InvariantError as exc:
            results.append(("strict", str(exc)))
        check_interleaved(s)  # must not raise
        results.append(("interleaved", "ok"))
        page = s.machine.zone.alloc_page()  # a reference no pte and no task holds
        try:
            check_interleaved(s)
        except InvariantError as exc:
            results.append(("leak", str(exc)))
        s.machine.zone.put_page(page)
        from ksmsim.sched.scheduler import Outcome

        return Outcome("pruned")

    sched.run(NonPreemptive(), on_step=on_step)
    return results


def test_in_flight_state_passes_only_the_tolerant_checker() -> None:
    results = paused_in_write_protect()
    kinds = [k for k, _ in results]
    assert kinds == ["strict", "interleaved", "leak"], results
    assert "c: anon_rss 1 but 0 anonymous ptes" in results[0][1]  # the cleared pte
    assert "suspended tasks can hold at most" in results[2][1]


def test_state_fingerprint_is_canonical_and_moves_with_the_run() -> None:
    race = load_race(RACES / "keyhole_recheck.toml")
    profile = race_profile(race)
    one, two = (build_world(race, profile, frozenset()) for _ in range(2))
    assert fingerprint(one) == fingerprint(two)
    seen = []
    one.sched.run(NonPreemptive(), on_step=lambda s: seen.append(fingerprint(one)) and None)
    assert len(set(seen)) == len(seen) > 5
    # Replaying the same schedule from a fresh world passes through the same states.
    again = []
    two.sched.run(Replay(one.sched.decisions), on_step=lambda s: again.append(fingerprint(two)))
    assert again == seen


def test_exhaustive_search_covers_every_schedule_of_a_tiny_race() -> None:
    race = load_race(RACES / "ksm05.toml")
    explorer = Explorer(race, race_profile(race, "v6.18"))
    report = explorer.explore("exhaustive", preemptions=0)
    assert report.complete and report.schedules >= 2  # ksmd first, or the child first
    report = explorer.explore("exhaustive", preemptions=5)
    assert report.complete and report.finding is None


# -- ksmsim check -----------------------------------------------------------------------------


def test_check_finds_saves_and_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "s.json"
    race = str(RACES / "ksm05.toml")
    assert main(["check", race, "--save", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "FOUND crash in ksmd: AssertionError: NULL pointer dereference" in out
    assert "child  start -> done  [exit child]" in out
    doc = json.loads(saved.read_text())
    assert doc["schedule"] == ["ksmd", "ksmd", "child", "ksmd"]
    assert doc["kernel"] == "keyhole"
    assert main(["check", race, "--replay", str(saved), "--json"]) == 1
    replay = json.loads(capsys.readouterr().out)
    assert replay["reproduced"] and replay["status"] == "crash"
    # The same schedule on the fixed kernel: the child's exit no longer crashes ksmd.
    assert main(["check", race, "--replay", str(saved), "--kernel", "v6.18"]) == 0
    assert "outcome: ok" in capsys.readouterr().out


def test_check_reports_rates_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    race = str(RACES / "ksm05.toml")
    assert (
        main(["check", race, "--kernel", "v6.18", "--json", "--mode", "pct", "--schedules", "40"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "pct" and doc["kernel"] == "v6.18"
    assert doc["schedules"] > 0 and doc["distinct_states"] > 0
    assert doc["schedules_per_s"] > 0 and "finding" not in doc


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope.toml"], "nope.toml: no such file"),
        (["{ksm05}", "--mutation", "x"], "unknown mutation 'x'"),
        (["{ksm05}", "--kernel", "v9"], "unknown kernel profile 'v9'"),
        (["{ksm05}", "--schedules", "0"], "--schedules must be positive"),
        (["{ksm05}", "--replay", "nope.json"], "nope.json: no such file"),
        (["{ksm05}", "--mode", "dfs"], "invalid choice: 'dfs'"),
    ],
)
def test_check_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{ksm05}", str(RACES / "ksm05.toml")) for a in argv]
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_schedule_that_does_not_replay_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ksmsim_schedule": 1, "schedule": ["child", "ghost"]}))
    assert main(["check", str(RACES / "ksm05.toml"), "--replay", str(bad)]) == 2
    assert "'ghost', which cannot run" in capsys.readouterr().err


def test_kswapd_and_migrator_tasks_plug_in() -> None:
    doc: dict[str, Any] = {
        "kernel": "v6.18",
        "machine": {"ram_pages": 48, "swap_pages": 64},
        "processes": [{"name": "a", "regions": [{"name": "buf", "pages": 40}]}],
        "tasks": [
            {"name": "kswapd", "kind": "kswapd"},
            {"name": "ksmd", "kind": "ksmd"},
            {"name": "compaction", "kind": "migrate", "proc": "a", "region": "buf", "count": 4},
            {
                "name": "user",
                "kind": "user",
                "actions": [{"op": "fill", "proc": "a", "region": "buf", "pattern": "unique"}],
            },
        ],
    }
    race = parse_race(doc, "pressure")
    explorer = Explorer(race, race_profile(race))
    report = explorer.explore("random", schedules=4, seed=1)
    assert report.finding is None and report.outcomes == {"ok": 4}
    world = build_world(race, race_profile(race), frozenset())
    world.sched.run(NonPreemptive())
    assert world.host.machine.vmstat["pswpout"] > 0
    assert world.sched.task("compaction").notes  # it ran and recorded its outcomes
