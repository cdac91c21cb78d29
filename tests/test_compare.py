"""Tests for ``ksmsim compare`` on the seed commit's experiment (examples/swap_pressure.toml):
the pinned design keeps reclaimed KSM pages in memory until ksmd lets them go, the keyhole
frees them at once."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from ksmsim.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "swap_pressure.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _compare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    status = main(["compare", str(EXAMPLE), *args])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def _row(lines: list[str], label: str) -> list[str]:
    [line] = [ln for ln in lines if ln.startswith(label)]
    return line[len(label) :].split()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the experiment under both designs, with its JSON and its plot."""
    tmp = tmp_path_factory.mktemp("compare")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(
            [
                "compare",
                str(EXAMPLE),
                "--kernel",
                "pinned",
                "--kernel",
                "keyhole",
                "-o",
                str(tmp / "out.json"),
                "--plot",
                str(tmp / "out.png"),
            ]
        )
    return {
        "status": status,
        "out": out.getvalue().splitlines(),
        "err": err.getvalue(),
        "json": json.loads((tmp / "out.json").read_text()),
        "png": tmp / "out.png",
    }


def test_compare_exits_ok_and_prints_both_columns(both: dict[str, Any]) -> None:
    assert both["status"] == 0
    assert both["err"] == ""
    header, *rows = both["out"]
    assert header.split() == ["pinned", "keyhole"]
    assert header.index("pinned") < header.index("keyhole")
    # Every row has a value for each design.
    for line in rows:
        assert len(line.split()) >= 3, line
    median = _row(rows, "unmap->free delay median (s)")
    assert len(median) == 2
    assert float(median[0]) > 0 and median[1] == "0.000"
    assert _row(rows, "out-of-memory events") == ["0", "0"]


def test_compare_json_has_both_designs_and_their_delays(both: dict[str, Any]) -> None:
    doc = both["json"]
    assert doc["scenario"] == "swap_pressure"
    assert doc["tunables"] == {"pages_to_scan": 100, "sleep_millisecs": 20}
    pinned, keyhole = doc["designs"]
    assert (pinned["kernel"], keyhole["kernel"]) == ("pinned", "keyhole")
    # The keyhole frees each reclaimed KSM page in the same reclaim pass; the pinned design
    # only once ksmd has removed the node's last rmap_item (and reclaim comes back).
    assert keyhole["free_delay_median_s"] == 0
    assert keyhole["free_delay_max_s"] == 0
    assert keyhole["ksm_pages_freed_after_unmap"] > 0
    assert keyhole["unmapped_ksm_pages_still_resident"] == 0
    assert pinned["free_delay_median_s"] > 0
    assert pinned["free_delay_max_s"] >= pinned["free_delay_p90_s"] >= pinned["free_delay_median_s"]
    assert pinned["ksm_pages_freed_after_unmap"] > 0
    # Released: freed, or (pinned) freeable once ksmd dropped the pin.
    assert keyhole["release_delay_median_s"] == keyhole["release_delay_max_s"] == 0
    assert pinned["release_delay_median_s"] > 0
    assert pinned["ksm_pages_released_after_unmap"] >= pinned["ksm_pages_freed_after_unmap"]
    for design in (pinned, keyhole):
        assert design["pages_swapped_out"] > 0
        assert design["oom_events"] == 0
    assert set(doc["timeseries"]) == set(doc["free_delays_s"]) == {"pinned", "keyhole"}
    assert doc["free_delays_s"]["keyhole"] == [0.0] * keyhole["ksm_pages_freed_after_unmap"]
    assert len(doc["free_delays_s"]["pinned"]) == pinned["ksm_pages_freed_after_unmap"]


def test_compare_writes_a_png_plot(both: dict[str, Any]) -> None:
    png = both["png"]
    assert png.exists()
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_set_pages_to_scan_changes_the_outcome(
    both: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = _compare(
        capsys, "--kernel", "pinned", "--set", "pages_to_scan=25", "-o", str(tmp_path / "o.json")
    )
    assert (status, err) == (0, [])
    assert out[0].split() == ["pinned"]
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["tunables"] == {"pages_to_scan": 25, "sleep_millisecs": 20}
    [slow] = doc["designs"]
    fast = both["json"]["designs"][0]
    assert slow["kernel"] == fast["kernel"] == "pinned"
    # A quarter of the pages per batch: a full scan takes about four times as long, so ksmd
    # reaches each node's last rmap_item (and drops the pin) later, at a lower CPU cost.
    assert slow["ksmd_full_scan_period_s"] > 3 * fast["ksmd_full_scan_period_s"]
    assert slow["release_delay_median_s"] > 2 * fast["release_delay_median_s"]
    assert slow["ksmd_cpu_s"] < fast["ksmd_cpu_s"]
    assert slow["ksm_pages_released_after_unmap"] == fast["ksm_pages_released_after_unmap"]


@pytest.mark.parametrize("bad", ["pages_to_scan", "pages_to_scan=", "=5", "pages_to_scan=x"])
def test_bad_set_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    status, out, err = _compare(capsys, "--kernel", "keyhole", "--set", bad)
    assert status == 2
    assert out == []
    assert len(err) == 1
    assert err[0].startswith("ksmsim: error: ") and "--set" in err[0] and "NAME=INTEGER" in err[0]


def test_set_of_unknown_tunable_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _compare(capsys, "--kernel", "v2.6.33", "--set", "max_kernel_pages=5")
    assert (status, out) == (2, [])
    assert len(err) == 1 and "max_kernel_pages" in err[0]


def test_unknown_kernel_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _compare(capsys, "--kernel", "v9.9", "--kernel", "keyhole")
    assert (status, out) == (2, [])
    assert len(err) == 1
    assert "v9.9" in err[0] and "keyhole" in err[0]


def test_compare_needs_a_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _compare(capsys)
    assert (status, out) == (2, [])
    assert len(err) == 1 and "--kernel" in err[0]
