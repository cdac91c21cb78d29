"""Calibrate KsmdCost: fit ksmd's CPU nanoseconds per unit of work to the running kernel's ksmd.

Each calibration workload is a scenario document (built below; every scan action takes a
snapshot after each pass, so the kernel's ksmd CPU is recorded per pass). It runs ``--repeat``
times on the live kernel with ``ksmsim real`` (as a subprocess, one run at a time: ksmd's
scheduler runtime per pass, ``ksmd_runtime_s``) and once on the model, in this process, where a
wrapper around ``Host.scan`` records the model's work counts (``KsmWork``) and batches of each
pass. The per-unit costs are then fitted by non-negative least squares on the kernel's median
runtime per pass, each pass weighted by 1/runtime (so the fit minimises relative error: a 30 ms
pass counts as much as a 700 ms one). A unit of work that no workload exercises keeps the
current default and is reported as not identified.

Prints one JSON object: the machine and date, per workload and pass the model's work, the
kernel's runtimes (every repetition), the fitted and current predictions and their relative
errors, the fitted table and its rounded form (what ``KsmdCost``'s defaults should be), and
whether every snapshot's counters equal the kernel's.

Needs root and /sys/kernel/mm/ksm with ksmd stopped, or ``--kernel-runs FILE``: an earlier
output of this script whose kernel runtimes are refitted against the model (no kernel run).
Bad arguments, an unknown workload, or an unreadable ``--kernel-runs`` file: a one-line error and
exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from ksmsim.kernel.jhash import jhash2_c
from ksmsim.kernel.ksmd import KsmdCost
from ksmsim.report.compare import compare_results
from ksmsim.workload.runner import ModelRunner, resolve_profile
from ksmsim.workload.scenario import ScenarioError, parse_scenario

MIB = 256
"""4 KiB pages per MiB."""

BIG = 1_000_000
"""pages_to_scan that makes every pass one batch: ksm_do_scan() stops at the pass's end."""

FEATURES: tuple[tuple[str, str], ...] = (
    ("batches", "batch"),
    ("addresses", "address"),
    ("scanned", "scanned"),
    ("checksums", "checksum_xxhash"),
    ("memcmps", "memcmp"),
    ("merges", "merge"),
    ("kpage_copies", "kpage_copy"),
    ("items_allocated", "item_alloc"),
    ("break_cows", "break_cow"),
)
"""(work count, KsmdCost field) in the order of the fit's columns."""


class CalibrationError(Exception):
    """Bad input to the script: printed as one line, exit status 2."""


def _procs(n: int, regions: Callable[[int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"name": f"p{i}", "regions": regions(i)} for i in range(n)]


def _scan(label: str, passes: int) -> dict[str, Any]:
    return {"op": "scan", "full_scans": passes, "snapshot_each": True, "label": label}


def _simple(
    description: str,
    nprocs: int,
    mib: int,
    fill: str | int,
    passes: int = 3,
    **tunables: int,
) -> dict[str, Any]:
    """Return a workload of ``nprocs`` processes with one region of ``mib`` MiB each."""
    return {
        "description": description,
        "tunables": {"pages_to_scan": BIG, "smart_scan": 0, **tunables},
        "processes": _procs(nprocs, lambda i: [{"name": "mem", "pages": mib * MIB, "fill": fill}]),
        "timeline": [_scan("scan", passes)],
    }


def _half(nprocs: int, mib: int, copies: int, **tunables: int) -> dict[str, Any]:
    """Half ``repeat`` contents shared across the processes, half unique, per process."""
    half = mib * MIB // 2
    return {
        "description": f"{nprocs} x {mib} MiB, half repeat:{half // copies} and half unique",
        "tunables": {"pages_to_scan": BIG, "smart_scan": 0, **tunables},
        "processes": _procs(
            nprocs,
            lambda i: [
                {"name": "dup", "pages": half, "fill": f"repeat:{half // copies}"},
                {"name": "own", "pages": half, "fill": "unique"},
            ],
        ),
        "timeline": [_scan("scan", 3)],
    }


def _rewrite(nprocs: int, mib: int, rounds: int) -> dict[str, Any]:
    """Unique pages rewritten with new contents before every pass: checksums, no tree work."""
    timeline: list[dict[str, Any]] = [_scan("first", 1)]
    for r in range(rounds):
        timeline.append({"op": "fill", "pattern": "unique", "salt": f"w{r}"})
        timeline.append(_scan(f"rewritten{r}", 1))
    return {
        "description": f"{nprocs} x {mib} MiB unique, rewritten (new salt) before each pass",
        "tunables": {"pages_to_scan": BIG, "smart_scan": 0},
        "processes": _procs(
            nprocs, lambda i: [{"name": "mem", "pages": mib * MIB, "fill": "unique"}]
        ),
        "timeline": timeline,
    }


def _cow(nprocs: int, mib: int) -> dict[str, Any]:
    """Identical pages merged, then every page written (COW broken), then merged again."""
    return {
        "description": f"{nprocs} x {mib} MiB identical, merged, all written, merged again",
        "tunables": {"pages_to_scan": BIG, "smart_scan": 0},
        "processes": _procs(nprocs, lambda i: [{"name": "mem", "pages": mib * MIB, "fill": 67}]),
        "timeline": [
            _scan("merge", 2),
            {"op": "write", "value": 9, "offset": 100},
            _scan("remerge", 3),
        ],
    }


def _small_batches(pages_to_scan: int, sleep_millisecs: int = 1) -> dict[str, Any]:
    """Two 8 MiB processes, half shared half unique, in batches of ``pages_to_scan``."""
    doc = _half(2, 8, 2, pages_to_scan=pages_to_scan, sleep_millisecs=sleep_millisecs)
    doc["description"] = (
        f"2 x 8 MiB half shared, half unique, {pages_to_scan} pages per batch, "
        f"sleep_millisecs {sleep_millisecs}"
    )
    return doc


def workloads() -> dict[str, dict[str, Any]]:
    """Return the calibration workloads by name, as scenario documents."""
    return {
        "unique_4x128": _simple("4 x 128 MiB, every page unique", 4, 128, "unique"),
        "unique_4x32": _simple("4 x 32 MiB, every page unique", 4, 32, "unique"),
        "unique_1x16": _simple("1 x 16 MiB, every page unique", 1, 16, "unique"),
        "unique_2x32_smart": _simple(
            "2 x 32 MiB unique, smart_scan on, 8 passes", 2, 32, "unique", 8, smart_scan=1
        ),
        "identical_4x128": _simple("4 x 128 MiB, every page identical", 4, 128, 120),
        "identical_3x32": _simple("3 x 32 MiB, every page identical", 3, 32, 55),
        "identical_3x32_smart": _simple(
            "3 x 32 MiB identical, smart_scan on, 6 passes", 3, 32, 55, 6, smart_scan=1
        ),
        "repeat_4x64": _simple("4 x 64 MiB of repeat:4096 (16 copies each)", 4, 64, "repeat:4096"),
        "pairs_2x64": _simple("2 x 64 MiB of repeat:16384 (pairs)", 2, 64, "repeat:16384"),
        "zero_4x32": _simple("4 x 32 MiB of zero pages, use_zero_pages 0", 4, 32, "zero"),
        "zero_4x32_uzp": _simple(
            "4 x 32 MiB of zero pages, use_zero_pages 1", 4, 32, "zero", use_zero_pages=1
        ),
        "half_4x128": _half(4, 128, 4),
        "half_3x32": _half(3, 32, 3),
        "rewrite_2x32": _rewrite(2, 32, 3),
        "cow_2x32": _cow(2, 32),
        "batches_10": _small_batches(10),
        "batches_100": _small_batches(100),
        "batches_100_sleep20": _small_batches(100, 20),
        "batches_1000": _small_batches(1000),
    }


# -- the model -------------------------------------------------------------------------------


def model_passes(doc: dict[str, Any], name: str) -> tuple[list[dict[str, int]], dict[str, Any]]:
    """Run a workload on the model; return its work counts per pass and the result document."""
    scenario = parse_scenario(doc, name)
    runner = ModelRunner(scenario, resolve_profile(scenario))
    host = runner.host
    scan = host.scan
    passes: list[dict[str, int]] = []

    def counted_scan(full_scans: int = 1) -> bool:
        # The runner scans one pass at a time with snapshot_each; the kernel's record has one
        # runtime per pass, so one row per call lines the two up.
        before = host.ksm.work.as_dict()
        batches, cpu = host.ksmd.batches, host.ksmd.cpu_ns
        ok = scan(full_scans)
        after = host.ksm.work.as_dict()
        row = {k: after[k] - before[k] for k in after}
        row["batches"] = host.ksmd.batches - batches
        row["model_cpu_ns"] = host.ksmd.cpu_ns - cpu
        passes.append(row)
        return ok

    host.scan = counted_scan  # type: ignore[method-assign]
    return passes, runner.run()


# -- the kernel ------------------------------------------------------------------------------


def kernel_run(doc: dict[str, Any], name: str, tmp: Path) -> dict[str, Any]:
    """Run a workload once with ``ksmsim real``; return ksmd runtime per pass and the result."""
    src = tmp / f"{name}.json"
    out = tmp / f"{name}.kernel.json"
    src.write_text(json.dumps(doc))
    subprocess.run(
        [sys.executable, "-m", "ksmsim", "real", str(src), "-o", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads(out.read_text())
    scans = result["scans"]
    return {
        "ksmd_runtime_s": [x for s in scans for x in s["ksmd_runtime_s"]],
        "exact": all(all(s["exact"]) for s in scans),
        "result": result,
    }


def kernel_available() -> str | None:
    """Return why the kernel cannot be driven here, or None."""
    if os.geteuid() != 0:
        return "needs root to drive /sys/kernel/mm/ksm (or pass --kernel-runs FILE)"
    if not Path("/sys/kernel/mm/ksm").is_dir():
        return "/sys/kernel/mm/ksm does not exist (or pass --kernel-runs FILE)"
    return None


# -- the fit ---------------------------------------------------------------------------------


def nnls(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Solve min ||Ax - b|| subject to x >= 0: Lawson and Hanson's active-set method."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(m, n)
    for _ in range(3 * n + 10):
        w = a.T @ (b - a @ x)
        if passive.all() or (w[~passive] <= tol).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            # Step back toward x until a passive variable reaches zero; drop it.
            mask = passive & (z <= 0)
            alpha = float(np.min(x[mask] / (x[mask] - z[mask])))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


def fit(
    rows: list[dict[str, Any]], features: tuple[tuple[str, str], ...] = FEATURES
) -> dict[str, Any]:
    """Fit the per-unit costs (ns) to the rows' median kernel runtimes, relative weights."""
    counts = np.array([[float(r["work"][k]) for k, _ in features] for r in rows])
    target = np.array([r["kernel_ns"] for r in rows])
    used = [bool(counts[:, j].any()) for j in range(len(features))]
    # Scale each column to unit size so that the active-set tolerances treat them alike.
    a = counts[:, np.array(used)] / target[:, None]
    scale = np.linalg.norm(a, axis=0)
    x = nnls(a / scale, np.ones(len(rows))) / scale
    coef = np.zeros(len(features))
    coef[np.array(used)] = x
    fitted = {field: float(c) for (_, field), c in zip(features, coef, strict=True)}
    errors = [
        abs(relerr(sum(fitted[f] * r["work"][k] for k, f in features), r["kernel_ns"]))
        for r in rows
    ]
    return {
        "coef": fitted,
        "identified": [field for (_, field), u in zip(features, used, strict=True) if u],
        "abs_relerr": {
            "median": round(statistics.median(errors), 4),
            "max": round(max(errors), 4),
        },
    }


def jhash2_extra_ns(pages: int = 64, rounds: int = 15) -> dict[str, float] | None:
    """Time jhash2 (the C helper) and XXH64 over warm 4 KiB pages; None without the C helper.

    There is no jhash2 kernel here. The fitted xxhash cost is mostly reading a cold page,
    which jhash2 pays alike; what jhash2 adds is its slower arithmetic, timed here on the
    same CPU in compiled code with the pages in cache.
    """
    if jhash2_c is None:
        return None
    jhash = jhash2_c
    bufs = [os.urandom(4096) for _ in range(pages)]

    def per_page(f: Callable[[bytes], object]) -> float:
        t0 = time.perf_counter()
        for _ in range(20):
            for b in bufs:
                f(b)
        return (time.perf_counter() - t0) / (20 * pages) * 1e9

    # Alternate the two so that both see the same load; the fastest round is the one least
    # disturbed by the other work on a shared machine.
    times = [
        (per_page(lambda b: jhash(b, 17)), per_page(xxhash.xxh64_intdigest)) for _ in range(rounds)
    ]
    j = min(t[0] for t in times)
    x = min(t[1] for t in times)
    return {
        "jhash2_warm_ns": round(j, 1),
        "xxh64_warm_ns": round(x, 1),
        "extra_ns": round(j - x, 1),
    }


def rounded(value: float) -> int:
    """Round a cost to two significant figures (the fit is not better than that)."""
    if value <= 0:
        return 0
    digits = len(str(int(value))) - 2
    return int(round(value, -digits)) if digits > 0 else round(value)


def predict(cost: dict[str, float], work: dict[str, int]) -> float:
    """Return the nanoseconds a cost table charges for one pass's work."""
    return sum(cost[field] * work[k] for k, field in FEATURES)


def relerr(predicted: float, measured: float) -> float:
    """Return (predicted - measured) / measured."""
    return (predicted - measured) / measured


# -- the command -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; CalibrationError on bad values."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="kernel runs per workload (3)")
    ap.add_argument(
        "--kernel-runs",
        metavar="FILE",
        help="reuse the kernel runtimes of an earlier output of this script (no kernel run)",
    )
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    ap.add_argument("workloads", nargs="*", help="workloads to run (default: all)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise CalibrationError(f"--repeat must be at least 1, not {args.repeat}")
    known = workloads()
    for name in args.workloads:
        if name not in known:
            raise CalibrationError(f"unknown workload {name!r} (known: {', '.join(known)})")
    return args


def load_kernel_runs(path: str) -> dict[str, list[dict[str, Any]]]:
    """Read the kernel runs recorded in an earlier output; CalibrationError if unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        return {
            name: [
                {
                    "ksmd_runtime_s": list(rt),
                    "exact": bool(w["kernel_stops_exact"]),
                    "result": None,
                    "counters_equal": w["counters_equal"],
                }
                for rt in w["kernel_runtime_s"]
            ]
            for name, w in data["workloads"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(
            f"--kernel-runs {path}: not an output of this script ({exc})"
        ) from None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the calibration and return the output document."""
    docs = workloads()
    names = args.workloads or list(docs)
    recorded = load_kernel_runs(args.kernel_runs) if args.kernel_runs else None
    if recorded is None and (why := kernel_available()) is not None:
        raise CalibrationError(why)
    if recorded is not None:
        missing = [n for n in names if n not in recorded]
        if missing:
            raise CalibrationError(f"--kernel-runs {args.kernel_runs}: no runs of {missing}")
    out: dict[str, Any] = {
        "benchmark": "calibrate_ksmd_cost",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "kernel_runs_from": args.kernel_runs,
        "repeat": args.repeat if recorded is None else None,
        "current": KsmdCost().as_dict(),
        "workloads": {},
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            doc = docs[name]
            passes, model_result = model_passes(doc, name)
            if recorded is not None:
                kruns = recorded[name]
            else:
                kruns = [kernel_run(doc, name, Path(tmp)) for _ in range(args.repeat)]
            for k in kruns:
                if len(k["ksmd_runtime_s"]) != len(passes) or None in k["ksmd_runtime_s"]:
                    raise CalibrationError(
                        f"{name}: the kernel recorded {k['ksmd_runtime_s']} for "
                        f"{len(passes)} passes"
                    )
            # Recorded runs bring their comparison along (the model is the same code).
            equal = [
                compare_results(model_result, k["result"]).equal
                if k["result"] is not None
                else k["counters_equal"]
                for k in kruns
            ]
            entry: dict[str, Any] = {
                "description": doc["description"],
                "tunables": doc["tunables"],
                "kernel_runtime_s": [k["ksmd_runtime_s"] for k in kruns],
                "kernel_stops_exact": all(k["exact"] for k in kruns),
                "counters_equal": None if None in equal else all(equal),
                "passes": [],
            }
            for i, work in enumerate(passes):
                measured = statistics.median(k["ksmd_runtime_s"][i] for k in kruns) * 1e9
                row = {"workload": name, "pass": i + 1, "work": work, "kernel_ns": measured}
                rows.append(row)
                entry["passes"].append(row)
            out["workloads"][name] = entry
    result = fit(rows)
    coef: dict[str, float] = result["coef"]
    current = KsmdCost().as_dict()
    table = {
        f: (rounded(coef[f]) if f in result["identified"] else current[f]) for _, f in FEATURES
    }
    jhash2 = jhash2_extra_ns()
    table["checksum_jhash2"] = (
        rounded(table["checksum_xxhash"] + jhash2["extra_ns"])
        if jhash2 is not None
        else current["checksum_jhash2"]
    )
    errors_table: list[float] = []
    worst = ("", 0, 0.0)
    for name, entry in out["workloads"].items():
        total = {"kernel_ns": 0.0, "fit_ns": 0.0, "table_ns": 0.0, "current_ns": 0.0}
        for row in entry["passes"]:
            del row["workload"]
            work = row["work"]
            row["kernel_ns"] = round(row["kernel_ns"])
            row["fit_ns"] = round(predict(coef, work))
            row["table_ns"] = round(predict({k: float(v) for k, v in table.items()}, work))
            row["current_ns"] = work.pop("model_cpu_ns")
            for kind in ("fit", "table", "current"):
                row[f"{kind}_relerr"] = round(relerr(row[f"{kind}_ns"], row["kernel_ns"]), 4)
            errors_table.append(abs(row["table_relerr"]))
            if abs(row["table_relerr"]) > abs(worst[2]):
                worst = (name, row["pass"], row["table_relerr"])
            for key in total:
                total[key] += row[key]
        entry["total"] = {
            **{k: round(v) for k, v in total.items()},
            "table_relerr": round(relerr(total["table_ns"], total["kernel_ns"]), 4),
            "current_relerr": round(relerr(total["current_ns"], total["kernel_ns"]), 4),
        }
    out["fit"] = {
        "method": "non-negative least squares on relative error per pass (weights 1/runtime)",
        "passes": len(rows),
        "coef_ns": {k: round(v, 2) for k, v in coef.items()},
        "identified": result["identified"],
        "not_identified": [f for _, f in FEATURES if f not in result["identified"]],
        "jhash2": jhash2,
        "table": table,
        "abs_relerr_fit": result["abs_relerr"],
        "abs_relerr_table": {
            "median": round(statistics.median(errors_table), 4),
            "max": round(max(errors_table), 4),
            "worst_pass": f"{worst[0]} pass {worst[1]}: {worst[2]:+.1%}",
        },
    }
    out["machine"]["load_average_at_end"] = os.getloadavg()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the calibration, print its JSON; return the exit status."""
    try:
        args = parse_args(argv)
        if args.list:
            for name, doc in workloads().items():
                print(f"{name}: {doc['description']}")
            return 0
        out = run(args)
    except (CalibrationError, ScenarioError) as exc:
        print(f"calibrate_ksmd_cost: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
