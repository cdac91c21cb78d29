"""Simulated pages scanned per wall second by ksmd, over the first three full scans of 1 GiB.

Workloads (one process, 262,144 pages): all-unique pages, all-identical pages, and half
duplicates (half `repeat:16384`, half unique). Prints one JSON object. The kernel's own ksmd on
these machines scans such memory at roughly 0.9 M pages/s (first pass), 120 k pages/s (unique,
merging passes) and 250 k pages/s (identical, merging pass) at sleep_millisecs=0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from typing import Any

from ksmsim.kernel.jhash import HAVE_SPEEDUPS
from ksmsim.workload.host import Host

KERNEL_RATES = {"first_pass": 900_000, "unique_merging": 120_000, "identical_merging": 250_000}


def build(kind: str, pages: int, kernel: str) -> Host:
    host = Host(kernel, ram_pages=pages * 3)
    host.set_tunable("pages_to_scan", 1_000_000)
    host.set_tunable("sleep_millisecs", 0)
    if host.ksm.ksm_max_kernel_pages:
        host.set_tunable("max_kernel_pages", 0)
    host.spawn("p")
    if kind == "half":
        half = pages // 2
        host.mmap("p", "dup", half)
        host.fill("p", "dup", "repeat:16384")
        host.mmap("p", "uniq", pages - half)
        host.fill("p", "uniq", "unique")
    else:
        host.mmap("p", "r", pages)
        host.fill("p", "r", "unique" if kind == "unique" else ord("x"))
    return host


def measure(kind: str, pages: int, kernel: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    host = build(kind, pages, kernel)
    setup = time.perf_counter() - t0
    passes = []
    for _ in range(3):
        scanned0 = host.ksm.work.scanned
        t = time.perf_counter()
        assert host.scan(1)
        wall = time.perf_counter() - t
        scanned = host.ksm.work.scanned - scanned0
        passes.append(
            {
                "wall_s": round(wall, 3),
                "pages_scanned": scanned,
                "pages_per_s": round(scanned / wall),
                "counters": host.counters(),
            }
        )
    return {"setup_s": round(setup, 3), "passes": passes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=262144)
    ap.add_argument("--kernel", default="keyhole")
    args = ap.parse_args()
    results = {k: measure(k, args.pages, args.kernel) for k in ("unique", "identical", "half")}
    out = {
        "benchmark": "scan",
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor(),
        "kernel_profile": args.kernel,
        "jhash2_c": HAVE_SPEEDUPS,
        "pages": args.pages,
        "results": results,
        "kernel_ksmd_rates_pages_per_s": KERNEL_RATES,
        "ratio_to_kernel": {
            "first_pass_unique": round(
                results["unique"]["passes"][0]["pages_per_s"] / KERNEL_RATES["first_pass"], 3
            ),
            "unique_merging_passes": round(
                min(p["pages_per_s"] for p in results["unique"]["passes"][1:])
                / KERNEL_RATES["unique_merging"],
                3,
            ),
            "identical_merging_pass": round(
                results["identical"]["passes"][1]["pages_per_s"]
                / KERNEL_RATES["identical_merging"],
                3,
            ),
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
