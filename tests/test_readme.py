"""The README's promises: its Quick start commands and its Python snippet."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def section(title: str) -> str:
    """Return the text of the README's ``## title`` section (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def quick_start_commands() -> list[str]:
    """Return the indented code lines of the Quick start section."""
    return [line.strip() for line in section("Quick start").splitlines() if line.startswith("    ")]


def python_snippet() -> str:
    """Return the README's one ```python block."""
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
    assert len(blocks) == 1
    return str(blocks[0])


def test_quick_start_has_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert all(commands)


def test_first_command_installs_and_runs_the_demo() -> None:
    first = quick_start_commands()[0]
    steps = [s.strip() for s in first.split("&&")]
    assert steps[0] == "python3 -m venv .venv"
    assert re.fullmatch(r"\.venv/bin/pip install -e \.", steps[1])
    assert steps[-1].endswith("ksmsim demo")
    assert steps[-1] == ".venv/bin/ksmsim demo"


def test_second_command_is_the_ci_test_command() -> None:
    second = quick_start_commands()[1]
    steps = [s.strip() for s in second.split("&&")]
    assert steps[0] == "python3 -m venv .venv"
    assert steps[1] == ".venv/bin/pip install -e '.[dev]'"
    pytest_step = steps[-1]
    assert pytest_step == ".venv/bin/python -m pytest -q"
    # .ci/run runs the very same command, on a line of its own.
    assert pytest_step in CI.splitlines()
    # ... and installs the same extras.
    assert ".venv/bin/pip install -q -e '.[dev]'" in CI


def test_python_snippet_runs_and_prints_what_it_claims() -> None:
    code = python_snippet()
    claims = re.findall(r"^print\((.*)\)\s*#\s*(\{.*\})\s*$", code, re.M)
    assert len(claims) == 1, "the snippet has one print with the output in a comment"
    claim_text = claims[0][1]
    assert claim_text.endswith(", ...}")
    claimed = ast.literal_eval(claim_text.removesuffix(", ...}") + "}")
    assert claimed  # e.g. {'pages_shared': 2, 'pages_sharing': 6}

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_snippet"})
    printed = ast.literal_eval(out.getvalue().strip())
    assert isinstance(printed, dict)
    # The printed dict starts with the claimed items, in that order ("..." stands for the rest).
    assert list(printed.items())[: len(claimed)] == list(claimed.items())
    assert len(printed) > len(claimed)


def test_readme_commands_name_existing_files() -> None:
    for path in re.findall(r"ksmsim run (examples/\S+)", README):
        assert (ROOT / path).is_file(), path
