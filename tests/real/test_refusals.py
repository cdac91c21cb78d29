"""What ``ksmsim real`` refuses before it changes anything: one line, exit status 2.

Most of these tests point the runner at a fake sysfs directory (``KsmControl(root)``) and a
temporary state directory, so they never touch the real KSM; the root check is simulated by
monkeypatching ``os.geteuid``. The last ones use the real sysfs but stop before any write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ksmsim.cli import main
from ksmsim.real.errors import RealError
from ksmsim.real.runner import RealRunner, restore_command
from ksmsim.real.state import STATE_DIR_ENV, STATE_NAME, RunLock
from ksmsim.real.sysfs import KsmControl
from ksmsim.workload.scenario import parse_scenario
from tests.real.conftest import ksmsim, needs_real_kernel, one_line, write_scenario

pytestmark = pytest.mark.realkernel

TUNABLES = {
    "run": "0",
    "pages_to_scan": "100",
    "sleep_millisecs": "20",
    "use_zero_pages": "0",
    "max_page_sharing": "256",
    "smart_scan": "1",
    "merge_across_nodes": "1",
    "stable_node_chains_prune_millisecs": "2000",
    "advisor_mode": "[none] scan-time",
    "advisor_max_cpu": "70",
}
COUNTERS = {
    "pages_shared": "0",
    "pages_sharing": "0",
    "pages_unshared": "0",
    "pages_volatile": "0",
    "full_scans": "0",
    "pages_scanned": "0",
    "pages_skipped": "0",
    "ksm_zero_pages": "0",
    "stable_node_chains": "0",
    "stable_node_dups": "0",
    "general_profit": "0",
}

SCENARIO: dict[str, Any] = {
    "name": "tiny",
    "processes": [{"name": "a", "regions": [{"name": "r", "pages": 2, "fill": 1}]}],
    "timeline": [{"op": "scan", "label": "s"}],
}


def fake_sysfs(root: Path, **overrides: str) -> KsmControl:
    """Make a fake /sys/kernel/mm/ksm: writable tunables, read-only counters."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in {**TUNABLES, **COUNTERS, **overrides}.items():
        path = root / name
        path.write_text(value + "\n")
        path.chmod(0o444 if name in COUNTERS else 0o644)
    return KsmControl(root)


def contents(control: KsmControl) -> dict[str, str]:
    """Return every file of a fake sysfs directory."""
    return {name: (control.root / name).read_text() for name in control.files()}


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend to be root (the fake sysfs needs no privilege)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def runner(doc: dict[str, Any], control: KsmControl, state: Path) -> RealRunner:
    """Return a runner of ``doc`` on a fake sysfs directory, with a private state directory."""
    return RealRunner(parse_scenario(doc, "t"), control=control, directory=state)


# --------------------------------------------------------------------------------------------------
# Refused before anything changes


def test_not_root_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not root: one line, exit status 2, nothing written (CLI and --restore)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    path = write_scenario(tmp_path, SCENARIO)
    assert main(["real", str(path)]) == 2
    assert "needs root" in one_line(capsys.readouterr().err)
    assert main(["real", "--restore"]) == 2
    assert "needs root" in one_line(capsys.readouterr().err)
    control = fake_sysfs(tmp_path / "ksm")
    before = contents(control)
    with pytest.raises(RealError, match="needs root"):
        runner(SCENARIO, control, tmp_path / "state").run()
    assert contents(control) == before
    assert not (tmp_path / "state").exists()


@pytest.mark.usefixtures("as_root")
def test_advisor_on_is_refused(tmp_path: Path) -> None:
    """advisor_mode other than none: refused, nothing written."""
    control = fake_sysfs(tmp_path / "ksm", advisor_mode="none [scan-time]")
    before = contents(control)
    with pytest.raises(RealError, match=r"advisor is on \(advisor_mode = scan-time\)"):
        runner(SCENARIO, control, tmp_path / "state").run()
    assert contents(control) == before
    assert not (tmp_path / "state").exists()


@pytest.mark.usefixtures("as_root")
def test_no_ksm_is_refused(tmp_path: Path) -> None:
    """No KSM directory: refused with a clear message."""
    with pytest.raises(RealError, match="has no KSM"):
        runner(SCENARIO, KsmControl(tmp_path / "missing"), tmp_path / "state").run()


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"timeline": [{"op": "churn", "proc": "a", "writes_per_s": 5}]},
            "timeline[0]: 'churn' is not supported by the real runner yet",
        ),
        (
            {"timeline": [{"op": "scan"}, {"op": "pressure", "pages": 10}]},
            "timeline[1]: 'pressure' is not supported by the real runner yet",
        ),
        (
            {"timeline": [{"op": "migrate"}]},
            "timeline[0]: 'migrate' is not supported by the real runner yet",
        ),
        (
            {"tunables": {"max_kernel_pages": 10}},
            "tunables.max_kernel_pages: the running kernel",
        ),
        (
            {"timeline": [{"op": "set", "tunables": {"max_kernel_pages": 10}}]},
            "timeline[0].tunables.max_kernel_pages: the running kernel",
        ),
        (
            {"timeline": [{"op": "snapshot", "expect": {"ksm_pages": 1}}]},
            "timeline[0].expect: the running kernel has no counter 'ksm_pages'",
        ),
    ],
)
def test_what_the_runner_cannot_do_is_refused_up_front(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """Unsupported actions, tunables and counters the kernel lacks: refused before any write."""
    control = fake_sysfs(tmp_path / "ksm")
    before = contents(control)
    with pytest.raises(RealError) as info:
        runner({**SCENARIO, **change}, control, tmp_path / "state").run()
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert contents(control) == before
    assert not (tmp_path / "state").exists()


@pytest.mark.usefixtures("as_root")
def test_ksm_in_use_is_refused_and_restored(tmp_path: Path) -> None:
    """Pages still shared after run=2, run=0: refused; the tunables and run are as found."""
    control = fake_sysfs(tmp_path / "ksm", pages_shared="5", run="1", pages_to_scan="77")
    with pytest.raises(RealError, match=r"KSM is in use by other processes \(pages_shared=5"):
        runner(SCENARIO, control, tmp_path / "state").run()
    assert control.read("run") == "1"
    assert control.read("pages_to_scan") == "77"
    assert not (tmp_path / "state" / STATE_NAME).exists()


@pytest.mark.usefixtures("as_root")
def test_second_instance_is_refused(tmp_path: Path) -> None:
    """While the lock is held, another run (and --restore) is refused naming the holder's pid."""
    control = fake_sysfs(tmp_path / "ksm")
    state = tmp_path / "state"
    with RunLock(state):
        with pytest.raises(
            RealError, match=rf"another ksmsim real is running \(pid {os.getpid()}\)"
        ):
            runner(SCENARIO, control, state).run()
        (state / STATE_NAME).write_text("{}")
        with pytest.raises(RealError, match="another ksmsim real is running"):
            restore_command(directory=state)


@pytest.mark.usefixtures("as_root")
def test_restore_with_nothing_to_restore(tmp_path: Path) -> None:
    """--restore without a state file says so and changes nothing."""
    assert restore_command(directory=tmp_path / "state").startswith("nothing to restore")


@pytest.mark.usefixtures("as_root")
def test_restore_from_a_dead_runners_state_file(tmp_path: Path) -> None:
    """A state file of a dead runner is restored: tunables written back, the file removed."""
    control = fake_sysfs(tmp_path / "ksm", run="1", pages_to_scan="5000", smart_scan="0")
    state = tmp_path / "state"
    state.mkdir()
    saved = {name: value.split()[0].strip("[]") for name, value in TUNABLES.items()}
    doc = {
        "version": 1,
        "runner": {"pid": 2**22 + 1, "start": 1},
        "sysfs_root": str(control.root),
        "tunables": saved,
        "children": [{"pid": 2**22 + 2, "start": 1}],
    }
    (state / STATE_NAME).write_text(json.dumps(doc))
    message = restore_command(directory=state)
    assert message.startswith("restored KSM from")
    assert control.read("run") == "0"
    assert control.read("pages_to_scan") == "100"
    assert control.read("smart_scan") == "1"
    assert not (state / STATE_NAME).exists()


# --------------------------------------------------------------------------------------------------
# On the real sysfs, refused before the first write


@needs_real_kernel
@pytest.mark.usefixtures("default_state")
def test_unsupported_action_on_the_real_kernel_exits_2(tmp_path: Path) -> None:
    """The CLI refuses an unsupported action with one line and exit 2, KSM untouched."""
    doc = {**SCENARIO, "timeline": [{"op": "churn", "writes_per_s": 1}]}
    proc = ksmsim("real", write_scenario(tmp_path, doc))
    assert proc.returncode == 2
    assert one_line(proc.stderr).endswith("'churn' is not supported by the real runner yet")


@needs_real_kernel
@pytest.mark.usefixtures("default_state")
def test_tunable_the_kernel_lacks_exits_2(tmp_path: Path) -> None:
    """max_kernel_pages (gone since v2.6.32) is refused with one line and exit 2."""
    doc = {**SCENARIO, "tunables": {"max_kernel_pages": 1000}}
    proc = ksmsim("real", write_scenario(tmp_path, doc))
    assert proc.returncode == 2
    assert "tunables.max_kernel_pages: the running kernel" in one_line(proc.stderr)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """A scenario and --restore together, or neither: one line, exit 2."""
    assert main(["real"]) == 2
    assert "a scenario file is required" in one_line(capsys.readouterr().err)
    assert main(["real", "x.json", "--restore"]) == 2
    assert "not both" in one_line(capsys.readouterr().err)
