"""Interleavings explored per wall second: schedules/s, distinct states/s and steps/s.

Runs the explorer on a small race (by default tests/scenarios/races/keyhole_recheck.toml, the
keyhole race with its re-check in place, so nothing is found and the whole budget is spent
exploring) in each mode: exhaustive (preemption bound 2, to completion), random and PCT (a fixed
number of schedules each). Each schedule replays the race's setup on a fresh host and checks every
invariant after every step, as ``ksmsim check`` does. Also reports the cost of one schedule with
the checker and the state hashing switched off, to show where the time goes. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from ksmsim.sched.explorer import Explorer
from ksmsim.sched.race import load_race, race_profile
from ksmsim.sched.strategies import RandomWalk

DEFAULT_RACE = Path(__file__).resolve().parents[1] / "tests/scenarios/races/keyhole_recheck.toml"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--race", default=str(DEFAULT_RACE), help="race file to explore")
    ap.add_argument("--kernel", help="profile (default: the race's)")
    ap.add_argument("--schedules", type=int, default=300, help="schedules for random and pct")
    args = ap.parse_args(argv)
    race = load_race(args.race)
    profile = race_profile(race, args.kernel)
    modes: dict[str, Any] = {}
    for mode in ("exhaustive", "random", "pct"):
        explorer = Explorer(race, profile)
        report = explorer.explore(
            mode, schedules=None if mode == "exhaustive" else args.schedules, seconds=600
        )
        doc = report.to_json()
        doc["steps_per_s"] = round(report.steps / max(report.seconds, 1e-9), 1)
        modes[mode] = doc
    # One schedule's bare cost: no invariant checks, no state hashing.
    bare = Explorer(race, profile, check=False)
    n = args.schedules
    start = time.perf_counter()
    steps = 0
    for seed in range(n):
        steps += len(bare.run_once(RandomWalk(seed), hash_states=False).trace)
    elapsed = time.perf_counter() - start
    out = {
        "benchmark": "explore",
        "race": race.name,
        "kernel": profile.name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "modes": modes,
        "bare_random": {
            "schedules": n,
            "schedules_per_s": round(n / elapsed, 1),
            "steps_per_s": round(steps / elapsed, 1),
        },
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
