"""The ``ksmsim`` command line.

Exit status: 0 on success, 1 when a run's expectations failed, 2 on bad input (a malformed
scenario or call, a missing file, an unmodelled kernel) with a one-line error on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ksmsim import __version__
from ksmsim.kernel.profile import PLANNED_PROFILES, PROFILES
from ksmsim.workload.scenario import ScenarioError, load_scenario

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _write_json(doc: dict[str, Any], out: str | None) -> None:
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if out is None or out == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(out).write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror}") from None


def _report_result(result: dict[str, Any]) -> int:
    """Print a result's failed expectations and fatal errors on stderr; return the exit status."""
    for failure in result["expect_failures"]:
        print(
            f"expect failed at {failure['label']}: {failure['counter']} expected "
            f"{failure['expected']}, got {failure['actual']}",
            file=sys.stderr,
        )
    for err in result["errors"]:
        if err.get("fatal"):
            print(f"error: {err['path']}: {err['message']}", file=sys.stderr)
    return EXIT_OK if result["ok"] else EXIT_FAILED


_exit_at_once = False
"""Set by a command whose process has nothing left to do but free the model (``entry``)."""


def cmd_run(args: argparse.Namespace) -> int:
    """Run a scenario on the model and print (or write) its result."""
    global _exit_at_once
    from ksmsim.workload.runner import RunError, run_scenario

    scenario = load_scenario(args.scenario)
    try:
        result = run_scenario(
            scenario, kernel=args.kernel, check=args.check, sample_every_s=args.sample_every
        )
    except RunError as exc:
        if exc.partial is not None and args.output:
            _write_json(exc.partial, args.output)
            raise UsageError(f"{exc} (the result so far is in {args.output})") from None
        raise UsageError(str(exc)) from None
    _write_json(result, args.output)
    status = _report_result(result)
    _exit_at_once = True
    return status


def cmd_real(args: argparse.Namespace) -> int:
    """Run a scenario on the running kernel's KSM (or restore KSM after a runner died)."""
    from ksmsim.real.errors import Interrupted, RealError
    from ksmsim.real.runner import restore_command, run_real

    if args.restore:
        if args.scenario is not None:
            raise UsageError("real: give either a scenario or --restore, not both")
        try:
            print(restore_command())
        except RealError as exc:
            raise UsageError(str(exc)) from None
        return EXIT_OK
    if args.scenario is None:
        raise UsageError("real: a scenario file is required (or --restore)")
    scenario = load_scenario(args.scenario)
    try:
        result = run_real(scenario)
    except RealError as exc:
        if exc.partial is not None and args.output:
            _write_json(exc.partial, args.output)
            raise UsageError(f"{exc} (the result so far is in {args.output})") from None
        raise UsageError(str(exc)) from None
    except Interrupted as exc:
        print(f"ksmsim: {exc}; KSM was restored", file=sys.stderr)
        return exc.exit_status
    _write_json(result, args.output)
    return _report_result(result)


def cmd_validate(args: argparse.Namespace) -> int:
    """Compare the model with the kernel (live, or results recorded earlier) per snapshot."""
    from ksmsim.real.errors import Interrupted, RealError
    from ksmsim.validate import ValidateError, validate
    from ksmsim.workload.runner import RunError

    kernel_runner = None
    if args.model_only is None:
        from ksmsim.real.runner import run_real

        kernel_runner = run_real
    try:
        comparisons = validate(
            args.scenarios,
            recorded=args.model_only,
            kernel_runner=kernel_runner,
            kernel=args.kernel,
            out=sys.stdout,
            only_differences=args.differences,
            record_dir=args.record,
        )
    except (ValidateError, RunError, RealError) as exc:
        raise UsageError(str(exc)) from None
    except Interrupted as exc:
        print(f"ksmsim: {exc}; KSM was restored", file=sys.stderr)
        return exc.exit_status
    return EXIT_OK if all(c.equal for c in comparisons) else EXIT_FAILED


def _parse_sets(items: list[str] | None) -> dict[str, int]:
    """Parse ``--set name=value`` options into tunables."""
    out: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise UsageError(f"--set {item!r}: expected NAME=INTEGER")
        out[name.strip()] = int(value)
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    """Run one scenario under several kernel designs and compare what they did."""
    import dataclasses

    from ksmsim.kernel.profile import UnknownProfile, get_profile
    from ksmsim.report.experiment import plot, print_table, run_designs
    from ksmsim.workload.runner import RunError

    for name in args.kernel:
        try:
            get_profile(name)
        except UnknownProfile as exc:
            raise UsageError(f"--kernel: {exc}") from None
    scenario = load_scenario(args.scenario)
    sets = _parse_sets(args.set)
    if sets:
        scenario = dataclasses.replace(scenario, tunables={**scenario.tunables, **sets})
    try:
        designs = run_designs(scenario, args.kernel)
    except RunError as exc:
        raise UsageError(str(exc)) from None
    print_table(designs, sys.stdout)
    if args.output:
        _write_json(
            {
                "scenario": scenario.name,
                "tunables": scenario.tunables,
                "designs": [d.summary() for d in designs],
                "timeseries": {d.kernel: d.result["timeseries"] for d in designs},
                "free_delays_s": {d.kernel: d.result["ksm_free_delays_s"] for d in designs},
            },
            args.output,
        )
    if args.plot:
        try:
            plot(designs, args.plot)
        except (RuntimeError, OSError) as exc:
            raise UsageError(str(exc)) from None
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Explore the interleavings of a race's concurrent tasks, or replay a saved schedule."""
    from ksmsim.sched.command import CheckError, check_command

    try:
        return check_command(args)
    except CheckError as exc:
        raise UsageError(f"check: {exc}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the built-in demonstration workload."""
    from ksmsim.demo import run_demo

    return run_demo(as_json=args.json, out=sys.stdout)


def cmd_profiles(args: argparse.Namespace) -> int:
    """List the kernel profiles."""
    for name, profile in sorted(PROFILES.items()):
        print(f"{name:10} {profile.description}")
    for name, why in sorted(PLANNED_PROFILES.items()):
        print(f"{name:10} (planned: {why})")
    return EXIT_OK


def _sample_seconds(text: str) -> float:
    """Parse ``--sample-every``: a finite, non-negative number of simulated seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, not {text!r}")
    return value


def _gen_rate(text: str) -> float | tuple[float, float]:
    """Parse a write rate: ``R`` pages/s, or ``LO:HI`` (drawn per member)."""
    lo, sep, hi = text.partition(":")
    try:
        return (float(lo), float(hi)) if sep else float(text)
    except ValueError:
        raise UsageError(
            f"--writes-per-s {text!r}: expected R or LO:HI (pages per second)"
        ) from None


def cmd_gen(args: argparse.Namespace) -> int:
    """Write a generated scenario (a VM fleet, a container fleet, a random mix)."""
    from ksmsim.workload import generators as gen
    from ksmsim.workload.scenario import parse_scenario

    common = {
        "seed": args.seed,
        "kernel": args.kernel,
    }
    try:
        if args.generator == "random-mix":
            doc = gen.random_mix(args.seed, steps=args.steps, kernel=args.kernel)
        elif args.generator == "vm-fleet":
            doc = gen.vm_fleet(
                args.guests,
                args.guest_mib,
                shared_fraction=args.shared,
                zero_fraction=args.zero,
                hot_fraction=args.hot,
                writes_per_s=_gen_rate(args.writes_per_s),
                images=args.images,
                boot_stagger_s=args.boot_stagger,
                run_s=args.run,
                pages_to_scan=args.pages_to_scan,
                sleep_millisecs=args.sleep_millisecs,
                **common,
            )
        else:
            doc = gen.container_fleet(
                args.containers,
                runtime_mib=args.runtime_mib,
                images=args.images,
                image_mib=args.image_mib,
                private_mib=args.private_mib,
                zero_fraction=args.zero,
                hot_fraction=args.hot,
                writes_per_s=_gen_rate(args.writes_per_s),
                start_stagger_s=args.stagger,
                run_s=args.run,
                pages_to_scan=args.pages_to_scan,
                sleep_millisecs=args.sleep_millisecs,
                **common,
            )
    except ValueError as exc:
        raise UsageError(f"gen {args.generator}: {exc}") from None
    name = Path(args.output).stem if args.output and args.output != "-" else args.generator
    parse_scenario(doc, name)  # what is written must be a valid scenario
    fmt = args.format or ("json" if (args.output or "").endswith(".json") else "toml")
    text = gen.dump_scenario(doc, fmt)
    if args.output is None or args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Fingerprint the anonymous memory of running processes into a snapshot file."""
    import time

    from ksmsim.report.prediction import format_bytes
    from ksmsim.workload.snapshot import SnapshotError, save_snapshot, take_snapshot

    if args.all == bool(args.pid):
        raise UsageError("snapshot: give either --pid PID... or --all")
    if args.interval is not None and not args.interval > 0:
        raise UsageError(f"snapshot: --interval must be more than 0 s, not {args.interval}")
    pids = None if args.all else args.pid
    try:
        passes = [take_snapshot(pids)]
        if args.interval is not None:
            time.sleep(args.interval)
            passes.append(take_snapshot(pids))
        save_snapshot(args.output, passes)
    except SnapshotError as exc:
        raise UsageError(f"snapshot: {exc}") from None
    last = passes[-1]
    s = last.summary()
    print(
        f"{args.output}: {s['processes']} processes, {s['pages']:,} anonymous pages "
        f"({format_bytes(s['pages'] * 4096)}); {s['zero_pages']:,} zero-filled, "
        f"{s['zero_page_mappings']:,} zero-page mappings, {s['mergeable_pages']:,} in areas "
        f"madvised mergeable; {len(passes)} pass(es) in {sum(p.duration_s for p in passes):.2f} s"
    )
    denied = [x for x in last.skipped if x["reason"] == "permission denied"]
    if denied:
        print(
            f"ksmsim: warning: skipped {len(denied)} processes whose memory this user may not "
            "read (a snapshot needs root, CAP_SYS_PTRACE, or the same user with ptrace allowed)",
            file=sys.stderr,
        )
    return EXIT_OK


def _prediction_tunables(args: argparse.Namespace) -> dict[str, int]:
    """Collect --pages-to-scan, --sleep-millisecs and --set NAME=VALUE into tunables."""
    out = _parse_sets(getattr(args, "set", None))
    if args.pages_to_scan is not None:
        out["pages_to_scan"] = args.pages_to_scan
    if args.sleep_millisecs is not None:
        out["sleep_millisecs"] = args.sleep_millisecs
    return out


def _emit_document(
    args: argparse.Namespace,
    doc: dict[str, Any],
    text: Callable[[], str],
    plot: Callable[[str], None],
) -> None:
    """Print a document (``text()``, or ``doc`` with --json), write it (-o) and plot it (--plot)."""
    if args.json:
        _write_json(doc, None)
    else:
        sys.stdout.write(text())
    if args.output:
        _write_json(doc, args.output)
    if args.plot:
        from ksmsim.report.plot import PlotUnavailable

        try:
            plot(args.plot)
        except PlotUnavailable as exc:
            raise UsageError(str(exc)) from None


def _emit_prediction(args: argparse.Namespace, pred: Any) -> int:
    """Print a prediction (table or JSON), write it (-o) and plot it (--plot)."""
    from ksmsim.report.prediction import format_prediction

    def plot(path: str) -> None:
        # Imported only for --plot: the plotting module is not needed otherwise.
        from ksmsim.report.plot import plot_prediction

        plot_prediction(pred, path)

    _emit_document(args, pred.to_json(), lambda: format_prediction(pred), plot)
    return EXIT_OK


def _predict_command(args: argparse.Namespace, *, snapshots_only: bool) -> int:
    """Load the workload, run the prediction and print it."""
    from ksmsim.workload.predict import PredictError, load_workload, predict
    from ksmsim.workload.snapshot import is_snapshot_file

    try:
        first = Path(args.workload[0])
        if snapshots_only and first.exists() and not is_snapshot_file(first):
            raise PredictError(f"{first}: not a ksmsim snapshot (ksmsim predict takes scenarios)")
        workload = load_workload(args.workload, only_mergeable=args.only_mergeable)
        pred = predict(
            workload,
            tunables=_prediction_tunables(args),
            kernel=args.kernel,
            max_passes=args.max_passes,
            max_seconds=args.max_seconds,
        )
    except PredictError as exc:
        raise UsageError(str(exc)) from None
    return _emit_prediction(args, pred)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Predict what KSM would do to the processes of a snapshot."""
    return _predict_command(args, snapshots_only=True)


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict what KSM would do on a workload (a scenario or a snapshot)."""
    return _predict_command(args, snapshots_only=False)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Predict a workload over a grid of tunables and recommend a setting."""
    from ksmsim.report.sweep import format_sweep
    from ksmsim.workload.predict import PredictError, load_workload
    from ksmsim.workload.sweep import SweepError, grid, parse_budget, parse_set, run_sweep

    try:
        sets = [parse_set(s) for s in args.set]
        settings = grid(sets)
        budget = parse_budget(args.cpu_budget) if args.cpu_budget is not None else None
        workload = load_workload(args.workload, only_mergeable=args.only_mergeable)
        result = run_sweep(
            workload,
            settings,
            jobs=args.jobs,
            scheduler=args.scheduler,
            kernel=args.kernel,
            cpu_budget=budget,
            max_passes=args.max_passes,
            max_seconds=args.max_seconds,
        )
    except (SweepError, PredictError) as exc:
        raise UsageError(f"sweep: {exc}") from None

    def plot(path: str) -> None:
        # Imported only for --plot: the plotting module is not needed otherwise.
        from ksmsim.report.plot import plot_sweep

        plot_sweep(result, path)

    _emit_document(args, result.to_json(), lambda: format_sweep(result), plot)
    failed = [p for p in result.points if p.prediction is None]
    if failed:
        raise UsageError(f"sweep: {len(failed)} settings failed; first: {failed[0].error}")
    return EXIT_OK


def _add_prediction_options(p: argparse.ArgumentParser) -> None:
    """Add the options shared by estimate, predict and sweep."""
    p.add_argument("--kernel", help="model profile (default: the scenario's, or v6.18)")
    p.add_argument(
        "--only-mergeable",
        action="store_true",
        help="snapshots: only areas already madvised mergeable (VmFlags mg), not whole processes",
    )
    p.add_argument(
        "--max-passes",
        type=int,
        default=40,
        help="give up settling after this many full scans (default 40)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=7 * 86400.0,
        help="give up settling after this much simulated time (default a week)",
    )
    p.add_argument("-o", "--output", help="also write the JSON here")
    p.add_argument("--plot", metavar="PNG", help="plot it here (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ksmsim`` command."""
    parser = _Parser(prog="ksmsim", description="An executable model of Linux KSM.")
    parser.add_argument("--version", action="version", version=f"ksmsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="run a small built-in workload and explain what KSM did")
    demo.add_argument("--json", action="store_true", help="print the result document instead")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run a scenario (JSON or TOML) on the model")
    run.add_argument("scenario", help="the scenario file")
    run.add_argument("-o", "--output", help="write the result JSON here instead of stdout")
    run.add_argument("--kernel", help="run on this profile instead of the scenario's")
    run.add_argument(
        "--check", action="store_true", help="run every invariant check after each operation (slow)"
    )
    run.add_argument(
        "--sample-every",
        type=_sample_seconds,
        default=0.0,
        metavar="SECONDS",
        help="sample a run's time series at most once per this much simulated time "
        "(default: after every ksmd batch; long runs of large machines want e.g. 60)",
    )
    run.set_defaults(func=cmd_run)

    real = sub.add_parser(
        "real", help="run a scenario on the running kernel's KSM (root; restores KSM afterwards)"
    )
    real.add_argument("scenario", nargs="?", help="the scenario file")
    real.add_argument("-o", "--output", help="write the result JSON here instead of stdout")
    real.add_argument(
        "--restore",
        action="store_true",
        help="restore KSM's tunables and end leftover processes after a runner died",
    )
    real.set_defaults(func=cmd_real)

    val = sub.add_parser(
        "validate",
        help="run scenarios on the model and on the kernel and compare them snapshot by snapshot",
    )
    val.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario files")
    val.add_argument(
        "--model-only",
        nargs="+",
        metavar="RESULT",
        help="compare with these recorded kernel results (one per scenario) instead of running "
        "the kernel",
    )
    val.add_argument("--kernel", help="model profile to run (default: each scenario's, v6.18)")
    val.add_argument(
        "--record", metavar="DIR", help="also write each kernel result to DIR/NAME.json"
    )
    val.add_argument(
        "--differences", action="store_true", help="print only the counters that differ"
    )
    val.set_defaults(func=cmd_validate)

    cmp = sub.add_parser(
        "compare", help="run one scenario under several kernel designs and compare them"
    )
    cmp.add_argument("scenario", help="the scenario file")
    cmp.add_argument(
        "--kernel", action="append", required=True, help="a profile to run (give two or more)"
    )
    cmp.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a tunable")
    cmp.add_argument("-o", "--output", help="write the comparison as JSON here")
    cmp.add_argument("--plot", metavar="PNG", help="plot memory over time and the delays here")
    cmp.set_defaults(func=cmd_compare)

    chk = sub.add_parser(
        "check", help="explore the interleavings of a race's concurrent tasks for bugs"
    )
    chk.add_argument("race", help="the race file (a scenario with [[tasks]])")
    chk.add_argument("--kernel", help="run on this profile instead of the race's")
    chk.add_argument(
        "--mode", choices=("exhaustive", "random", "pct"), default="exhaustive", help="search"
    )
    chk.add_argument("--schedules", type=int, help="stop after this many schedules")
    chk.add_argument("--seconds", type=float, help="stop after this long (default 60 s)")
    chk.add_argument("--seed", type=int, default=0, help="seed of random and pct (default 0)")
    chk.add_argument(
        "--preemptions", type=int, default=2, help="exhaustive: preemption bound (default 2)"
    )
    chk.add_argument("--depth", type=int, default=3, help="pct: bug depth (default 3)")
    chk.add_argument(
        "--mutation", action="append", metavar="NAME", help="switch on a deliberate bug"
    )
    chk.add_argument("--save", metavar="FILE", help="where to save a bug's schedule")
    chk.add_argument("--replay", metavar="FILE", help="replay a saved schedule instead")
    chk.add_argument("--no-shrink", action="store_true", help="keep the schedule as found")
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.set_defaults(func=cmd_check)

    profiles = sub.add_parser("profiles", help="list the kernel profiles the model has")
    profiles.set_defaults(func=cmd_profiles)

    gen = sub.add_parser("gen", help="write a generated scenario (fleets, random mixes)")
    gsub = gen.add_subparsers(dest="generator", metavar="GENERATOR", parser_class=_Parser)
    gsub.required = True
    vm = gsub.add_parser("vm-fleet", help="N guests booted from one image")
    vm.add_argument("--guests", type=int, required=True, help="number of guests")
    vm.add_argument("--guest-mib", type=float, required=True, help="memory per guest (MiB)")
    vm.add_argument("--shared", type=float, default=0.4, help="fraction identical across guests")
    vm.add_argument("--zero", type=float, default=0.15, help="fraction of zero-filled pages")
    vm.add_argument("--hot", type=float, default=0.05, help="fraction of private memory rewritten")
    vm.add_argument("--images", type=int, default=1, help="distinct images (default 1)")
    vm.add_argument("--boot-stagger", type=float, default=0.0, help="seconds between boots")
    ct = gsub.add_parser("container-fleet", help="containers sharing runtime and library pages")
    ct.add_argument("--containers", type=int, required=True, help="number of containers")
    ct.add_argument("--runtime-mib", type=float, default=16.0, help="runtime shared by all (MiB)")
    ct.add_argument("--images", type=int, default=4, help="distinct application images")
    ct.add_argument("--image-mib", type=float, default=32.0, help="libraries per image (MiB)")
    ct.add_argument("--private-mib", type=float, default=64.0, help="private memory each (MiB)")
    ct.add_argument("--zero", type=float, default=0.1, help="fraction of private memory zeroed")
    ct.add_argument("--hot", type=float, default=0.1, help="fraction of private memory rewritten")
    ct.add_argument("--stagger", type=float, default=0.0, help="seconds between starts")
    for g in (vm, ct):
        g.add_argument(
            "--writes-per-s",
            default="50" if g is vm else "20",
            help="pages/s rewritten in each member's hot memory: R, or LO:HI drawn per member",
        )
        g.add_argument(
            "--run", type=float, default=120.0, help="seconds ksmd runs after the last start"
        )
        g.add_argument(
            "--pages-to-scan", type=int, default=100, help="tunable pages_to_scan (default 100)"
        )
        g.add_argument(
            "--sleep-millisecs", type=int, default=20, help="tunable sleep_millisecs (default 20)"
        )
    mix = gsub.add_parser("random-mix", help="a seeded random mix of every action")
    mix.add_argument("--steps", type=int, default=30, help="actions to draw (default 30)")
    for g in (vm, ct, mix):
        g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        g.add_argument("--kernel", help="the scenario's kernel profile")
        g.add_argument("-o", "--output", help="write here (.toml or .json) instead of stdout")
        g.add_argument("--format", choices=("toml", "json"), help="default: from -o, else toml")
        g.set_defaults(func=cmd_gen)

    snap = sub.add_parser(
        "snapshot", help="fingerprint running processes' anonymous memory (read-only)"
    )
    snap.add_argument("--pid", type=int, nargs="+", metavar="PID", help="processes to record")
    snap.add_argument("--all", action="store_true", help="every process this user may read")
    snap.add_argument(
        "--interval", type=float, metavar="S", help="take a second pass S seconds later"
    )
    snap.add_argument("-o", "--output", required=True, help="the snapshot file to write")
    snap.set_defaults(func=cmd_snapshot)

    for name, func, what in (
        ("estimate", cmd_estimate, "predict what KSM would do to a snapshot's processes"),
        ("predict", cmd_predict, "predict what KSM would do on a scenario (or a snapshot)"),
    ):
        est = sub.add_parser(name, help=what)
        est.add_argument(
            "workload", nargs="+", metavar="FILE", help="a scenario, or snapshot file(s)"
        )
        est.add_argument("--pages-to-scan", type=int, help="tunable pages_to_scan")
        est.add_argument("--sleep-millisecs", type=int, help="tunable sleep_millisecs")
        est.add_argument("--set", action="append", metavar="NAME=VALUE", help="another tunable")
        _add_prediction_options(est)
        est.set_defaults(func=func)

    sw = sub.add_parser("sweep", help="predict a workload over a grid of tunables")
    sw.add_argument("workload", nargs="+", metavar="FILE", help="a scenario, or snapshot file(s)")
    sw.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="NAME=V1,V2",
        help="values of a tunable to sweep (repeat for a grid)",
    )
    sw.add_argument("--jobs", type=int, help="local worker processes (default: one per CPU)")
    sw.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask cluster")
    sw.add_argument(
        "--cpu-budget", metavar="PCT", help="recommend within this ksmd CPU share, e.g. 5%%"
    )
    _add_prediction_options(sw)
    sw.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            raise UsageError("ksmsim: a command is required (see ksmsim --help)")
        status: int = args.func(args)
        return status
    except UsageError as exc:
        print(
            f"ksmsim: error: {exc}" if not str(exc).startswith("ksmsim") else str(exc),
            file=sys.stderr,
        )
        return EXIT_USAGE
    except ScenarioError as exc:
        print(f"ksmsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ksmsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``ksmsim ... | head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def entry() -> NoReturn:
    """The ``ksmsim`` command (and ``python -m ksmsim``): run main() and exit with its status.

    After ``ksmsim run`` the process holds the whole simulated machine (a frame object per
    page, rmap_items, nodes: millions of objects for a large scenario) and has nothing left to
    do: its output is written and flushed, and it runs no exit handlers of its own. It then
    ends at once (``os._exit``) instead of having the interpreter free every object one by
    one (some 0.15 s for 4 x 128 MiB). Any other command, and a flush that fails, exits the
    ordinary way.
    """
    status = main()
    if _exit_at_once:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # the ordinary exit reports what it reports
        else:
            os._exit(status)
    raise SystemExit(status)
