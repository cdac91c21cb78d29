"""What the model runner and the real runner share: timeline action -> handler, expectations.

Both runners (``ksmsim.workload.runner.ModelRunner`` and ``ksmsim.real.runner.RealRunner``)
execute the same timeline with a handler method per action class, named in ``HANDLER_NAMES``.
``bind_handlers`` builds a runner's table from it and fails loudly when an action class has
neither a handler nor an explicit refusal, so that a new action cannot be forgotten by either
runner.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

from ksmsim.workload import scenario as sc

__all__ = [
    "HANDLER_NAMES",
    "ActionHandlers",
    "bind_handlers",
    "expectations",
    "initial_tunables",
]

HANDLER_NAMES: Final[Mapping[type[sc.Action], str]] = MappingProxyType(
    {
        cls: "_snapshot_action" if cls is sc.Snapshot else f"_{cls.op}"
        for cls in sc.ACTION_TYPES.values()
    }
)
"""Action class -> the name of the runner method that executes it (``_<op>``; ``snapshot`` is
``_snapshot_action`` because ``snapshot`` is the runners' public method taking a snapshot)."""

Handler = Callable[[Any], None]


def bind_handlers(
    runner: object, refused: Collection[type[sc.Action]] = ()
) -> dict[type[sc.Action], Handler]:
    """Return ``runner``'s table of action class -> bound handler, ``refused`` classes left out.

    Raises TypeError, naming the runner, the action and the missing method, when an action class
    has no handler and is not refused (a programming error, caught by the first run).
    """
    handlers: dict[type[sc.Action], Handler] = {}
    for cls, name in HANDLER_NAMES.items():
        if cls in refused:
            continue
        handler = getattr(runner, name, None)
        if handler is None:
            raise TypeError(
                f"{type(runner).__name__} has no handler {name} for the {cls.op!r} action "
                "and does not refuse it"
            )
        handlers[cls] = handler
    return handlers


class ActionHandlers:
    """Base of the runners: the handlers whose semantics do not depend on where the run is."""

    def snapshot(self, label: str, expect: tuple[sc.Expectation, ...] = ()) -> dict[str, Any]:
        """Record the counters under ``label`` and check expectations against them."""
        raise NotImplementedError

    def _snapshot_action(self, a: sc.Snapshot) -> None:
        """Record the counters."""
        self.snapshot(a.label, a.expect)

    def _comment(self, a: sc.Comment) -> None:
        """Do nothing: a comment only annotates the timeline."""


def expectations(action: sc.Action) -> tuple[sc.Expectation, ...]:
    """Return an action's ``expect`` then its ``expect_each`` expectations."""
    # Only some action classes carry expectations (scan, snapshot, unmerge_all).
    return (*getattr(action, "expect", ()), *getattr(action, "expect_each", ()))


def initial_tunables(
    names: Iterable[str],
    overrides: Mapping[str, int],
    fallback: Mapping[str, int] = MappingProxyType({}),
) -> dict[str, int]:
    """Return the tunables a run starts with, by name in sorted order.

    Each takes the scenario's value (``overrides``), else the format's default, else the
    runner's ``fallback``; names with none of them are left out (they keep the kernel's value).
    """
    out: dict[str, int] = {}
    for name in sorted(names):
        if name in overrides:
            out[name] = overrides[name]
        elif name in sc.DEFAULT_TUNABLES:
            out[name] = sc.DEFAULT_TUNABLES[name]
        elif name in fallback:
            out[name] = fallback[name]
    return out
