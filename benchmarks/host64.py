"""A 64 GiB host on one machine: 64 guests of 1 GiB merged to convergence, timed and measured.

The host has 16,777,216 frames of 4 KiB. Each of 64 guests (a process ``gNN``) maps 1 GiB of
mergeable memory: 40% ``shared`` (``repeat:K`` with K the region's size and one salt, so every
page is distinct within a guest and equal across all 64), 10% ``zero`` and 50% ``own``
(``unique``). ksmd (v6.18, default tunables except pages_to_scan = 1,000,000 and smart_scan
as the default) runs three full scans, with a snapshot after each. The scenario runs as
``ksmsim run`` in a subprocess, whose wall time and peak resident memory are reported, with the
bytes of Python memory per simulated frame (the child's peak resident set over the frames)
and the counters after each scan, checked against the values the layout implies.

Prints one JSON object. ``--scale N`` divides every guest's size by N (for a quick run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GUESTS = 64
GUEST_PAGES = 262_144  # 1 GiB
TARGET_WALL_S = 600.0
TARGET_RSS_BYTES = 8 << 30


def layout(scale: int) -> tuple[int, int, int]:
    """Return the (shared, zero, own) pages of one guest at this scale."""
    pages = GUEST_PAGES // scale
    shared = pages * 4 // 10
    zero = pages // 10
    return shared, zero, pages - shared - zero


def scenario(scale: int) -> str:
    """Return the scenario as TOML."""
    shared, zero, own = layout(scale)
    lines = [
        f'description = "64 GiB host / {scale}: {GUESTS} guests, 40% shared, 10% zero, 50% unique"',
        'kernel = "v6.18"',
        "",
        "[machine]",
        f"ram_pages = {GUESTS * (shared + zero + own) + 65536}",
        "",
        "[tunables]",
        "pages_to_scan = 1000000",
        "",
    ]
    for g in range(GUESTS):
        lines += [
            "[[processes]]",
            f'name = "g{g:02d}"',
            "regions = ["
            f'{{ name = "shared", pages = {shared}, fill = "repeat:{shared}", salt = "image" }}, '
            f'{{ name = "zero", pages = {zero}, fill = "zero" }}, '
            f'{{ name = "own", pages = {own}, fill = "unique" }}]',
        ]
    lines += [
        "",
        "[[timeline]]",
        'op = "scan"',
        "full_scans = 3",
        "snapshot_each = true",
        'label = "scan"',
    ]
    return "\n".join(lines) + "\n"


def expected(scale: int, max_page_sharing: int = 256) -> dict[str, int]:
    """Return the counters after convergence that the layout implies."""
    shared, zero, _own = layout(scale)
    zero_pages = GUESTS * zero
    zero_kpages = -(-zero_pages // max_page_sharing)
    return {
        "pages_shared": shared + zero_kpages,
        "pages_sharing": shared * (GUESTS - 1) + zero_pages - zero_kpages,
        "pages_unshared": GUESTS * layout(scale)[2],
        "pages_volatile": 0,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="divide each guest's size by this")
    ap.add_argument("--keep", help="write the scenario and the model's result to this directory")
    args = ap.parse_args(argv)
    frames = GUESTS * GUEST_PAGES // args.scale
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scen = work / "host64.toml"
        scen.write_text(scenario(args.scale))
        out = work / "host64.result.json"
        cmd = [sys.executable, "-m", "ksmsim", "run", str(scen), "-o", str(out)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"ksmsim run failed ({proc.returncode}): {proc.stderr.strip()}")
        result = json.loads(out.read_text())
    peak_rss = after.ru_maxrss * 1024
    scans = [s["global"] for s in result["snapshots"]]
    want = expected(args.scale)
    final = scans[-1]
    doc: dict[str, Any] = {
        "benchmark": "host64",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "scale": args.scale,
        "guests": GUESTS,
        "frames": frames,
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "model_wall_s_inside": round(result["wall_time_s"], 1),
        "peak_rss_bytes": peak_rss,
        "peak_rss_gib": round(peak_rss / (1 << 30), 2),
        "bytes_per_frame": round(peak_rss / frames, 1),
        "targets": {
            "wall_s": TARGET_WALL_S / args.scale,
            "rss_bytes": TARGET_RSS_BYTES // args.scale,
        },
        "meets_targets": wall <= TARGET_WALL_S / args.scale
        and peak_rss <= TARGET_RSS_BYTES // args.scale,
        "counters_per_scan": scans,
        "expected_at_convergence": want,
        "converged_as_expected": all(final[k] == v for k, v in want.items()),
        "ksmd_sim_cpu_s": result["ksmd"]["cpu_s"],
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
