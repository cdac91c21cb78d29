"""The ``ksmsim`` command line.

Exit status: 0 on success, 1 when a run's expectations failed, 2 on bad input (a malformed
scenario or call, a missing file, an unmodelled kernel) with a one-line error on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
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


def cmd_run(args: argparse.Namespace) -> int:
    """Run a scenario on the model and print (or write) its result."""
    from ksmsim.workload.runner import RunError, run_scenario

    scenario = load_scenario(args.scenario)
    try:
        result = run_scenario(scenario, kernel=args.kernel, check=args.check)
    except RunError as exc:
        if exc.partial is not None and args.output:
            _write_json(exc.partial, args.output)
            raise UsageError(f"{exc} (the result so far is in {args.output})") from None
        raise UsageError(str(exc)) from None
    _write_json(result, args.output)
    return _report_result(result)


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

    from ksmsim.report.experiment import plot, print_table, run_designs
    from ksmsim.workload.runner import RunError

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

    profiles = sub.add_parser("profiles", help="list the kernel profiles the model has")
    profiles.set_defaults(func=cmd_profiles)
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
