"""Scenario generators: functions that write scenario documents (dicts in the format).

``random_mix`` draws a seeded mix of every action of the format over a few small processes,
keeping the timeline valid (it names only live processes and existing regions).
"""

from __future__ import annotations

import random
from typing import Any

PATTERNS = ("zero", "unique", "repeat:2", "repeat:5", "x", "y", 7)


def random_mix(seed: int, *, steps: int = 30, kernel: str | None = None) -> dict[str, Any]:
    """Return a random but valid scenario exercising every action, reproducible from ``seed``."""
    rng = random.Random(seed)
    procs: dict[str, dict[str, int]] = {}
    names = iter(f"p{i}" for i in range(1000))
    processes = []
    for _ in range(rng.randint(2, 3)):
        name = next(names)
        regions = {}
        spec = []
        for r in range(rng.randint(1, 2)):
            pages = rng.randint(4, 24)
            regions[f"r{r}"] = pages
            spec.append({"name": f"r{r}", "pages": pages, "fill": rng.choice(PATTERNS)})
        procs[name] = regions
        processes.append({"name": name, "regions": spec})
    timeline: list[dict[str, Any]] = []
    snaps = 0
    region_seq = 10

    def pick() -> tuple[str, str, int]:
        proc = rng.choice(sorted(procs))
        region = rng.choice(sorted(procs[proc]))
        return proc, region, procs[proc][region]

    ops = [
        "fill",
        "write",
        "read",
        "mmap",
        "munmap",
        "madvise",
        "fork",
        "exit",
        "scan",
        "scan",
        "scan",
        "set",
        "unmerge_all",
        "digest",
        "snapshot",
    ]
    for _ in range(steps):
        op = rng.choice(ops)
        if op in ("fork", "exit") and not procs:
            op = "scan"
        if op == "exit" and len(procs) <= 1:
            op = "scan"
        if op == "fork" and len(procs) >= 5:
            op = "write"
        if not procs and op != "scan":
            break
        if op == "fill":
            proc, region, pages = pick()
            start = rng.randrange(pages)
            timeline.append(
                {
                    "op": "fill",
                    "proc": proc,
                    "region": region,
                    "pattern": rng.choice(PATTERNS),
                    "start": start,
                    "count": rng.randint(1, pages - start),
                }
            )
        elif op == "write":
            proc, region, pages = pick()
            timeline.append(
                {
                    "op": "write",
                    "proc": proc,
                    "region": region,
                    "value": rng.randrange(256),
                    "offset": rng.randrange(4096),
                    "start": rng.randrange(pages),
                    "stride": rng.randint(1, 3),
                }
            )
        elif op == "read":
            proc, region, pages = pick()
            timeline.append({"op": "read", "proc": proc, "region": region})
        elif op == "mmap":
            proc = rng.choice(sorted(procs))
            pages = rng.randint(2, 16)
            name = f"m{region_seq}"
            region_seq += 1
            procs[proc][name] = pages
            timeline.append(
                {
                    "op": "mmap",
                    "proc": proc,
                    "region": {
                        "name": name,
                        "pages": pages,
                        "fill": rng.choice(PATTERNS),
                        "mergeable": rng.random() < 0.85,
                    },
                }
            )
        elif op == "munmap":
            proc, region, pages = pick()
            start = rng.randrange(pages)
            timeline.append(
                {
                    "op": "munmap",
                    "proc": proc,
                    "region": region,
                    "start": start,
                    "count": rng.randint(1, max(1, (pages - start) // 2)),
                }
            )
        elif op == "madvise":
            proc, region, pages = pick()
            start = rng.randrange(pages)
            timeline.append(
                {
                    "op": "madvise",
                    "proc": proc,
                    "region": region,
                    "advice": rng.choice(["mergeable", "unmergeable", "dontneed"]),
                    "start": start,
                    "count": rng.randint(1, pages - start),
                }
            )
        elif op == "fork":
            parent = rng.choice(sorted(procs))
            child = next(names)
            procs[child] = dict(procs[parent])
            timeline.append({"op": "fork", "proc": parent, "child": child})
        elif op == "exit":
            proc = rng.choice(sorted(procs))
            del procs[proc]
            timeline.append({"op": "exit", "proc": proc})
        elif op == "scan":
            snaps += 1
            timeline.append(
                {
                    "op": "scan",
                    "full_scans": rng.randint(1, 3),
                    "label": f"s{snaps}",
                    "snapshot_each": rng.random() < 0.3,
                    "allow_timeout": True,
                }
            )
        elif op == "set":
            name, value = rng.choice(
                [
                    ("use_zero_pages", rng.randint(0, 1)),
                    ("smart_scan", rng.randint(0, 1)),
                    ("pages_to_scan", rng.choice([7, 50, 100000])),
                ]
            )
            timeline.append({"op": "set", "tunables": {name: value}})
        elif op == "unmerge_all":
            snaps += 1
            timeline.append({"op": "unmerge_all", "label": f"u{snaps}"})
        elif op == "digest":
            timeline.append({"op": "digest"})
        elif op == "snapshot":
            snaps += 1
            timeline.append({"op": "snapshot", "label": f"n{snaps}"})
    snaps += 1
    timeline.append({"op": "scan", "full_scans": 2, "label": f"s{snaps}", "allow_timeout": True})
    doc: dict[str, Any] = {
        "description": f"seeded random mix of every action (seed {seed})",
        "seed": seed,
        "processes": processes,
        "timeline": timeline,
    }
    if kernel is not None:
        doc["kernel"] = kernel
    return doc
