"""The model against the kernel's own ksmd on the same work: kernel ksmd CPU s / model wall s.

Three workloads (benchmarks/scenarios/ksmd_*.toml), each four processes of 128 MiB with three
full scans at pages_to_scan = 1,000,000 and smart_scan = 0: all pages unique; all pages
identical; half ``repeat:16384`` and half unique. Each runs, in the same benchmark run, on the
live kernel with ``ksmsim real`` (which records ksmd's CPU time per scan: the scheduler's
runtime of the ksmd thread, ``ksmd_runtime_s``) and on the model with ``ksmsim run``, timed as a
subprocess from start to exit (interpreter start, imports, fills, the scans and writing the
result). The figure is the sum of ksmd's CPU over the three scans divided by the model's wall
time; the counters of every snapshot are compared (``ksmsim validate``'s comparison) and must
be equal. The model's CPU time (user + system) is reported too: on a busy machine wall time
includes waiting for a CPU.

Needs root and /sys/kernel/mm/ksm (else ``--model-only`` times the model alone). Every kernel
run restores KSM's tunables as it found them; the runs never overlap. The model's subprocess
runs with Python's bytecode cache enabled (in a temporary PYTHONPYCACHEPREFIX, warmed by one
untimed run), as an installed package would. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ksmsim.report.compare import compare_results

HERE = Path(__file__).resolve().parent
WORKLOADS = ("unique", "identical", "half")
TARGET = 1.0


def _child_env(cache: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPYCACHEPREFIX=cache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_model(scenario: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``ksmsim run`` as a subprocess; return its wall and CPU time and its result."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ksmsim", "run", str(scenario), "-o", str(out)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "result": json.loads(out.read_text())}


def run_kernel(scenario: Path, out: Path) -> dict[str, Any]:
    """Run ``ksmsim real`` as a subprocess; return ksmd's CPU per scan and the result."""
    subprocess.run(
        [sys.executable, "-m", "ksmsim", "real", str(scenario), "-o", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads(out.read_text())
    scans = [s for s in result["scans"]]
    runtime = [x for s in scans for x in s["ksmd_runtime_s"]]
    cpu = [x for s in scans for x in s["ksmd_cpu_s"]]
    exact = all(all(s["exact"]) for s in scans)
    return {"ksmd_runtime_s": runtime, "ksmd_cpu_s": cpu, "exact": exact, "result": result}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side per workload")
    ap.add_argument("--model-only", action="store_true", help="time the model alone")
    ap.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    args = ap.parse_args(argv)
    out: dict[str, Any] = {
        "benchmark": "ksmd_ratio",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "repeat": args.repeat,
        "workloads": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = _child_env(str(Path(tmp) / "pycache"))
        warm = HERE / "scenarios" / "ksmd_unique.toml"
        subprocess.run(
            [sys.executable, "-m", "ksmsim", "validate", str(warm), "--help"],
            env=env,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        for name in args.workloads:
            scenario = HERE / "scenarios" / f"ksmd_{name}.toml"
            model_runs = []
            kernel_runs = []
            for i in range(args.repeat):
                if not args.model_only:
                    kernel_runs.append(run_kernel(scenario, Path(tmp) / f"k{i}.json"))
                if i == 0:  # warm the bytecode cache with an untimed run
                    run_model(scenario, Path(tmp) / "warm.json", env)
                model_runs.append(run_model(scenario, Path(tmp) / f"m{i}.json", env))
            walls = [m["wall_s"] for m in model_runs]
            entry: dict[str, Any] = {
                "model_wall_s": [round(w, 3) for w in walls],
                "model_cpu_s": [round(m["cpu_s"], 3) for m in model_runs],
                "model_wall_s_median": round(statistics.median(walls), 3),
            }
            if kernel_runs:
                ksmd = [sum(k["ksmd_runtime_s"]) for k in kernel_runs]
                comparisons = [
                    compare_results(m["result"], k["result"])
                    for m in model_runs
                    for k in kernel_runs
                ]
                entry.update(
                    {
                        "kernel_ksmd_cpu_s": [round(x, 3) for x in ksmd],
                        "kernel_ksmd_cpu_s_per_scan": [
                            [round(x, 3) for x in k["ksmd_runtime_s"]] for k in kernel_runs
                        ],
                        "kernel_ksmd_cpu_s_median": round(statistics.median(ksmd), 3),
                        "kernel_stops_exact": all(k["exact"] for k in kernel_runs),
                        "ratio": round(statistics.median(ksmd) / statistics.median(walls), 3),
                        "ratio_cpu": round(
                            statistics.median(ksmd)
                            / statistics.median(m["cpu_s"] for m in model_runs),
                            3,
                        ),
                        "counters_equal": all(c.equal for c in comparisons),
                        "counters_compared": sum(len(s.rows) for s in comparisons[0].snapshots),
                        "meets_target": statistics.median(ksmd) / statistics.median(walls)
                        >= TARGET,
                    }
                )
            entry["final_counters"] = model_runs[0]["result"]["snapshots"][-1]["global"]
            out["workloads"][name] = entry
    out["machine"]["load_average_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
