"""Speed of ``ksmsim snapshot`` and ``ksmsim estimate`` on this machine's own processes.

Takes a snapshot of every process this user may read (read-only; as root, all of them), then
predicts KSM on it at the kernel's default tunables and at the settings given with
``--pages-to-scan``. Prints one JSON object: the snapshot's size and wall time, and per setting
the estimate's wall time, the simulated pages ksmd scanned per wall second, and the prediction's
headline figures. Pass ``--snapshot FILE`` to reuse a snapshot instead of taking one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from typing import Any

from ksmsim.workload.predict import SnapshotWorkload, predict
from ksmsim.workload.snapshot import load_snapshot, take_snapshot


def main() -> None:
    """Run the benchmark and print its JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--snapshot", help="a snapshot file to estimate instead of taking one")
    ap.add_argument(
        "--pages-to-scan",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="settings of pages_to_scan to estimate (sleep_millisecs 20)",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    passes = load_snapshot(args.snapshot) if args.snapshot else [take_snapshot(None)]
    snap_wall = time.perf_counter() - t0
    summary = passes[-1].summary()
    workload = SnapshotWorkload(tuple(passes), "this-host")
    runs: list[dict[str, Any]] = []
    for pts in args.pages_to_scan:
        t = time.perf_counter()
        pred = predict(workload, tunables={"pages_to_scan": pts, "sleep_millisecs": 20})
        wall = time.perf_counter() - t
        scanned = pred.pass_ends[-1].counters.get("pages_scanned", 0) if pred.pass_ends else 0
        runs.append(
            {
                "pages_to_scan": pts,
                "sleep_millisecs": 20,
                "wall_s": round(wall, 3),
                "sim_time_s": round(pred.sim_time_s, 3),
                "full_scans": pred.full_scans,
                "pages_scanned": scanned,
                "scanned_pages_per_wall_s": round(scanned / wall) if wall else None,
                "saved_bytes": pred.saved_bytes,
                "t50_s": pred.t50_s,
                "t99_s": pred.t99_s,
                "ksmd_cpu_share": pred.ksmd_cpu_share,
                "converged": pred.converged,
            }
        )
    out = {
        "benchmark": "estimate",
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "snapshot": {
            "taken": not args.snapshot,
            "wall_s": round(snap_wall, 3),
            **summary,
            "pages_per_wall_s": round(summary["pages"] / snap_wall) if snap_wall else None,
        },
        "estimates": runs,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
