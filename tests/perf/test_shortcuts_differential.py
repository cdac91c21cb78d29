"""Every exact shortcut on against every shortcut off: identical results and states, step by step.

The conformance scenarios (tests/scenarios) and seeded random scenarios (``extended_mix``, built
on ``random_mix``) run twice, and the result documents (everything but the wall time) and the
machine's whole state at every snapshot must be identical. CI runs ``KSMSIM_DIFF_SEEDS`` random
scenarios (default 150); the full count (3000) runs with ``-m slow``. A third run uses the
pure-Python twins of the C helpers, and the C helpers are compared with their twins directly.
A scenario may end in a scenario error (out of memory, say), the same in both runs; an exception
of the model itself (its AssertionError included) fails the test even if both runs raise it.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ksmsim.kernel.ksm_shortcuts import Shortcuts

from .differential import compare_shortcuts, extended_mix

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
FILES = sorted(p for p in SCENARIOS.iterdir() if p.suffix in (".toml", ".json"))
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.toml"))
CI_SEEDS = int(os.environ.get("KSMSIM_DIFF_SEEDS", "150"))
FULL_SEEDS = 3000
PY_TWINS = Shortcuts(c_helpers=False)
MODEL_BUG_SEEDS = (9, 167, 250, 387)


def _load(path: Path) -> dict[str, Any]:
    if path.suffix == ".toml":
        return tomllib.loads(path.read_text())
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_conformance_scenarios_identical(path: Path) -> None:
    doc = _load(path)
    assert compare_shortcuts(doc, check=True) is None
    assert compare_shortcuts(doc, PY_TWINS) is None


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_examples_identical(path: Path) -> None:
    assert compare_shortcuts(_load(path)) is None


@pytest.mark.parametrize("seed", range(CI_SEEDS))
def test_random_scenarios_identical(seed: int) -> None:
    doc = extended_mix(seed)
    on = PY_TWINS if seed % 5 == 4 else None
    assert compare_shortcuts(doc, on) is None, json.dumps(doc)


@pytest.mark.parametrize("seed", MODEL_BUG_SEEDS)
def test_random_scenarios_that_met_model_bugs(seed: int) -> None:
    # These ended in the model's AssertionError ("fault ... did not resolve": reclaim with swap
    # full unmapped the page a write fault was copying), which used to count as no difference.
    doc = extended_mix(seed)
    assert compare_shortcuts(doc) is None, json.dumps(doc)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(CI_SEEDS, FULL_SEEDS))
def test_random_scenarios_identical_full(seed: int) -> None:
    doc = extended_mix(seed)
    on = PY_TWINS if seed % 5 == 4 else None
    assert compare_shortcuts(doc, on) is None, json.dumps(doc)
