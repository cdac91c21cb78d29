"""``ksmsim validate --model-only``: the comparison, its verdicts and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ksmsim.cli import main

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def test_equal_to_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["validate", str(SCENARIOS / "kway_duplicates.toml"), "--model-only",
         str(SCENARIOS / "kernel" / "kway_duplicates.json")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "EQUAL" in out and "1 of 1 scenario(s) equal" in out
    assert "pages_sharing" in out and "proc:p0:ksm_merging_pages" in out


def test_a_difference_is_marked_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads((SCENARIOS / "kernel" / "kway_duplicates.json").read_text())
    doc["snapshots"][-1]["global"]["pages_sharing"] += 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    status = main(
        ["validate", str(SCENARIOS / "kway_duplicates.toml"), "--model-only", str(tampered),
         "--differences"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "1 DIFFERENCE(S)" in out
    lines = [line for line in out.splitlines() if line.lstrip().startswith("<>")]
    assert len(lines) == 1 and "pages_sharing" in lines[0]


def test_missing_snapshot_is_a_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads((SCENARIOS / "kernel" / "kway_duplicates.json").read_text())
    doc["snapshots"].pop()
    short = tmp_path / "short.json"
    short.write_text(json.dumps(doc))
    assert (
        main(["validate", str(SCENARIOS / "kway_duplicates.toml"), "--model-only", str(short)]) == 1
    )
    assert "snapshot labels differ" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a.toml", "b.toml", "--model-only", "x.json"], "one recorded result per scenario"),
        (
            [str(SCENARIOS / "kway_duplicates.toml"), "--model-only", "/nonexistent.json"],
            "no such file",
        ),
        (["/nonexistent.toml", "--model-only", "x.json"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
