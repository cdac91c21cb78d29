"""The conditions of the exact shortcuts matter, and the shortcuts do run.

A hand-made scenario breaks the unstable-tree shortcut's condition in the middle of a pass: a
forked child shares its parent's pages, ksmd inserts the parent's pages into the unstable tree,
the parent then writes (copy on write: its ptes map new pages, the old ones stay mapped in the
child), and the rest of the pass walks the tree. With the condition checked the result equals
the exact path's; with it ignored (a deliberately broken copy) it does not, which shows the
scenario exercises the condition. Other tests check that each shortcut is taken at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from ksmsim.kernel.ksm import Ksm
from ksmsim.kernel.ksm_shortcuts import Shortcuts, using_shortcuts
from ksmsim.workload.host import Host

from .state import first_difference, machine_state


def cow_in_mid_pass(shortcuts: Shortcuts) -> Host:
    """Run the scenario of the module docstring and return the host."""
    with using_shortcuts(shortcuts):
        host = Host("v6.18", ram_pages=4096)
    host.set_tunable("smart_scan", 0)
    host.spawn("a")
    host.mmap("a", "r", 64)
    host.fill("a", "r", "unique")
    host.fork("a", "b")
    host.scan(2)
    host.set_tunable("pages_to_scan", 40)  # part of the next pass: the parent's pages
    host.sysfs.write("run", 1)
    host.ksmd.batch()
    host.sysfs.write("run", 0)
    for i in range(0, 40, 3):
        host.write("a", "r", 0xEE, offset=0, start=i, count=1)
    host.set_tunable("pages_to_scan", 1000)
    host.scan(1)
    return host


def test_unstable_skip_condition_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = machine_state(cow_in_mid_pass(Shortcuts.all_off()).machine)
    fast = machine_state(cow_in_mid_pass(Shortcuts.all_on()).machine)
    assert first_difference(fast, exact) is None
    original = Ksm.unstable_tree_search_insert

    def ignoring_the_condition(self: Ksm, rmap_item: Any, page: Any) -> Any:
        self._unstable_generation = self.machine.zone.map_generation
        return original(self, rmap_item, page)

    monkeypatch.setattr(Ksm, "unstable_tree_search_insert", ignoring_the_condition)
    broken = machine_state(cow_in_mid_pass(Shortcuts.all_on()).machine)
    assert first_difference(broken, exact) is not None


def _count_calls(ksm: Ksm, name: str) -> list[int]:
    calls = [0]
    fn = getattr(ksm, name)

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return fn(*args)

    setattr(ksm, name, counted)
    return calls


def test_every_shortcut_runs() -> None:
    """A scan with duplicates, chains and unique pages takes every tree shortcut."""
    with using_shortcuts(Shortcuts.all_on()):
        host = Host("v6.18", ram_pages=8192)
    host.set_tunable("max_page_sharing", 4)
    ksm = host.ksm
    counts = {
        name: _count_calls(ksm, name)
        for name in ("_stable_skip", "_unstable_skip", "_dup_skip", "_rb_insert_color")
    }
    for p in ("a", "b", "c"):
        host.spawn(p)
        host.mmap(p, "dup", 64)
        host.fill(p, "dup", "repeat:8")
        host.mmap(p, "own", 64)
        host.fill(p, "own", "unique")
    host.scan(4)
    assert all(c[0] > 0 for c in counts.values()), {k: c[0] for k, c in counts.items()}
    assert host.counters()["stable_node_chains"] > 0
