"""One simulated hour of ksmd at the default tunables over a 16 GiB fleet with background writes.

The fleet is ``generators.vm_fleet(16, 1024)``: 16 guests of 1 GiB (4,194,304 pages), each
40% image pages shared by every guest, 15% zero pages, the rest private, 5% of it ``hot`` and
rewritten by a background writer at 50 pages/s per guest (800 writes/s in all, unique
contents). ksmd runs at the default tunables (pages_to_scan 100, sleep_millisecs 20, smart
scan on) for 3600 simulated seconds while the writers write; nothing is fast-forwarded, every
batch and every write is simulated.

The scenario runs on the model runner with the time series of the ``run`` action sampled once a
simulated minute instead of after every batch (``ksmsim run --sample-every 60``: a sample reads
every frame for ``ksm_pages``; 180,000 of them would measure the sampling, not ksmd). Prints one JSON object
with the wall time of the hour (and of the set-up before it), the simulated time, ksmd's
batches and full scans, the writes issued and the counters at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import time
from typing import Any

from ksmsim.workload import scenario as sc
from ksmsim.workload.generators import vm_fleet
from ksmsim.workload.runner import ModelRunner, resolve_profile

TARGET_WALL_S = 60.0


class HorizonRunner(ModelRunner):
    """The model runner, timing its ``run`` actions (wall and simulated seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_wall_s = 0.0
        self.run_sim_s = 0.0

    def _run(self, a: sc.Run) -> None:
        t0 = time.perf_counter()
        s0 = self.host.sim_time_s
        super()._run(a)
        self.run_wall_s += time.perf_counter() - t0
        self.run_sim_s += self.host.sim_time_s - s0


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=16)
    ap.add_argument("--guest-mib", type=float, default=1024)
    ap.add_argument("--seconds", type=float, default=3600)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    doc = vm_fleet(args.guests, args.guest_mib, run_s=args.seconds, seed=0)
    scenario = sc.parse_scenario(doc, "horizon")
    runner = HorizonRunner(scenario, resolve_profile(scenario), sample_every_s=60.0)
    result = runner.run()
    total = time.perf_counter() - t0
    end = result["snapshots"][-1]
    out = {
        "benchmark": "horizon",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "fleet": doc["description"],
        "pages": args.guests * int(args.guest_mib * 256),
        "tunables": result["tunables"],
        "simulated_s": round(runner.run_sim_s, 3),
        "wall_s_of_the_run": round(runner.run_wall_s, 1),
        "wall_s_setup": round(total - runner.run_wall_s, 1),
        "wall_s_total": round(total, 1),
        "target_wall_s": TARGET_WALL_S * args.seconds / 3600,
        "meets_target": runner.run_wall_s <= TARGET_WALL_S * args.seconds / 3600,
        "ksmd_batches": result["ksmd"]["batches"],
        "ksmd_sim_cpu_s": round(result["ksmd"]["cpu_s"], 3),
        "pages_scanned": end["global"]["pages_scanned"],
        "full_scans": end["global"]["full_scans"],
        "writes": runner.churn.writes,
        "counters_at_end": end["global"],
        "timeseries_per_minute": result["timeseries"],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20), 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
