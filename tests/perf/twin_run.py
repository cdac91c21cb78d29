"""Run scenarios on the model and print a digest of the machine state after each (JSON).

``python -m tests.perf.twin_run SCENARIO...`` prints ``{"page_base": ..., "digests": {...}}``:
the tests run it in a subprocess with another configuration (the pure-Python frame base) and
compare the digests with their own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from ksmsim.kernel.page import Page
from ksmsim.workload.scenario import load_scenario

from .differential import RecordingRunner
from .state import machine_state


def state_digest(path: Path) -> str:
    """Return a hash of the result and of the machine state at every snapshot and at the end."""
    from ksmsim.workload.runner import resolve_profile

    scenario = load_scenario(path)
    runner = RecordingRunner(scenario, resolve_profile(scenario))
    result = runner.run()
    result.pop("wall_time_s")
    doc = {
        "result": result,
        "states": runner.states,
        "final": machine_state(runner.host.machine),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def main() -> None:
    """Print the digests of the scenarios named on the command line."""
    out = {
        "page_base": Page.__mro__[1].__name__,
        "digests": {p: state_digest(Path(p)) for p in sys.argv[1:]},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
