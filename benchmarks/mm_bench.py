"""Memory-management model benchmark: allocation and fault rates, memory per simulated frame.

Prints ONE JSON object on stdout:

* ``rates``: frames allocated per second (fresh frames, and frames reused from the free list),
  faults served per second (write faults over fresh memory, read faults mapping the zero
  page, COW faults in a fork child), and fork's pte-copy rate.
* ``memory``: Python memory per simulated frame on a 1 GiB host (262,144 frames of 4 KiB)
  where 8 processes each map and write 1/8 of RAM with whole pages drawn from a small shared
  pool, so page contents are shared by identity. ``traced_bytes_per_frame`` is what
  tracemalloc sees allocated by the setup (the pool's contents were created before tracing
  started, so they are excluded), divided by the frames. ``rss_delta_bytes_per_frame`` is
  the growth of the process's resident set over an identical untraced setup, and
  ``ru_maxrss_kib`` the process's peak RSS as getrusage reports it.
* machine information and the date.

Run: ``python benchmarks/mm_bench.py`` (about 20-40 s). ``--quick`` shrinks every size 16x.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from typing import Any

from ksmsim.kernel.contents import ZERO_DATA
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.memory import read_user_byte, write_user_bytes
from ksmsim.kernel.mm import MmStruct
from ksmsim.kernel.mmap import do_mmap_anon
from ksmsim.kernel.page import PAGE_SIZE
from ksmsim.kernel.page_alloc import Zone
from ksmsim.kernel.profile import KEYHOLE

HOST_FRAMES = 262_144  # 1 GiB of 4 KiB frames
NPROCS = 8
POOL_SIZE = 16
TARGET_BYTES_PER_FRAME = 200


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def _rss_bytes() -> int:
    """The current resident set size, from /proc/self/statm (0 where it does not exist)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# --- rates ------------------------------------------------------------------------------------
def bench_alloc(frames: int) -> dict[str, float]:
    zone = Zone(frames, ZERO_DATA)
    t0 = time.perf_counter()
    pages = [zone.alloc_page() for _ in range(frames)]
    t1 = time.perf_counter()
    assert zone.nr_free == 0 and all(p is not None for p in pages)
    for p in pages:
        zone.put_page(p)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    again = [zone.alloc_page() for _ in range(frames)]
    t3 = time.perf_counter()
    assert zone.nr_free == 0 and all(p is not None for p in again)
    return {
        "fresh_frames_allocated_per_s": _rate(frames, t1 - t0),
        "frames_freed_per_s": _rate(frames, t2 - t1),
        "reused_frames_allocated_per_s": _rate(frames, t3 - t2),
    }


def bench_faults(pages: int) -> dict[str, float]:
    machine = Machine(KEYHOLE, MachineConfig(ram_pages=2 * pages))
    mm = machine.new_process("bench")
    length = pages * PAGE_SIZE

    # Read faults over untouched memory: each maps the shared zero page.
    ro = do_mmap_anon(mm, length)
    t0 = time.perf_counter()
    for i in range(pages):
        read_user_byte(mm, ro + i * PAGE_SIZE)
    t1 = time.perf_counter()

    # Write faults over fresh memory: each allocates a zeroed frame.
    rw = do_mmap_anon(mm, length)
    t2 = time.perf_counter()
    for i in range(pages):
        write_user_bytes(mm, rw + i * PAGE_SIZE, b"w")
    t3 = time.perf_counter()
    assert machine.zone.nr_free == pages

    # fork copies the page tables copy-on-write; the child's writes then copy every page.
    t4 = time.perf_counter()
    child = machine.fork(mm, "child")
    t5 = time.perf_counter()
    for i in range(pages):
        write_user_bytes(child, rw + i * PAGE_SIZE, b"c")
    t6 = time.perf_counter()
    assert machine.zone.nr_free == 0
    assert machine.vmstat["cow_ksm"] == 0
    return {
        "read_faults_zero_page_per_s": _rate(pages, t1 - t0),
        "write_faults_fresh_per_s": _rate(pages, t3 - t2),
        "fork_ptes_copied_per_s": _rate(2 * pages, t5 - t4),
        "cow_faults_after_fork_per_s": _rate(pages, t6 - t5),
    }


# --- memory per frame -------------------------------------------------------------------------
def make_pool() -> list[bytes]:
    return [bytes([i + 1]) * PAGE_SIZE for i in range(POOL_SIZE)]


def populate(frames: int, pool: list[bytes]) -> tuple[Machine, list[MmStruct]]:
    """Build the host: NPROCS processes each mapping and writing frames/NPROCS pages."""
    machine = Machine(KEYHOLE, MachineConfig(ram_pages=frames))
    per_proc = frames // NPROCS
    procs = []
    for n in range(NPROCS):
        mm = machine.new_process(f"p{n}")
        addr = do_mmap_anon(mm, per_proc * PAGE_SIZE)
        for i in range(per_proc):
            write_user_bytes(mm, addr + i * PAGE_SIZE, pool[(7 * i + n) % POOL_SIZE])
        procs.append(mm)
    assert machine.zone.nr_free == frames - NPROCS * per_proc
    return machine, procs


def bench_memory(frames: int) -> dict[str, Any]:
    pool = make_pool()
    pool_bytes = sum(sys.getsizeof(b) for b in pool)

    # Untraced run: resident-set growth.
    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    machine, procs = populate(frames, pool)
    t1 = time.perf_counter()
    gc.collect()
    rss1 = _rss_bytes()
    distinct = {id(p.data) for p in machine.zone.allocated_pages()}
    assert distinct <= {id(b) for b in pool}, "contents are not shared by identity"
    del machine, procs
    gc.collect()

    # Traced run: Python allocations made by the setup, by file.
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    machine, _procs = populate(frames, pool)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    base_size = sum(s.size for s in base.statistics("filename"))
    traced = current - base_size
    filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    top = snap.filter_traces(filt).compare_to(base.filter_traces(filt), "lineno")[:8]
    top_sites = [
        {
            "site": f"{os.path.relpath(s.traceback[0].filename)}:{s.traceback[0].lineno}",
            "bytes_per_frame": round(s.size_diff / frames, 1),
        }
        for s in top
    ]
    per_frame = traced / frames
    return {
        "frames": frames,
        "processes": NPROCS,
        "pool_pages": POOL_SIZE,
        "pool_contents_bytes_excluded": pool_bytes,
        "setup_seconds_untraced": round(t1 - t0, 2),
        "traced_bytes": traced,
        "traced_peak_bytes": peak,
        "traced_bytes_per_frame": round(per_frame, 1),
        "target_bytes_per_frame": TARGET_BYTES_PER_FRAME,
        "meets_target": per_frame < TARGET_BYTES_PER_FRAME,
        "rss_delta_bytes_per_frame": round((rss1 - rss0) / frames, 1) if rss0 else None,
        "top_sites": top_sites,
        "nr_free_after_setup": machine.zone.nr_free,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16x smaller sizes, for a smoke run")
    args = ap.parse_args(argv)
    scale = 16 if args.quick else 1
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "mm_bench",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    # Memory first, so that the resident-set growth is not hidden by arenas the rate
    # benchmarks would leave behind.
    memory = bench_memory(HOST_FRAMES // scale)
    gc.collect()
    rates: dict[str, float] = {}
    rates.update(bench_alloc(HOST_FRAMES // scale))
    rates.update(bench_faults(65_536 // scale))
    result["rates"] = rates
    result["memory"] = memory
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
