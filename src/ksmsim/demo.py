"""``ksmsim demo``: a small built-in workload, narrated scan by scan."""

from __future__ import annotations

import json
from typing import Any, TextIO

from ksmsim.workload.runner import run_scenario
from ksmsim.workload.scenario import Scenario, parse_scenario

GUESTS = 3
IMAGE_PAGES = 96
ZERO_PAGES = 32
PRIVATE_PAGES = 64


def demo_scenario() -> Scenario:
    """Return the demo: three guests booted from one image, each with private memory."""
    regions = [
        {"name": "private", "pages": PRIVATE_PAGES, "fill": "unique"},
        {"name": "zeroed", "pages": ZERO_PAGES, "fill": "zero"},
        {"name": "image", "pages": IMAGE_PAGES, "fill": f"repeat:{IMAGE_PAGES}"},
    ]
    return parse_scenario(
        {
            "description": "three guests booted from one image, on the keyhole kernel",
            "kernel": "keyhole",
            "processes": [{"name": f"guest{g}", "regions": regions} for g in range(GUESTS)],
            "timeline": [
                {"op": "scan", "full_scans": 3, "snapshot_each": True, "label": "boot"},
                {"op": "comment", "text": "guest0 rewrites a quarter of its image pages"},
                {
                    "op": "write",
                    "proc": "guest0",
                    "region": "image",
                    "value": 1,
                    "count": IMAGE_PAGES // 4,
                },
                {"op": "scan", "full_scans": 2, "snapshot_each": True, "label": "rewrite"},
                {"op": "exit", "proc": "guest2"},
                {"op": "scan", "full_scans": 2, "snapshot_each": True, "label": "exit"},
                {"op": "unmerge_all", "label": "unmerged"},
            ],
        },
        "demo",
    )


_NOTES = {
    "boot.1": "first pass: every page gets an rmap_item and a checksum; nothing can merge yet",
    "boot.2": "second pass: unchanged pages enter the unstable tree and pair up into KSM pages",
    "boot.3": "steady state: each distinct content is one KSM page (shared), the rest sharing",
    "rewrite.1": "guest0's rewritten pages COWed off their KSM pages; ksmd sees them changed",
    "rewrite.2": "the rewritten pages are unique now: they wait in the unstable tree",
    "exit.1": "guest2 exited: its rmap_items are freed when ksmd reaches its slot",
    "exit.2": "",
    "unmerged": "run=2: every KSM page is broken back into private copies",
}


def run_demo(*, as_json: bool, out: TextIO) -> int:
    """Run the demo and print either a narrated table or the result document."""
    result: dict[str, Any] = run_scenario(demo_scenario())
    if as_json:
        out.write(json.dumps(result, indent=2) + "\n")
        return 0
    per_guest = PRIVATE_PAGES + ZERO_PAGES + IMAGE_PAGES
    out.write(
        f"ksmsim demo: {GUESTS} guests of {per_guest} pages ({IMAGE_PAGES} image pages alike in "
        f"every guest, {ZERO_PAGES} zero-filled, {PRIVATE_PAGES} private), kernel profile "
        f"{result['kernel']}\n\n"
    )
    header = f"{'snapshot':10} {'scans':>5} {'shared':>6} {'sharing':>7} {'unshared':>8} {'volatile':>8} {'saved KiB':>9}"
    out.write(header + "\n" + "-" * len(header) + "\n")
    for snap in result["snapshots"]:
        g = snap["global"]
        saved = g["pages_sharing"] * 4
        out.write(
            f"{snap['label']:10} {g['full_scans']:>5} {g['pages_shared']:>6} {g['pages_sharing']:>7} "
            f"{g['pages_unshared']:>8} {g['pages_volatile']:>8} {saved:>9}"
        )
        note = _NOTES.get(snap["label"], "")
        out.write(f"   {note}\n" if note else "\n")
    out.write(
        f"\nksmd did {result['ksmd']['work']['scanned']} page visits in {result['ksmd']['batches']} "
        f"batches: {result['ksmd']['cpu_s'] * 1000:.2f} ms of simulated CPU over "
        f"{result['sim_time_s']:.2f} s of simulated time ({result['wall_time_s']:.2f} s of wall time).\n"
        "pages_shared counts KSM pages, pages_sharing the extra mappings of them: the memory saved.\n"
        "Run `ksmsim run SCENARIO` on a scenario file of your own (see examples/).\n"
    )
    return 0
