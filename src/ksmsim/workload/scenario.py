"""Parse and validate ksmsim scenarios (scenario format version 1).

A scenario (``/work/shared/scenario-format.md``) is a JSON or TOML document; this module turns it
into frozen dataclasses with every default applied and every ``repeat`` expanded, so the timeline a
runner sees is a flat tuple of actions. Names of processes and regions are checked against the
names the scenario can ever create, but selectors (``proc``, ``region``, ``"*"``) are resolved by
the runner, which has the live state. Every problem raises ``ScenarioError``, whose message is one
line naming the key's path, e.g. ``timeline[2].pages: expected a positive integer, got "x"``.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, TypeAlias, cast

from ksmsim.workload.patterns import Pattern, parse_pattern

__all__ = [
    "ACTION_TYPES",
    "ADVICES",
    "ALL",
    "DEFAULT_KERNEL",
    "DEFAULT_RAM_PAGES",
    "DEFAULT_TUNABLES",
    "GLOBAL_COUNTERS",
    "KERNELS",
    "MEMORY_COUNTERS",
    "PROC_COUNTERS",
    "TUNABLES",
    "Action",
    "Advice",
    "AllType",
    "AnyAction",
    "Churn",
    "Comment",
    "Digest",
    "Exit",
    "Expectation",
    "Fill",
    "Fork",
    "Machine",
    "Madvise",
    "Migrate",
    "Mmap",
    "Munmap",
    "Pressure",
    "Process",
    "Read",
    "Region",
    "Run",
    "Scan",
    "Scenario",
    "ScenarioError",
    "Selector",
    "Set",
    "Snapshot",
    "UnmergeAll",
    "Write",
    "load_scenario",
    "parse_scenario",
]

# --------------------------------------------------------------------------------------------------
# Constants of the format

KERNELS: Final = ("v6.18", "v2.6.33", "keyhole", "pinned")
"""Model profiles a scenario may name."""

DEFAULT_KERNEL: Final = "v6.18"
"""The profile to use when a scenario names none (``Scenario.kernel is None``)."""

DEFAULT_RAM_PAGES: Final = 262144
"""Lower bound of the default ``machine.ram_pages`` (1 GiB); see ``Machine``."""

TUNABLES: Final = (
    "pages_to_scan",
    "sleep_millisecs",
    "use_zero_pages",
    "max_page_sharing",
    "smart_scan",
    "merge_across_nodes",
    "stable_node_chains_prune_millisecs",
    "max_kernel_pages",
)
"""Tunable names a scenario may set (whether a profile has one is decided by the model)."""

_REFUSED_TUNABLES: Final = {
    "run": "is driven by the runner (scan, unmerge_all) and cannot be set",
    "advisor_mode": "cannot be set: the advisor is not part of the format",
    "advisor_max_cpu": "cannot be set: the advisor is not part of the format",
    "advisor_max_pages_to_scan": "cannot be set: the advisor is not part of the format",
    "advisor_min_pages_to_scan": "cannot be set: the advisor is not part of the format",
    "advisor_target_scan_time": "cannot be set: the advisor is not part of the format",
}

DEFAULT_TUNABLES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "pages_to_scan": 100000,
        "sleep_millisecs": 20,
        "use_zero_pages": 0,
        "max_page_sharing": 256,
        "smart_scan": 1,
        "merge_across_nodes": 1,
        "stable_node_chains_prune_millisecs": 2000,
    }
)
"""The format's tunable defaults (``max_kernel_pages``, where it exists, is ram_pages // 4)."""

GLOBAL_COUNTERS: Final = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "pages_scanned",
    "pages_skipped",
    "ksm_zero_pages",
    "stable_node_chains",
    "stable_node_dups",
    "general_profit",
    "run",
)
"""Counters of a snapshot's ``global`` section (bare ``expect`` keys)."""

PROC_COUNTERS: Final = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
    "ksm_mergeable",
    "ksm_merge_any",
)
"""Counters of a snapshot's ``procs[name]`` section (``expect`` keys ``proc:NAME:counter``)."""

MEMORY_COUNTERS: Final = (
    "free_pages",
    "anon_pages",
    "ksm_pages",
    "swap_cache_pages",
    "swap_used_pages",
    "pages_swapped_out",
    "oom_events",
)
"""Counters of a snapshot's ``memory`` section (bare ``expect`` keys)."""

Advice: TypeAlias = Literal["mergeable", "unmergeable", "dontneed", "hugepage", "nohugepage"]
ADVICES: Final[tuple[Advice, ...]] = (
    "mergeable",
    "unmergeable",
    "dontneed",
    "hugepage",
    "nohugepage",
)

MAX_ACTIONS: Final = 1_000_000
"""Upper bound on the flattened timeline (repeat expansion)."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
_VAR_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER_RE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*))?\}")
_INT_RE: Final = re.compile(r"-?[0-9]+")
_MAX_SALT: Final = 256
_UNIQUE: Final = Pattern("unique")


# --------------------------------------------------------------------------------------------------
# Errors


class ScenarioError(ValueError):
    """A scenario that cannot be read or is invalid; the message is one line naming the key's path.

    ``path`` is the key path (``""`` for the document or file as a whole), ``reason`` the problem
    and ``file`` the file name when the scenario came from a file (then the message starts with it).
    """

    def __init__(self, path: str, reason: str, *, file: str | None = None) -> None:
        """Build the one-line message ``[file: ][path: ]reason``."""
        self.path = path
        self.reason = reason
        self.file = file
        parts = [p for p in (file, path) if p]
        message = ": ".join([*parts, reason])
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the keyword-only ``file`` (so errors cross process boundaries)."""
        return (_scenario_error, (self.path, self.reason, self.file))


def _scenario_error(path: str, reason: str, file: str | None) -> ScenarioError:
    """Rebuild a pickled ScenarioError."""
    return ScenarioError(path, reason, file=file)


# --------------------------------------------------------------------------------------------------
# Addressing


class AllType(enum.Enum):
    """Type of the ``ALL`` sentinel ("*": every live process, or every region of a process)."""

    ALL = "*"

    def __repr__(self) -> str:
        """Show the sentinel as ``ALL``."""
        return "ALL"


ALL: Final = AllType.ALL
"""The ``"*"`` selector: every live process (in creation order) or every region."""

Selector: TypeAlias = tuple[str, ...] | Literal[AllType.ALL]
"""A ``proc`` or ``region`` selector: ``ALL`` or a non-empty tuple of distinct names."""


# --------------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True, slots=True)
class Expectation:
    """One ``expect`` entry: counter ``counter`` (of process ``proc``) must lie in [lo, hi]."""

    key: str
    """The key as written (normalised): ``"pages_shared"`` or ``"proc:NAME:counter"``."""
    scope: Literal["global", "proc", "memory"]
    proc: str | None
    counter: str
    lo: int
    hi: int

    def matches(self, value: int) -> bool:
        """Return True when ``value`` satisfies the expectation."""
        return self.lo <= value <= self.hi

    def to_json(self) -> int | list[int]:
        """Return the value as written in a scenario: an int, or ``[lo, hi]``."""
        return self.lo if self.lo == self.hi else [self.lo, self.hi]


@dataclass(frozen=True, slots=True)
class Region:
    """An anonymous private mapping of ``pages`` pages, filled with ``fill`` once mapped."""

    name: str
    pages: int
    mergeable: bool = True
    thp: bool = False
    fill: Pattern | None = None
    salt: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the normalised JSON-able form."""
        out: dict[str, Any] = {
            "name": self.name,
            "pages": self.pages,
            "mergeable": self.mergeable,
            "thp": self.thp,
        }
        if self.fill is not None:
            out["fill"] = self.fill.spec
        out["salt"] = self.salt
        return out


@dataclass(frozen=True, slots=True)
class Process:
    """A process created before the timeline; its regions are mapped in order."""

    name: str
    regions: tuple[Region, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the normalised JSON-able form."""
        return {"name": self.name, "regions": [r.to_dict() for r in self.regions]}


@dataclass(frozen=True, slots=True)
class Machine:
    """The simulated machine (model only). ``ram_pages`` None means the format's default:
    max(DEFAULT_RAM_PAGES, pages the processes map * 1.25), which the model computes."""

    ram_pages: int | None = None
    swap_pages: int = 0
    hz: int = 250
    cpus: int = 2

    def to_dict(self) -> dict[str, Any]:
        """Return the normalised JSON-able form (``ram_pages`` left out when None)."""
        out: dict[str, Any] = {}
        if self.ram_pages is not None:
            out["ram_pages"] = self.ram_pages
        out.update(swap_pages=self.swap_pages, hz=self.hz, cpus=self.cpus)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """Base of all timeline actions; ``path`` locates the action in the file for error messages."""

    op: ClassVar[str] = ""
    path: str = field(default="", compare=False)
    """E.g. ``timeline[3]`` or ``timeline[3](i=2).actions[1]`` (repeat iteration i=2)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the normalised JSON-able form, ``{"op": ..., field: value, ...}``."""
        out: dict[str, Any] = {"op": self.op}
        for f in fields(self):
            if f.name == "path":
                continue
            value = getattr(self, f.name)
            if value is None or (f.name == "label" and value == ""):
                continue
            out[f.name] = _to_json(f.name, value)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill(Action):
    """Write pattern contents into every mapped page of the range."""

    op: ClassVar[str] = "fill"
    proc: Selector = ALL
    region: Selector = ALL
    pattern: Pattern
    start: int = 0
    count: int | None = None
    salt: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Write(Action):
    """Write byte ``value`` at ``offset`` into every ``stride``-th page of the range."""

    op: ClassVar[str] = "write"
    proc: Selector = ALL
    region: Selector = ALL
    value: int
    offset: int = 2048
    start: int = 0
    count: int | None = None
    stride: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Read(Action):
    """Read one byte of each page of the range."""

    op: ClassVar[str] = "read"
    proc: Selector = ALL
    region: Selector = ALL
    start: int = 0
    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mmap(Action):
    """Map a new region in each selected live process."""

    op: ClassVar[str] = "mmap"
    proc: Selector = ALL
    region: Region


@dataclass(frozen=True, slots=True, kw_only=True)
class Munmap(Action):
    """Unmap the range (partial unmaps allowed)."""

    op: ClassVar[str] = "munmap"
    proc: Selector = ALL
    region: Selector = ALL
    start: int = 0
    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Madvise(Action):
    """Apply ``advice`` to each mapped run of the range."""

    op: ClassVar[str] = "madvise"
    proc: Selector = ALL
    region: Selector = ALL
    advice: Advice
    start: int = 0
    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fork(Action):
    """Fork process ``proc`` into a new process ``child``."""

    op: ClassVar[str] = "fork"
    proc: str
    child: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit(Action):
    """Make the selected processes exit."""

    op: ClassVar[str] = "exit"
    proc: Selector = ALL


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan(Action):
    """Run ksmd for exactly ``full_scans`` full scans and take snapshot(s).

    ``label`` is always set when a snapshot is taken (auto-labelled ``scan-N`` if the file gave
    none); with ``snapshot_each`` the snapshots are ``label.1`` ... ``label.N``.
    """

    op: ClassVar[str] = "scan"
    full_scans: int = 1
    label: str = ""
    snapshot_each: bool = False
    snapshot: bool = True
    expect: tuple[Expectation, ...] = ()
    expect_each: tuple[Expectation, ...] = ()
    timeout_s: float = 120.0
    allow_timeout: bool = False

    @property
    def snapshot_labels(self) -> tuple[str, ...]:
        """Return the labels of the snapshots this scan takes, in order."""
        if self.snapshot_each:
            return tuple(f"{self.label}.{k}" for k in range(1, self.full_scans + 1))
        return (self.label,) if self.snapshot else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot(Action):
    """Record the counters under ``label``."""

    op: ClassVar[str] = "snapshot"
    label: str = ""
    expect: tuple[Expectation, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmergeAll(Action):
    """Write run=2 then run=0, then (if ``snapshot``) record the counters under ``label``."""

    op: ClassVar[str] = "unmerge_all"
    label: str = ""
    expect: tuple[Expectation, ...] = ()
    snapshot: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Set(Action):
    """Change tunables mid-run (the runner reproduces the kernel's errors)."""

    op: ClassVar[str] = "set"
    tunables: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Digest(Action):
    """Record a sha256 of the contents of the selected regions."""

    op: ClassVar[str] = "digest"
    proc: Selector = ALL
    region: Selector = ALL


@dataclass(frozen=True, slots=True, kw_only=True)
class Comment(Action):
    """Do nothing."""

    op: ClassVar[str] = "comment"
    text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Run(Action):
    """Let ksmd run at its tunables for ``seconds`` while background work goes on."""

    op: ClassVar[str] = "run"
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Churn(Action):
    """Start a background writer (active during ``run``) writing ``pattern`` pages."""

    op: ClassVar[str] = "churn"
    proc: Selector = ALL
    region: Selector = ALL
    writes_per_s: float
    pattern: Pattern = _UNIQUE


@dataclass(frozen=True, slots=True, kw_only=True)
class Pressure(Action):
    """Allocate and touch ``pages`` pages elsewhere so that reclaim must free frames."""

    op: ClassVar[str] = "pressure"
    pages: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Migrate(Action):
    """Move the pages of the range to other frames."""

    op: ClassVar[str] = "migrate"
    proc: Selector = ALL
    region: Selector = ALL
    start: int = 0
    count: int | None = None


AnyAction: TypeAlias = (
    Fill
    | Write
    | Read
    | Mmap
    | Munmap
    | Madvise
    | Fork
    | Exit
    | Scan
    | Snapshot
    | UnmergeAll
    | Set
    | Digest
    | Comment
    | Run
    | Churn
    | Pressure
    | Migrate
)
"""Union of every concrete action type (for exhaustive ``match``)."""

ACTION_TYPES: Final[Mapping[str, type[Action]]] = MappingProxyType(
    {
        cls.op: cls
        for cls in (
            Fill,
            Write,
            Read,
            Mmap,
            Munmap,
            Madvise,
            Fork,
            Exit,
            Scan,
            Snapshot,
            UnmergeAll,
            Set,
            Digest,
            Comment,
            Run,
            Churn,
            Pressure,
            Migrate,
        )
    }
)
"""op name -> action class (``repeat`` is not an action: it is expanded at parse time)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario: defaults applied, repeats expanded, names checked.

    ``kernel`` is None when the file names no kernel (the model then uses ``DEFAULT_KERNEL``);
    ``tunables`` holds only the tunables the file sets (``DEFAULT_TUNABLES`` has the defaults).
    """

    name: str
    description: str = ""
    seed: int | None = None
    kernel: str | None = None
    machine: Machine = Machine()
    tunables: dict[str, int] = field(default_factory=dict)
    processes: tuple[Process, ...] = ()
    timeline: tuple[AnyAction, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a normalised JSON-able form that ``parse_scenario`` reads back to an equal one."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.kernel is not None:
            out["kernel"] = self.kernel
        out["machine"] = self.machine.to_dict()
        out["tunables"] = dict(self.tunables)
        out["processes"] = [p.to_dict() for p in self.processes]
        out["timeline"] = [a.to_dict() for a in self.timeline]
        return out


def _to_json(name: str, value: object) -> Any:
    """Convert one action field to its JSON-able form."""
    if value is ALL:
        return "*"
    if isinstance(value, Pattern):
        return value.spec
    if isinstance(value, Region):
        return value.to_dict()
    if name in ("expect", "expect_each"):
        return {e.key: e.to_json() for e in cast("tuple[Expectation, ...]", value)}
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


# --------------------------------------------------------------------------------------------------
# Value checking


class _Missing(enum.Enum):
    """Marker for an absent key."""

    MISSING = 0


_MISSING: Final = _Missing.MISSING


def _show(value: object) -> str:
    """Render a bad value for an error message (JSON-like, shortened)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_path(path: str, key: str) -> str:
    """Join a container path and a key."""
    if not _VAR_RE.fullmatch(key):
        key = json.dumps(key)
        return f"{path}[{key}]" if path else key
    return f"{path}.{key}" if path else key


def _suggest(word: str, choices: Collection[str]) -> str:
    """Return ' (did you mean "x"?)' for a near miss, else ''."""
    import difflib  # here: only a misspelt key needs it (an import a run does without)

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _is_int(value: object) -> bool:
    """Return True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: object, path: str, *, minimum: int | None = None) -> int:
    """Check an integer (with an optional lower bound of 0 or 1)."""
    if _is_int(value):
        number = cast(int, value)
        if minimum is None or number >= minimum:
            return number
    if minimum == 1:
        what = "a positive integer"
    elif minimum == 0:
        what = "a non-negative integer"
    else:
        what = "an integer"
    raise ScenarioError(path, f"expected {what}, got {_show(value)}")


def _number(value: object, path: str, *, allow_zero: bool = False) -> float:
    """Check a positive (or non-negative) finite number."""
    if _is_int(value) or isinstance(value, float):
        try:
            number = float(cast(float, value))
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and (number > 0 or (allow_zero and number == 0)):
            return number
    what = "a non-negative number" if allow_zero else "a positive number"
    raise ScenarioError(path, f"expected {what}, got {_show(value)}")


def _bool(value: object, path: str) -> bool:
    """Check a boolean."""
    if isinstance(value, bool):
        return value
    raise ScenarioError(path, f"expected true or false, got {_show(value)}")


def _text(value: object, path: str) -> str:
    """Check a string."""
    if isinstance(value, str):
        return value
    raise ScenarioError(path, f"expected a string, got {_show(value)}")


def _label(value: object, path: str) -> str:
    """Check a snapshot label: a non-empty one-line string (an integer is taken as text)."""
    if _is_int(value):
        return str(value)
    if isinstance(value, str) and value and value.isprintable():
        return value
    raise ScenarioError(path, f"expected a non-empty one-line label, got {_show(value)}")


def _name(value: object, path: str, what: str) -> str:
    """Check a process or region name (an integer is taken as text)."""
    if _is_int(value) and cast(int, value) >= 0:
        value = str(value)
    if isinstance(value, str) and _NAME_RE.fullmatch(value):
        return value
    raise ScenarioError(
        path,
        f"expected a {what} (1-64 characters of A-Z a-z 0-9 _ . + -, not starting with . + -), "
        f"got {_show(value)}",
    )


def _selector(value: object, path: str, what: str) -> Selector:
    """Check a selector: "*", a name, or a non-empty list of distinct names."""
    if value == "*":
        return ALL
    if isinstance(value, list):
        if not value:
            raise ScenarioError(path, f'expected a {what}, a list of them or "*", got []')
        names: list[str] = []
        for k, item in enumerate(value):
            if item == "*":
                raise ScenarioError(f"{path}[{k}]", '"*" must be used alone, not in a list')
            name = _name(item, f"{path}[{k}]", what)
            if name in names:
                raise ScenarioError(f"{path}[{k}]", f'duplicate {what} "{name}"')
            names.append(name)
        return tuple(names)
    return (_name(value, path, what),)


def _byte(value: object, path: str) -> int:
    """Check a byte value: an integer 0-255 or a one-character ASCII string."""
    if _is_int(value) and 0 <= cast(int, value) <= 255:
        return cast(int, value)
    if isinstance(value, str) and len(value) == 1 and ord(value) < 128:
        return ord(value)
    raise ScenarioError(
        path, f"expected a byte (0-255 or a one-character string), got {_show(value)}"
    )


def _pattern(value: object, path: str) -> Pattern:
    """Check a fill pattern."""
    if isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return parse_pattern(value)
        except ValueError as exc:
            raise ScenarioError(path, str(exc)) from None
    raise ScenarioError(
        path,
        f'expected a pattern (0-255, one character, "zero", "unique" or "repeat:K"), '
        f"got {_show(value)}",
    )


def _salt(value: object, path: str) -> str:
    """Check a salt: printable ASCII, at most 256 characters."""
    if isinstance(value, str) and len(value) <= _MAX_SALT and all(" " <= ch <= "~" for ch in value):
        return value
    if _is_int(value):
        return str(value)
    raise ScenarioError(
        path,
        f"expected a salt (printable ASCII, at most {_MAX_SALT} characters), got {_show(value)}",
    )


def _expect(value: object, path: str) -> tuple[Expectation, ...]:
    """Check an ``expect`` table: counter -> int or [lo, hi]."""
    if not isinstance(value, dict):
        raise ScenarioError(path, f"expected a table of counter: value, got {_show(value)}")
    out: list[Expectation] = []
    for key, raw in value.items():
        kpath = _key_path(path, str(key))
        scope: Literal["global", "proc", "memory"]
        proc: str | None = None
        if key.startswith("proc:"):
            parts = key.split(":")
            if len(parts) != 3:
                raise ScenarioError(kpath, 'expected "proc:NAME:counter"')
            proc = _name(parts[1], kpath, "process name")
            counter = parts[2]
            if counter not in PROC_COUNTERS:
                raise ScenarioError(
                    kpath,
                    f'unknown per-process counter "{counter}"{_suggest(counter, PROC_COUNTERS)}',
                )
            scope = "proc"
        elif key in GLOBAL_COUNTERS:
            counter, scope = key, "global"
        elif key in MEMORY_COUNTERS:
            counter, scope = key, "memory"
        else:
            known = (*GLOBAL_COUNTERS, *MEMORY_COUNTERS)
            raise ScenarioError(
                kpath, f'unknown counter "{key}"{_suggest(key, known)} (per process: proc:NAME:...)'
            )
        if _is_int(raw):
            lo = hi = cast(int, raw)
        elif (
            isinstance(raw, list)
            and len(raw) == 2
            and all(_is_int(x) for x in raw)
            and raw[0] <= raw[1]
        ):
            lo, hi = raw
        else:
            raise ScenarioError(
                kpath, f"expected an integer or [lo, hi] with lo <= hi, got {_show(raw)}"
            )
        out.append(
            Expectation(f"proc:{proc}:{counter}" if proc else key, scope, proc, counter, lo, hi)
        )
    return tuple(out)


def _tunables(value: object, path: str, *, allow_empty: bool) -> dict[str, int]:
    """Check a tunables table: known names, non-negative integer values."""
    if not isinstance(value, dict):
        raise ScenarioError(path, f"expected a table of tunable: value, got {_show(value)}")
    if not value and not allow_empty:
        raise ScenarioError(path, "expected at least one tunable")
    out: dict[str, int] = {}
    for key, raw in value.items():
        kpath = _key_path(path, str(key))
        if key in _REFUSED_TUNABLES:
            raise ScenarioError(kpath, f'"{key}" {_REFUSED_TUNABLES[key]}')
        if key not in TUNABLES:
            raise ScenarioError(kpath, f'unknown tunable "{key}"{_suggest(key, TUNABLES)}')
        out[key] = _int(raw, kpath, minimum=0)
    return out


# --------------------------------------------------------------------------------------------------
# Repeat variables


def _substitute(value: object, env: Mapping[str, int], path: str) -> object:
    """Format ``{var}`` / ``{var:spec}`` placeholders of ``env`` in strings, deeply.

    A string that contained a placeholder and formats to an integer becomes an integer; dictionary
    keys are formatted but stay strings.
    """
    if not env:
        return value
    if isinstance(value, str):
        return _substitute_str(value, env, path, to_int=True)
    if isinstance(value, list):
        return [_substitute(item, env, f"{path}[{k}]") for k, item in enumerate(value)]
    if isinstance(value, dict):
        out: dict[object, object] = {}
        for key, item in value.items():
            new_key = _substitute_str(key, env, path, to_int=False) if isinstance(key, str) else key
            out[new_key] = _substitute(item, env, _key_path(path, str(new_key)))
        return out
    return value


def _substitute_str(text: str, env: Mapping[str, int], path: str, *, to_int: bool) -> object:
    """Format the placeholders of ``env`` in one string."""
    if "{" not in text:
        return text
    hit = False

    def replace(match: re.Match[str]) -> str:
        nonlocal hit
        name, spec = match.group(1), match.group(2)
        if name not in env:
            return match.group(0)
        hit = True
        try:
            return format(env[name], spec or "")
        except ValueError as exc:
            raise ScenarioError(path, f"cannot format {match.group(0)}: {exc}") from None

    result = _PLACEHOLDER_RE.sub(replace, text)
    if hit and to_int and _INT_RE.fullmatch(result):
        return int(result)
    return result


# --------------------------------------------------------------------------------------------------
# Parsing


class _Obj:
    """A table being parsed: checks its keys, substitutes repeat variables, tracks paths."""

    def __init__(
        self, data: object, path: str, env: Mapping[str, int], allowed: Collection[str]
    ) -> None:
        """Check that ``data`` is a table whose keys are all in ``allowed``."""
        if not isinstance(data, dict):
            raise ScenarioError(path, f"expected a table, got {_show(data)}")
        for key in data:
            if key not in allowed:
                where = "unknown key" if path else "unknown top-level key"
                raise ScenarioError(path, f'{where} "{key}"{_suggest(str(key), allowed)}')
        self.data: dict[str, object] = data
        self.path = path
        self.env = env

    def kp(self, key: str) -> str:
        """Return the path of ``key``."""
        return _key_path(self.path, key)

    def has(self, key: str) -> bool:
        """Return True when ``key`` is present."""
        return key in self.data

    def raw(self, key: str) -> object:
        """Return the value of a required key without substituting repeat variables."""
        if key not in self.data:
            raise ScenarioError(self.path, f'missing required key "{key}"')
        return self.data[key]

    def get(self, key: str, default: object = _MISSING) -> object:
        """Return the value of ``key`` (substituted), ``default`` if absent, or fail if required."""
        if key not in self.data:
            if default is _MISSING:
                raise ScenarioError(self.path, f'missing required key "{key}"')
            return default
        return _substitute(self.data[key], self.env, self.kp(key))

    # Shared fields of actions.
    def proc(self) -> Selector:
        """Return the ``proc`` selector (default ``ALL``)."""
        return _selector(self.get("proc", "*"), self.kp("proc"), "process name")

    def region_sel(self) -> Selector:
        """Return the ``region`` selector (default ``ALL``)."""
        return _selector(self.get("region", "*"), self.kp("region"), "region name")

    def start(self) -> int:
        """Return ``start`` (default 0)."""
        return _int(self.get("start", 0), self.kp("start"), minimum=0)

    def count(self) -> int | None:
        """Return ``count`` (default None: to the end of the region)."""
        if not self.has("count"):
            return None
        return _int(self.get("count"), self.kp("count"), minimum=1)

    def label(self) -> str:
        """Return ``label`` ("" when absent: labelled automatically later)."""
        return _label(self.get("label"), self.kp("label")) if self.has("label") else ""

    def expect(self, key: str = "expect") -> tuple[Expectation, ...]:
        """Return an expectation table (default empty)."""
        return _expect(self.get(key), self.kp(key)) if self.has(key) else ()

    def boolean(self, key: str, default: bool) -> bool:
        """Return a boolean field."""
        return _bool(self.get(key, default), self.kp(key))


def _parse_region(data: object, path: str, env: Mapping[str, int]) -> Region:
    """Parse a REGION table."""
    o = _Obj(data, path, env, ("name", "pages", "mergeable", "thp", "fill", "salt"))
    return Region(
        name=_name(o.get("name"), o.kp("name"), "region name"),
        pages=_int(o.get("pages"), o.kp("pages"), minimum=1),
        mergeable=o.boolean("mergeable", True),
        thp=o.boolean("thp", False),
        fill=_pattern(o.get("fill"), o.kp("fill")) if o.has("fill") else None,
        salt=_salt(o.get("salt", ""), o.kp("salt")),
    )


def _parse_process(data: object, path: str) -> Process:
    """Parse a process table."""
    o = _Obj(data, path, {}, ("name", "regions"))
    name = _name(o.get("name"), o.kp("name"), "process name")
    raw = o.get("regions", [])
    if not isinstance(raw, list):
        raise ScenarioError(o.kp("regions"), f"expected a list of regions, got {_show(raw)}")
    regions: list[Region] = []
    seen: set[str] = set()
    for k, item in enumerate(raw):
        rpath = f"{o.kp('regions')}[{k}]"
        region = _parse_region(item, rpath, {})
        if region.name in seen:
            raise ScenarioError(f"{rpath}.name", f'duplicate region name "{region.name}"')
        seen.add(region.name)
        regions.append(region)
    return Process(name=name, regions=tuple(regions))


def _build_fill(o: _Obj) -> Fill:
    """Build a Fill action from its table."""
    return Fill(
        path=o.path,
        proc=o.proc(),
        region=o.region_sel(),
        pattern=_pattern(o.get("pattern"), o.kp("pattern")),
        start=o.start(),
        count=o.count(),
        salt=_salt(o.get("salt", ""), o.kp("salt")),
    )


def _build_write(o: _Obj) -> Write:
    """Build a Write action from its table."""
    offset = _int(o.get("offset", 2048), o.kp("offset"), minimum=0)
    if offset > 4095:
        raise ScenarioError(o.kp("offset"), f"expected an offset 0-4095, got {offset}")
    return Write(
        path=o.path,
        proc=o.proc(),
        region=o.region_sel(),
        value=_byte(o.get("value"), o.kp("value")),
        offset=offset,
        start=o.start(),
        count=o.count(),
        stride=_int(o.get("stride", 1), o.kp("stride"), minimum=1),
    )


def _build_read(o: _Obj) -> Read:
    """Build a Read action from its table."""
    return Read(path=o.path, proc=o.proc(), region=o.region_sel(), start=o.start(), count=o.count())


def _build_mmap(o: _Obj) -> Mmap:
    """Build a Mmap action from its table."""
    region = _parse_region(o.get("region"), o.kp("region"), {})
    return Mmap(path=o.path, proc=o.proc(), region=region)


def _build_munmap(o: _Obj) -> Munmap:
    """Build a Munmap action from its table."""
    return Munmap(
        path=o.path, proc=o.proc(), region=o.region_sel(), start=o.start(), count=o.count()
    )


def _build_madvise(o: _Obj) -> Madvise:
    """Build a Madvise action from its table."""
    advice = o.get("advice")
    if advice not in ADVICES:
        raise ScenarioError(
            o.kp("advice"), f"expected one of {', '.join(ADVICES)}, got {_show(advice)}"
        )
    return Madvise(
        path=o.path,
        proc=o.proc(),
        region=o.region_sel(),
        advice=advice,
        start=o.start(),
        count=o.count(),
    )


def _build_fork(o: _Obj) -> Fork:
    """Build a Fork action from its table."""
    return Fork(
        path=o.path,
        proc=_name(o.get("proc"), o.kp("proc"), "process name"),
        child=_name(o.get("child"), o.kp("child"), "process name"),
    )


def _build_exit(o: _Obj) -> Exit:
    """Build a Exit action from its table."""
    return Exit(path=o.path, proc=o.proc())


def _build_scan(o: _Obj) -> Scan:
    """Build a Scan action from its table."""
    scan = Scan(
        path=o.path,
        full_scans=_int(o.get("full_scans", 1), o.kp("full_scans"), minimum=1),
        label=o.label(),
        snapshot_each=o.boolean("snapshot_each", False),
        snapshot=o.boolean("snapshot", True),
        expect=o.expect(),
        expect_each=o.expect("expect_each"),
        timeout_s=_number(o.get("timeout_s", 120), o.kp("timeout_s")),
        allow_timeout=o.boolean("allow_timeout", False),
    )
    if scan.expect and not (scan.snapshot or scan.snapshot_each):
        raise ScenarioError(o.kp("expect"), "needs a snapshot, but snapshot is false")
    if scan.expect_each and not scan.snapshot_each:
        raise ScenarioError(o.kp("expect_each"), "needs snapshot_each = true")
    return scan


def _build_snapshot(o: _Obj) -> Snapshot:
    """Build a Snapshot action from its table."""
    return Snapshot(path=o.path, label=o.label(), expect=o.expect())


def _build_unmerge_all(o: _Obj) -> UnmergeAll:
    """Build a UnmergeAll action from its table."""
    action = UnmergeAll(
        path=o.path, label=o.label(), expect=o.expect(), snapshot=o.boolean("snapshot", True)
    )
    if action.expect and not action.snapshot:
        raise ScenarioError(o.kp("expect"), "needs a snapshot, but snapshot is false")
    return action


def _build_set(o: _Obj) -> Set:
    """Build a Set action from its table."""
    return Set(
        path=o.path,
        tunables=_tunables(o.get("tunables"), o.kp("tunables"), allow_empty=False),
    )


def _build_digest(o: _Obj) -> Digest:
    """Build a Digest action from its table."""
    return Digest(path=o.path, proc=o.proc(), region=o.region_sel())


def _build_comment(o: _Obj) -> Comment:
    """Build a Comment action from its table."""
    return Comment(path=o.path, text=_text(o.get("text", ""), o.kp("text")))


def _build_run(o: _Obj) -> Run:
    """Build a Run action from its table."""
    return Run(path=o.path, seconds=_number(o.get("seconds"), o.kp("seconds")))


def _build_churn(o: _Obj) -> Churn:
    """Build a Churn action from its table."""
    return Churn(
        path=o.path,
        proc=o.proc(),
        region=o.region_sel(),
        writes_per_s=_number(o.get("writes_per_s"), o.kp("writes_per_s"), allow_zero=True),
        pattern=_pattern(o.get("pattern", "unique"), o.kp("pattern")),
    )


def _build_pressure(o: _Obj) -> Pressure:
    """Build a Pressure action from its table."""
    return Pressure(path=o.path, pages=_int(o.get("pages"), o.kp("pages"), minimum=1))


def _build_migrate(o: _Obj) -> Migrate:
    """Build a Migrate action from its table."""
    return Migrate(
        path=o.path, proc=o.proc(), region=o.region_sel(), start=o.start(), count=o.count()
    )


_BUILDERS: Final[Mapping[str, Callable[[_Obj], AnyAction]]] = MappingProxyType(
    {
        "fill": _build_fill,
        "write": _build_write,
        "read": _build_read,
        "mmap": _build_mmap,
        "munmap": _build_munmap,
        "madvise": _build_madvise,
        "fork": _build_fork,
        "exit": _build_exit,
        "scan": _build_scan,
        "snapshot": _build_snapshot,
        "unmerge_all": _build_unmerge_all,
        "set": _build_set,
        "digest": _build_digest,
        "comment": _build_comment,
        "run": _build_run,
        "churn": _build_churn,
        "pressure": _build_pressure,
        "migrate": _build_migrate,
    }
)

_ACTION_KEYS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        op: frozenset({"op"} | {f.name for f in fields(cls) if f.name != "path"})
        for op, cls in ACTION_TYPES.items()
    }
)
_REPEAT_KEYS: Final = frozenset({"op", "times", "start", "var", "actions"})
_OPS: Final = (*ACTION_TYPES, "repeat")


def _parse_actions(items: object, path: str, env: Mapping[str, int], out: list[AnyAction]) -> None:
    """Parse a list of actions into ``out``, expanding ``repeat`` recursively."""
    if not isinstance(items, list):
        raise ScenarioError(path, f"expected a list of actions, got {_show(items)}")
    for k, item in enumerate(items):
        ipath = f"{path}[{k}]"
        if not isinstance(item, dict):
            raise ScenarioError(ipath, f"expected an action table, got {_show(item)}")
        if "op" not in item:
            raise ScenarioError(ipath, 'missing required key "op"')
        op = _substitute(item["op"], env, f"{ipath}.op")
        if not isinstance(op, str) or op not in _OPS:
            hint = _suggest(op, _OPS) if isinstance(op, str) else ""
            raise ScenarioError(f"{ipath}.op", f"unknown op {_show(op)}{hint}")
        if op == "repeat":
            _expand_repeat(_Obj(item, ipath, env, _REPEAT_KEYS), out)
            continue
        out.append(_BUILDERS[op](_Obj(item, ipath, env, _ACTION_KEYS[op])))
        if len(out) > MAX_ACTIONS:
            raise ScenarioError(ipath, f"the timeline expands to more than {MAX_ACTIONS} actions")


def _expand_repeat(o: _Obj, out: list[AnyAction]) -> None:
    """Expand one ``repeat`` action into ``out``."""
    times = _int(o.get("times"), o.kp("times"), minimum=0)
    start = _int(o.get("start", 0), o.kp("start"))
    var = o.get("var", "i")
    if not isinstance(var, str) or not _VAR_RE.fullmatch(var):
        raise ScenarioError(o.kp("var"), f"expected an identifier, got {_show(var)}")
    actions = o.raw("actions")
    if not isinstance(actions, list):
        raise ScenarioError(o.kp("actions"), f"expected a list of actions, got {_show(actions)}")
    if times * len(actions) > MAX_ACTIONS:
        raise ScenarioError(o.path, f"the timeline expands to more than {MAX_ACTIONS} actions")
    for value in range(start, start + times):
        env = {**o.env, var: value}
        _parse_actions(actions, f"{o.path}({var}={value}).actions", env, out)


def _check_names(processes: tuple[Process, ...], timeline: list[AnyAction]) -> None:
    """Check that every name the timeline uses is one the scenario can create."""
    procs = {p.name for p in processes}
    regions = {r.name for p in processes for r in p.regions}
    for action in timeline:
        if isinstance(action, Fork):
            procs.add(action.child)
        elif isinstance(action, Mmap):
            regions.add(action.region.name)
    seen = {p.name for p in processes}
    for action in timeline:
        proc = getattr(action, "proc", ALL)
        for name in (proc,) if isinstance(proc, str) else (() if proc is ALL else proc):
            if name not in procs:
                raise ScenarioError(
                    f"{action.path}.proc", f'unknown process "{name}"{_suggest(name, procs)}'
                )
        region = getattr(action, "region", ALL)
        if isinstance(region, tuple):
            for name in region:
                if name not in regions:
                    raise ScenarioError(
                        f"{action.path}.region",
                        f'unknown region "{name}"{_suggest(name, regions)}',
                    )
        for key in ("expect", "expect_each"):
            for e in cast("tuple[Expectation, ...]", getattr(action, key, ())):
                if e.proc is not None and e.proc not in procs:
                    raise ScenarioError(
                        _key_path(f"{action.path}.{key}", e.key), f'unknown process "{e.proc}"'
                    )
        if isinstance(action, Fork):
            if action.child in seen:
                raise ScenarioError(
                    f"{action.path}.child", f'process name "{action.child}" is already used'
                )
            seen.add(action.child)


def _assign_labels(timeline: list[AnyAction]) -> list[AnyAction]:
    """Check snapshot labels are unique and label unlabelled snapshots ``<op>-<n>``."""
    used: dict[str, str] = {}

    def takes(action: AnyAction) -> tuple[str, ...]:
        """Return the snapshot labels an action takes."""
        if isinstance(action, Scan):
            return action.snapshot_labels
        if isinstance(action, UnmergeAll):
            return (action.label,) if action.snapshot else ()
        if isinstance(action, Snapshot):
            return (action.label,)
        return ()

    for action in timeline:
        if getattr(action, "label", "") == "":
            continue
        for label in takes(action):
            if label in used:
                raise ScenarioError(
                    f"{action.path}.label",
                    f'duplicate snapshot label "{label}" (also at {used[label]})',
                )
            used[label] = action.path
    counters: dict[str, int] = {}
    out: list[AnyAction] = []
    for action in timeline:
        if (
            isinstance(action, Scan | Snapshot | UnmergeAll)
            and action.label == ""
            and takes(_with_label(action, "-"))
        ):
            while True:
                counters[action.op] = counters.get(action.op, 0) + 1
                candidate = _with_label(action, f"{action.op}-{counters[action.op]}")
                labels = takes(candidate)
                if not any(label in used for label in labels):
                    break
            for label in labels:
                used[label] = action.path
            out.append(candidate)
        else:
            out.append(action)
    return out


def _with_label(action: Scan | Snapshot | UnmergeAll, label: str) -> Scan | Snapshot | UnmergeAll:
    """Return a copy of ``action`` with ``label`` (keeping its path)."""
    return replace(action, label=label)


_TOP_KEYS: Final = (
    "name",
    "description",
    "seed",
    "kernel",
    "machine",
    "tunables",
    "processes",
    "timeline",
)


def parse_scenario(data: Mapping[str, Any], name: str) -> Scenario:
    """Validate a decoded scenario document and return the ``Scenario``.

    ``name`` is used when the document has no ``name`` (``load_scenario`` passes the file's stem).
    Raises ``ScenarioError`` on the first problem.
    """
    o = _Obj(dict(data) if isinstance(data, Mapping) else data, "", {}, _TOP_KEYS)
    if o.has("name"):
        name = _text(o.get("name"), "name")
    if not name.strip():
        raise ScenarioError("name", "expected a non-empty name")
    seed = _int(o.get("seed"), "seed") if o.has("seed") else None
    kernel: str | None = None
    if o.has("kernel"):
        raw_kernel = o.get("kernel")
        if raw_kernel not in KERNELS:
            raise ScenarioError(
                "kernel",
                f"unknown kernel {_show(raw_kernel)} (expected one of {', '.join(KERNELS)})",
            )
        kernel = raw_kernel

    m = _Obj(o.get("machine", {}), "machine", {}, ("ram_pages", "swap_pages", "hz", "cpus"))
    machine = Machine(
        ram_pages=_int(m.get("ram_pages"), "machine.ram_pages", minimum=1)
        if m.has("ram_pages")
        else None,
        swap_pages=_int(m.get("swap_pages", 0), "machine.swap_pages", minimum=0),
        hz=_int(m.get("hz", 250), "machine.hz", minimum=1),
        cpus=_int(m.get("cpus", 2), "machine.cpus", minimum=1),
    )
    tunables = _tunables(o.get("tunables", {}), "tunables", allow_empty=True)

    raw_processes = o.get("processes", [])
    if not isinstance(raw_processes, list):
        raise ScenarioError(
            "processes", f"expected a list of processes, got {_show(raw_processes)}"
        )
    processes: list[Process] = []
    for k, item in enumerate(raw_processes):
        process = _parse_process(item, f"processes[{k}]")
        if any(p.name == process.name for p in processes):
            raise ScenarioError(f"processes[{k}].name", f'duplicate process name "{process.name}"')
        processes.append(process)

    timeline: list[AnyAction] = []
    _parse_actions(o.get("timeline", []), "timeline", {}, timeline)
    _check_names(tuple(processes), timeline)
    timeline = _assign_labels(timeline)
    return Scenario(
        name=name,
        description=_text(o.get("description", ""), "description"),
        seed=seed,
        kernel=kernel,
        machine=machine,
        tunables=tunables,
        processes=tuple(processes),
        timeline=tuple(timeline),
    )


def _decode_json(text: str, file: str) -> object:
    """Decode JSON, refusing NaN/Infinity and duplicate keys."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ScenarioError("", f'invalid JSON: duplicate key "{key}"', file=file)
            out[key] = value
        return out

    def constant(word: str) -> object:
        raise ScenarioError("", f"invalid JSON: {word} is not allowed", file=file)

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ScenarioError(
            "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=file
        ) from None


def _decode_toml(text: str, file: str) -> object:
    """Decode TOML (tomllib's message carries the line and column)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("", f"invalid TOML: {exc}", file=file) from None


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read a scenario file (``.json``, ``.toml``, or anything else: JSON, then TOML) and parse it.

    The scenario's name defaults to the file's stem. Every error is a ``ScenarioError`` whose
    message starts with the file name.
    """
    p = Path(path)
    file = str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ScenarioError("", "no such file", file=file) from None
    except OSError as exc:
        raise ScenarioError("", f"cannot read: {exc.strerror or exc}", file=file) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScenarioError("", f"not UTF-8 (byte {exc.start})", file=file) from None

    suffix = p.suffix.lower()
    data: object
    if suffix == ".json":
        data = _decode_json(text, file)
    elif suffix == ".toml":
        data = _decode_toml(text, file)
    else:
        try:
            data = _decode_json(text, file)
        except ScenarioError as json_error:
            try:
                data = _decode_toml(text, file)
            except ScenarioError as toml_error:
                raise ScenarioError(
                    "",
                    f"neither JSON ({json_error.reason}) nor TOML ({toml_error.reason})",
                    file=file,
                ) from None
    if not isinstance(data, dict):
        raise ScenarioError("", f"expected a table at the top level, got {_show(data)}", file=file)
    try:
        return parse_scenario(data, p.stem)
    except ScenarioError as exc:
        raise ScenarioError(exc.path, exc.reason, file=file) from None
