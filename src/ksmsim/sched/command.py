"""``ksmsim check``: explore a race's interleavings, or replay a saved schedule.

Prints what was explored (schedules, distinct states, their rates) and, for a bug, the shrunk
schedule as a trace, which it also saves for ``--replay``. Exit status 0 when nothing was found,
1 for a bug, 2 for bad input (raised as ``CheckError``, one line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from ksmsim.sched.explorer import Explorer, Report, RunRecord
from ksmsim.sched.race import RaceError, check_mutations, load_race, race_profile
from ksmsim.sched.scheduler import SchedulerError
from ksmsim.sched.trace import SavedSchedule, ScheduleError, format_trace, load_schedule
from ksmsim.workload.scenario import ScenarioError


class CheckError(Exception):
    """Bad input to ``ksmsim check``; the message is one line."""


def check_command(args: Any, out: TextIO | None = None) -> int:
    """Run ``ksmsim check`` with parsed arguments; return the exit status."""
    out = out if out is not None else sys.stdout
    try:
        race = load_race(args.race)
        if args.replay is not None:
            return _replay(args, race, out)
        profile = race_profile(race, args.kernel)
        mutations = check_mutations(tuple(args.mutation or ()))
        for name, value in (("--schedules", args.schedules), ("--seconds", args.seconds)):
            if value is not None and value <= 0:
                raise CheckError(f"{name} must be positive")
        if args.preemptions < 0 or args.depth < 1:
            raise CheckError("--preemptions must be >= 0 and --depth >= 1")
        seconds = args.seconds
        if seconds is None and args.schedules is None:
            seconds = 60.0
        explorer = Explorer(race, profile, mutations)
        report = explorer.explore(
            args.mode,
            schedules=args.schedules,
            seconds=seconds,
            seed=args.seed,
            preemptions=args.preemptions,
            depth=args.depth,
            shrink=not args.no_shrink,
        )
    except (ScenarioError, RaceError, ScheduleError, SchedulerError) as exc:
        raise CheckError(str(exc)) from None
    saved = None
    if report.finding is not None:
        m = report.finding.minimal
        saved = SavedSchedule(
            str(args.race), profile.name, sorted(mutations), m.schedule, m.outcome, m.trace
        )
        path = args.save or f"{race.name}.{profile.name}.schedule.json"
        try:
            saved.save(path)
        except OSError as exc:
            raise CheckError(f"cannot write {path}: {exc.strerror}") from None
        args.save = path
    if args.json:
        doc = {"race": race.name, "kernel": profile.name, "mutations": sorted(mutations)}
        doc.update(report.to_json())
        if saved is not None:
            doc["saved"] = args.save
            doc["trace"] = saved.to_json()["trace"]
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print_report(args, race.name, profile.name, sorted(mutations), report, out)
    return 1 if report.finding is not None else 0


def _print_report(
    args: Any, race: str, kernel: str, mutations: list[str], report: Report, out: TextIO
) -> None:
    bound = f", preemption bound {args.preemptions}" if report.mode == "exhaustive" else ""
    depth = f", depth {args.depth}" if report.mode == "pct" else ""
    muts = f", mutations: {', '.join(mutations)}" if mutations else ""
    print(f"race {race} on {kernel}: {report.mode}{bound}{depth}{muts}", file=out)
    rates = report.rates()
    print(
        f"explored {report.schedules} schedules ({report.pruned} cut short by state hashing), "
        f"{report.states} distinct states, {report.steps} steps in {report.seconds:.2f} s: "
        f"{rates['schedules_per_s']:.0f} schedules/s, {rates['states_per_s']:.0f} states/s",
        file=out,
    )
    if report.finding is None:
        why = (
            "every schedule within the bound was covered"
            if report.complete
            else "the budget was spent"
        )
        print(f"no bug found ({why})", file=out)
        return
    m = report.finding.minimal
    o = m.outcome
    who = f" in {o.task}" if o.task else ""
    print(f"FOUND {o.status}{who}: {o.message}", file=out)
    print(
        f"minimal schedule: {len(m.trace)} steps, {m.preemptions} preemption(s); saved to "
        f"{args.save}",
        file=out,
    )
    for line in format_trace(m.trace, o):
        print(line, file=out)
    print(f"replay with: ksmsim check {args.race} --replay {args.save}", file=out)


def _replay(args: Any, race: Any, out: TextIO) -> int:
    saved = load_schedule(args.replay)
    kernel = args.kernel or saved.kernel or None
    profile = race_profile(race, kernel)
    mutations = check_mutations(tuple(args.mutation or saved.mutations))
    explorer = Explorer(race, profile, mutations)
    try:
        record: RunRecord = explorer.replay(saved.schedule)
    except SchedulerError as exc:
        raise CheckError(f"{args.replay}: {exc}") from None
    o = record.outcome
    if args.json:
        doc = {
            "race": race.name,
            "kernel": profile.name,
            "status": o.status,
            "message": o.message,
            "task": o.task,
            "where": o.where,
            "reproduced": o.signature() == saved.outcome.signature(),
            "trace": SavedSchedule("", "", [], [], o, record.trace).to_json()["trace"],
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(
            f"replaying {Path(args.replay).name} ({len(saved.schedule)} choices) on {profile.name}",
            file=out,
        )
        for line in format_trace(record.trace, o):
            print(line, file=out)
        print(f"outcome: {o.status}{': ' + o.message if o.message else ''}", file=out)
    return 1 if o.is_finding else 0
