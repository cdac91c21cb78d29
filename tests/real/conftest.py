"""Fixtures of the real-kernel tests: when to skip, and the kernel's KSM left as found.

These tests drive the machine's one KSM: run them serially (never with ``pytest -n``). Each test
that touches the real kernel checks, before and after, that KSM is in its default state: ksmd
stopped, the kernel's default tunables, nothing shared, and no state file of a runner left.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ksmsim.real.children import get_subreaper, set_subreaper
from ksmsim.real.state import STATE_NAME, state_dir
from ksmsim.real.sysfs import KSM_SYSFS, normalize

KERNEL_DEFAULTS = {
    "run": "0",
    "pages_to_scan": "100",
    "sleep_millisecs": "20",
    "use_zero_pages": "0",
    "max_page_sharing": "256",
    "smart_scan": "1",
    "merge_across_nodes": "1",
    "stable_node_chains_prune_millisecs": "2000",
}
"""The kernel's defaults of the tunables (and run=0): the state every test must leave."""


def real_kernel_unavailable() -> str | None:
    """Return why the real-kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (writes /sys/kernel/mm/ksm)"
    if not KSM_SYSFS.is_dir():
        return f"{KSM_SYSFS} does not exist (kernel without CONFIG_KSM)"
    advisor = KSM_SYSFS / "advisor_mode"
    if advisor.exists() and normalize(advisor.read_text()) != "none":
        return "KSM's advisor is on (advisor_mode is not none)"
    return None


SKIP_REASON = real_kernel_unavailable()
needs_real_kernel = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def ksm_state() -> dict[str, str]:
    """Return run and the default tunables as the kernel reads them now."""
    return {
        name: normalize((KSM_SYSFS / name).read_text())
        for name in KERNEL_DEFAULTS
        if (KSM_SYSFS / name).exists()
    }


def assert_default_state(when: str) -> None:
    """Assert that KSM is stopped, has its default tunables and no runner's state file."""
    expected = {k: v for k, v in KERNEL_DEFAULTS.items() if (KSM_SYSFS / k).exists()}
    assert ksm_state() == expected, f"KSM is not in its default state {when} the test"
    assert not (state_dir() / STATE_NAME).exists(), f"a runner's state file is left {when} the test"


@pytest.fixture(scope="session")
def real_kernel_session() -> Iterator[None]:
    """Hold a lock for the session's real-kernel tests, so two test sessions never interleave
    on the machine's one KSM (a runner's own lock only covers one run)."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "tests.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another test session has held the real-kernel lock for 10 min")
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


@pytest.fixture
def default_state(real_kernel_session: None) -> Iterator[None]:
    """Check that KSM is in its default state before and after the test."""
    assert_default_state("before")
    yield
    assert_default_state("after")


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make the test process a child subreaper, so that the processes of a runner it killed are
    adopted (and can be reaped) rather than left as zombies of init."""
    was = get_subreaper()
    set_subreaper(True)
    try:
        yield
    finally:
        set_subreaper(was)


def write_scenario(tmp_path: Path, doc: dict[str, Any], name: str = "scenario") -> Path:
    """Write a scenario document as JSON and return its path."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def ksmsim(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ksmsim ARGS`` and return the completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "ksmsim", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line(err: str) -> str:
    """Assert that stderr is exactly one line without a traceback and return it."""
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    return lines[0]
