"""The README's operator section: every command it shows is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ksmsim.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TITLE = "## Will KSM pay off here? Fleets, live snapshots, predictions, sweeps"


def section() -> str:
    """Return the operator section's text."""
    match = re.search(rf"^{re.escape(TITLE)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, "README has no operator section"
    return match.group(1)


def commands() -> list[list[str]]:
    """Return the ksmsim commands of the section's code lines (without sudo, pipes, comments)."""
    out = []
    for line in section().splitlines():
        text = line.strip().removeprefix("$ ").removeprefix("sudo ")
        if not line.startswith("    ") or not text.startswith("ksmsim "):
            continue
        text = text.split(" | ")[0].split("  #")[0]
        text = re.sub(r"\[([^]]*)\]", r"\1", text)  # optional parts: take them
        words = shlex.split(text)[1:]
        out.append([w for w in words if w not in ("|", "...")])
    return out


def test_the_section_shows_every_operator_command() -> None:
    used = {c[0] for c in commands()}
    assert used >= {"gen", "snapshot", "estimate", "predict", "sweep"}
    assert "stores no page contents, only fingerprints" in section()


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a)[:40])
def test_each_command_parses(argv: list[str]) -> None:
    argv = [w if w != "PID" else "1" for w in argv]
    argv = [w if w not in ("N", "M") else "100" for w in argv]
    argv = [w if w != "tcp://HOST:8786" else "tcp://127.0.0.1:8786" for w in argv]
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == f"cmd_{argv[0]}"
