"""The kernel is left as found when the runner is interrupted, killed, or started twice.

Each test starts ``ksmsim real`` as a subprocess on a scenario that lets ksmd run for a minute
with non-default tunables and two simulated processes (one forked), waits until it is inside that
``run``, and then interrupts it in some way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ksmsim.real.procfs import ProcId
from ksmsim.real.runner import restore_command
from ksmsim.real.state import STATE_NAME, state_dir
from ksmsim.real.sysfs import KSM_SYSFS
from tests.real.conftest import (
    assert_default_state,
    ksmsim,
    needs_real_kernel,
    one_line,
    write_scenario,
)

pytestmark = [
    pytest.mark.realkernel,
    needs_real_kernel,
    pytest.mark.usefixtures("default_state", "subreaper", "safety_net"),
]

LONG: dict[str, Any] = {
    "name": "long",
    "tunables": {"pages_to_scan": 50, "sleep_millisecs": 10, "smart_scan": 0},
    "processes": [{"name": "a", "regions": [{"name": "buf", "pages": 64, "fill": "repeat:4"}]}],
    "timeline": [
        {"op": "fork", "proc": "a", "child": "c"},
        {"op": "run", "seconds": 60},
    ],
}

SMALL: dict[str, Any] = {
    "name": "small",
    "processes": [{"name": "a", "regions": [{"name": "r", "pages": 2, "fill": 3}]}],
    "timeline": [{"op": "scan", "label": "s"}],
}


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture
def safety_net(default_state: None) -> Iterator[None]:
    """Whatever a test did, end its runners and restore KSM before ``default_state`` checks it
    (a failing test must not leave the machine's KSM running with its tunables)."""
    yield
    for runner in STARTED:
        if runner.poll() is None:
            runner.terminate()
            try:
                runner.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
        for pipe in (runner.stdout, runner.stderr):
            if pipe is not None:
                pipe.close()
    STARTED.clear()
    if (state_dir() / STATE_NAME).exists():
        restore_command()


def start_long(tmp_path: Path) -> tuple[subprocess.Popen[str], list[ProcId]]:
    """Start a runner on LONG; return it and its processes once ksmd is running."""
    path = write_scenario(tmp_path, LONG, "long")
    runner = subprocess.Popen(
        [sys.executable, "-m", "ksmsim", "real", str(path), "-o", str(tmp_path / "out.json")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(runner)
    state_file = state_dir() / STATE_NAME
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert runner.poll() is None, runner.communicate()
        try:
            doc = json.loads(state_file.read_text())
        except (OSError, ValueError):
            doc = None
        if (
            doc is not None
            and doc["runner"]["pid"] == runner.pid
            and len(doc["children"]) == 2
            and (KSM_SYSFS / "run").read_text().strip() == "1"
        ):
            assert (KSM_SYSFS / "pages_to_scan").read_text().strip() == "50"
            children = [ProcId(c["pid"], c["start"]) for c in doc["children"]]
            assert all(c.alive() for c in children)
            return runner, children
        time.sleep(0.01)
    runner.kill()
    runner.communicate()
    pytest.fail("the runner did not reach its run action in 30 s")


def assert_gone(children: list[ProcId]) -> None:
    """Assert that no process of the run is alive (reaping those this test process adopted)."""
    deadline = time.monotonic() + 10
    while any(c.alive() for c in children) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [c.pid for c in children if c.alive()]
    for child in children:
        child.reap()


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_restores_the_kernel(tmp_path: Path, sig: signal.Signals, status: int) -> None:
    """SIGINT/SIGTERM: the runner ends its processes, restores KSM and exits 128+signum."""
    runner, children = start_long(tmp_path)
    runner.send_signal(sig)
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == status
    assert one_line(err) == f"ksmsim: interrupted by {sig.name}; KSM was restored"
    assert_gone(children)
    assert_default_state("right after")


def test_sigkill_then_restore_command(tmp_path: Path) -> None:
    """SIGKILL leaves the state file; ``ksmsim real --restore`` restores from it and kills the
    processes that are still alive (stopped here, so they cannot exit on their own)."""
    runner, children = start_long(tmp_path)
    for child in children:
        os.kill(child.pid, signal.SIGSTOP)
    runner.kill()
    # wait(), not communicate(): the stopped processes still hold the runner's stderr pipe.
    assert runner.wait(timeout=30) == -signal.SIGKILL
    assert (state_dir() / STATE_NAME).exists()
    assert all(c.alive() for c in children)
    proc = ksmsim("real", "--restore")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("restored KSM from ")
    assert f"runner pid {runner.pid}" in proc.stdout
    assert "2 leftover processes killed" in proc.stdout
    assert_gone(children)
    assert_default_state("right after")
    again = ksmsim("real", "--restore")
    assert again.returncode == 0
    assert again.stdout.startswith("nothing to restore")


def test_sigkill_then_next_run_restores_first(tmp_path: Path) -> None:
    """After a SIGKILL, the next run restores from the dead runner's state file, says so,
    and runs normally."""
    runner, children = start_long(tmp_path)
    runner.kill()
    assert runner.wait(timeout=30) == -signal.SIGKILL
    proc = ksmsim("real", write_scenario(tmp_path, SMALL, "small"))
    assert proc.returncode == 0, proc.stderr
    assert one_line(proc.stderr).startswith("ksmsim: restored KSM from ")
    assert json.loads(proc.stdout)["ok"] is True
    assert_gone(children)


def test_second_instance_is_refused_while_one_runs(tmp_path: Path) -> None:
    """A second ``ksmsim real`` (or --restore) while one runs: exit 2 naming the runner's pid."""
    runner, children = start_long(tmp_path)
    try:
        proc = ksmsim("real", write_scenario(tmp_path, SMALL, "small"))
        assert proc.returncode == 2
        assert one_line(proc.stderr) == (
            f"ksmsim: error: another ksmsim real is running (pid {runner.pid})"
        )
        restore = ksmsim("real", "--restore")
        assert restore.returncode == 2
        assert "another ksmsim real is running" in one_line(restore.stderr)
        assert (KSM_SYSFS / "run").read_text().strip() == "1"  # the first run goes on
    finally:
        runner.terminate()
        runner.communicate(timeout=30)
    assert runner.returncode == 143
    assert_gone(children)
