"""Race scenarios: an ordinary scenario as the setup, plus ``[[tasks]]`` that then run concurrently.

A race file (TOML or JSON, kept under ``tests/scenarios/races/``) has every key of the scenario
format (``kernel``, ``machine``, ``tunables``, ``processes``, ``timeline``), which builds the
starting state one thing at a time exactly as ``ksmsim run`` would, and a ``tasks`` list whose
entries run as concurrent tasks from that state:

- ``kind = "ksmd"``: ``full_scans`` (default 1) or ``batches``; ``run`` is set to 1 first.
- ``kind = "user"``: ``actions``, a list of scenario actions (``fill``, ``write``, ``read``,
  ``mmap``, ``munmap``, ``madvise``, ``fork``, ``exit``, ``comment``) done in order.
- ``kind = "sysfs"``: ``writes``, a list of ``{file, value}`` (e.g. ``run = 2``).
- ``kind = "kswapd"``: ``rounds`` (default 1) of balance_pgdat() when woken; the user tasks'
  operations then leave background reclaim to it (direct reclaim stays theirs).
- ``kind = "migrate"``: ``proc``, ``region``, ``start``, ``count``: move those pages.

Every task has a ``name`` (default: its kind and index). ``machine.ram_pages`` defaults to a few
pages more than the processes map (not the format's 1 GiB), so that each run is cheap.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ksmsim.kernel.ksm import KSM_RUN_MERGE
from ksmsim.kernel.profile import Profile
from ksmsim.sched.scheduler import Scheduler
from ksmsim.sched.tasks import (
    USER_OPS,
    Body,
    World,
    ksmd_body,
    kswapd_body,
    migrate_body,
    sysfs_body,
    user_body,
)
from ksmsim.workload import scenario as sc
from ksmsim.workload.runner import ModelRunner, RunError, resolve_profile

MUTATIONS: Final = {
    "no-keyhole-recheck": "get_ksm_page() keeps the page it took a reference on without "
    "checking page->mapping again",
    "no-kpfn-recheck": "get_ksm_page() removes a node as stale without checking whether "
    "migration moved its page meanwhile (6.x ksm_get_folio()'s node->kpfn test)",
}
"""Deliberate bugs the explorer can switch on, to show it finds what they break."""

TASK_KINDS: Final = {
    "ksmd": ("full_scans", "batches"),
    "user": ("actions",),
    "sysfs": ("writes",),
    "kswapd": ("rounds",),
    "migrate": ("proc", "region", "start", "count"),
}


class RaceError(ValueError):
    """A race file that cannot be built or run; the message is one line."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One concurrent task of a race, as the file describes it."""

    name: str
    kind: str
    actions: tuple[sc.AnyAction, ...] = ()
    full_scans: int | None = None
    batches: int | None = None
    writes: tuple[tuple[str, int], ...] = ()
    rounds: int = 1
    proc: str = ""
    region: str = ""
    start: int = 0
    count: int | None = None


@dataclass(frozen=True, slots=True)
class RaceScenario:
    """A parsed race: the setup scenario and the tasks."""

    base: sc.Scenario
    tasks: tuple[TaskSpec, ...]

    @property
    def name(self) -> str:
        """Return the race's name."""
        return self.base.name


def _int(value: object, path: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise sc.ScenarioError(path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise sc.ScenarioError(path, f"expected a non-empty string, got {value!r}")
    return value


def parse_race(data: dict[str, Any], name: str) -> RaceScenario:
    """Validate a decoded race document; raise ScenarioError naming the key's path."""
    if "tasks" not in data:
        raise sc.ScenarioError("tasks", "a race needs a list of [[tasks]]")
    raw_tasks = data["tasks"]
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise sc.ScenarioError("tasks", "expected a non-empty list of tasks")
    doc = {k: v for k, v in data.items() if k != "tasks"}
    setup = list(doc.get("timeline", []) or [])
    # The user tasks' actions are parsed with the setup, so that names are checked against
    # every process the race can create; each action's path says which task it belongs to.
    combined = list(setup)
    offsets: list[tuple[int, int]] = []
    for i, t in enumerate(raw_tasks):
        path = f"tasks[{i}]"
        if not isinstance(t, dict):
            raise sc.ScenarioError(path, f"expected a table, got {t!r}")
        kind = t.get("kind")
        if kind not in TASK_KINDS:
            raise sc.ScenarioError(
                f"{path}.kind", f"unknown task kind {kind!r} (one of {', '.join(TASK_KINDS)})"
            )
        for key in t:
            if key not in ("name", "kind", *TASK_KINDS[kind]):
                raise sc.ScenarioError(f"{path}.{key}", f"unknown key for a {kind} task")
        if kind == "user":
            actions = t.get("actions")
            if not isinstance(actions, list) or not actions:
                raise sc.ScenarioError(f"{path}.actions", "expected a non-empty list of actions")
            for k, a in enumerate(actions):
                op = a.get("op") if isinstance(a, dict) else None
                if op not in USER_OPS and op != "comment":
                    raise sc.ScenarioError(
                        f"{path}.actions[{k}].op",
                        f"{op!r} is not a user action (one of {', '.join(sorted(USER_OPS))})",
                    )
            offsets.append((len(combined), i))
            combined.extend(actions)
    try:
        scenario = sc.parse_scenario({**doc, "timeline": combined}, name)
    except sc.ScenarioError as exc:
        raise _remap(exc, len(setup), offsets, raw_tasks) from None
    base_timeline: list[sc.AnyAction] = []
    per_task: dict[int, list[sc.AnyAction]] = {}
    for action in scenario.timeline:
        index = int(action.path.split("[", 1)[1].split("]", 1)[0])
        owner = _owner(index, len(setup), offsets, raw_tasks)
        if owner is None:
            base_timeline.append(action)
        else:
            per_task.setdefault(owner, []).append(action)
    base = dataclasses.replace(scenario, timeline=tuple(base_timeline))
    if base.machine.ram_pages is None:
        mapped = sum(r.pages for p in base.processes for r in p.regions)
        base = dataclasses.replace(
            base, machine=dataclasses.replace(base.machine, ram_pages=4 * mapped + 64)
        )
    specs = []
    names: set[str] = set()
    for i, t in enumerate(raw_tasks):
        spec = _task_spec(t, f"tasks[{i}]", i, tuple(per_task.get(i, ())))
        if spec.name in names:
            raise sc.ScenarioError(f"tasks[{i}].name", f"duplicate task name {spec.name!r}")
        names.add(spec.name)
        specs.append(spec)
    return RaceScenario(base, tuple(specs))


def _owner(index: int, n_setup: int, offsets: list[tuple[int, int]], raw: list[Any]) -> int | None:
    if index < n_setup:
        return None
    for start, task in offsets:
        if start <= index < start + len(raw[task]["actions"]):
            return task
    return None


def _remap(
    exc: sc.ScenarioError, n_setup: int, offsets: list[tuple[int, int]], raw: list[Any]
) -> sc.ScenarioError:
    path = exc.path
    if path.startswith("timeline["):
        index = int(path[len("timeline[") :].split("]", 1)[0])
        owner = _owner(index, n_setup, offsets, raw)
        if owner is not None:
            start = next(s for s, t in offsets if t == owner)
            rest = path.split("]", 1)[1]
            path = f"tasks[{owner}].actions[{index - start}]{rest}"
    return sc.ScenarioError(path, exc.reason)


def _task_spec(t: dict[str, Any], path: str, i: int, actions: tuple[sc.AnyAction, ...]) -> TaskSpec:
    kind = t["kind"]
    name = _str(t.get("name", f"{kind}{i}"), f"{path}.name")
    if kind == "ksmd":
        full = t.get("full_scans")
        batches = t.get("batches")
        if full is not None and batches is not None:
            raise sc.ScenarioError(path, "give full_scans or batches, not both")
        return TaskSpec(
            name,
            kind,
            full_scans=_int(full, f"{path}.full_scans", 1)
            if full is not None
            else (None if batches is not None else 1),
            batches=_int(batches, f"{path}.batches", 1) if batches is not None else None,
        )
    if kind == "user":
        return TaskSpec(name, kind, actions=actions)
    if kind == "sysfs":
        writes = t.get("writes")
        if not isinstance(writes, list) or not writes:
            raise sc.ScenarioError(f"{path}.writes", "expected a non-empty list of writes")
        out = []
        for k, w in enumerate(writes):
            wp = f"{path}.writes[{k}]"
            if not isinstance(w, dict) or set(w) != {"file", "value"}:
                raise sc.ScenarioError(wp, "expected a table with file and value")
            out.append((_str(w["file"], f"{wp}.file"), _int(w["value"], f"{wp}.value")))
        return TaskSpec(name, kind, writes=tuple(out))
    if kind == "kswapd":
        return TaskSpec(name, kind, rounds=_int(t.get("rounds", 1), f"{path}.rounds", 1))
    count = t.get("count")
    return TaskSpec(
        name,
        kind,
        proc=_str(t.get("proc"), f"{path}.proc"),
        region=_str(t.get("region"), f"{path}.region"),
        start=_int(t.get("start", 0), f"{path}.start"),
        count=_int(count, f"{path}.count", 1) if count is not None else None,
    )


def load_race(path: str | Path) -> RaceScenario:
    """Read and parse a race file (``.toml``, else JSON); errors start with the file name."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise sc.ScenarioError("", "no such file", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise sc.ScenarioError("", f"cannot read: {exc}", file=str(p)) from None
    try:
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise sc.ScenarioError(
            "", f"invalid {p.suffix[1:] or 'JSON'}: {exc}", file=str(p)
        ) from None
    if not isinstance(data, dict):
        raise sc.ScenarioError("", "expected a table at the top level", file=str(p))
    try:
        return parse_race(data, p.stem)
    except sc.ScenarioError as exc:
        raise sc.ScenarioError(exc.path, exc.reason, file=str(p)) from None


def race_profile(race: RaceScenario, override: str | None = None) -> Profile:
    """Return the profile a race runs on (the file's kernel, or ``override``)."""
    try:
        return resolve_profile(race.base, override)
    except RunError as exc:
        raise RaceError(str(exc)) from None


def check_mutations(mutations: tuple[str, ...]) -> frozenset[str]:
    """Validate mutation names; raise RaceError on an unknown one."""
    for m in mutations:
        if m not in MUTATIONS:
            raise RaceError(f"unknown mutation {m!r} (known: {', '.join(sorted(MUTATIONS))})")
    return frozenset(mutations)


def build_world(race: RaceScenario, profile: Profile, mutations: frozenset[str]) -> World:
    """Run the setup sequentially on a fresh host, then spawn the tasks on a new scheduler."""
    runner = ModelRunner(race.base, profile)
    try:
        result = runner.run()
    except RunError as exc:
        raise RaceError(f"setup: {exc}") from None
    if not result["ok"]:
        failures = result["expect_failures"]
        what = failures[0] if failures else result["errors"][0]
        raise RaceError(f"setup: the starting state is not the expected one: {what}")
    host = runner.host
    host.ksm.mutations = mutations
    # kswapd is a task of its own here: the user tasks' operations must not run it inline.
    host.kswapd_between_operations = not any(t.kind == "kswapd" for t in race.tasks)
    world = World(host, Scheduler(host.machine))
    if any(t.kind == "ksmd" for t in race.tasks):
        host.sysfs.write("run", KSM_RUN_MERGE)
    for spec in race.tasks:
        world.sched.spawn(
            spec.name, _body(world, spec), kind=spec.kind, daemon=spec.kind in ("ksmd", "kswapd")
        )
    return world


def _body(world: World, spec: TaskSpec) -> Body:
    if spec.kind == "ksmd":
        return ksmd_body(world, spec.full_scans, spec.batches)
    if spec.kind == "user":
        return user_body(world, spec.actions)
    if spec.kind == "sysfs":
        return sysfs_body(world, spec.writes)
    if spec.kind == "kswapd":
        return kswapd_body(world, spec.rounds)
    return migrate_body(world, spec.proc, spec.region, spec.start, spec.count)
