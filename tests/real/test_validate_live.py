"""``ksmsim validate`` against the live kernel: the model equals the kernel on the spot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real.conftest import ksmsim, needs_real_kernel

pytestmark = [pytest.mark.realkernel, needs_real_kernel, pytest.mark.usefixtures("default_state")]

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def test_validate_live_equal() -> None:
    names = ["ltp_ksm01", "mps4_leftovers", "zero_pages_switch", "fork_tree"]
    files = [str(SCENARIOS / f"{n}.toml") for n in names]
    proc = ksmsim("validate", *files, "--differences")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 of 4 scenario(s) equal" in proc.stdout


def test_validate_live_reports_differences() -> None:
    # The keyhole profile merges a late page on its first visit; 6.18 waits a pass.
    proc = ksmsim("validate", str(SCENARIOS / "fork_tree.toml"), "--kernel", "keyhole")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "<>" in proc.stdout and "DIFFERENCE" in proc.stdout
