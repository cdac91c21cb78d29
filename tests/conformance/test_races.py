"""The races the interleaving explorer must find, and must not find where the kernel is right.

Each race file is under tests/scenarios/races/. "Not found" is always an exhaustive search that
covered every schedule within its preemption bound (``report.complete``), never a budget that
ran out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ksmsim.sched.explorer import Explorer, Report
from ksmsim.sched.race import load_race, race_profile
from ksmsim.sched.trace import format_trace

RACES = Path(__file__).resolve().parents[1] / "scenarios" / "races"


def explore(
    race: str,
    kernel: str | None = None,
    mutations: frozenset[str] = frozenset(),
    mode: str = "exhaustive",
    preemptions: int = 2,
    schedules: int | None = None,
    seed: int = 0,
) -> Report:
    r = load_race(RACES / f"{race}.toml")
    explorer = Explorer(r, race_profile(r, kernel), mutations)
    return explorer.explore(
        mode, preemptions=preemptions, schedules=schedules, seconds=60, seed=seed
    )


def assert_clean(report: Report) -> None:
    assert report.finding is None, report.finding.outcome
    assert report.complete, "the bounded search did not finish"
    assert report.outcomes.get("ok", 0) >= 1


# (a) The keyhole: get_ksm_page()'s re-check of page->mapping after get_page_unless_zero().


def test_keyhole_without_its_recheck_merges_into_a_page_that_is_not_the_nodes() -> None:
    report = explore("keyhole_recheck", mutations=frozenset({"no-keyhole-recheck"}))
    assert report.finding is not None
    o = report.finding.outcome
    m = report.finding.minimal
    assert o.status == "crash" and o.task == "ksmd"
    # stable_tree_append() of the scanned item onto page_stable_node(kpage): kpage has none.
    assert o.where.startswith("cmp_and_merge_page (")
    assert "isinstance(node, StableNode)" in o.where
    # c's pte now maps process a's ordinary anonymous page.
    assert o.aftermath.startswith("c: page at ") and "belongs to another anon_vma" in o.aftermath
    # One preemption: ksmd stops inside get_ksm_page(), after its first look at page->mapping,
    # and the user frees the KSM page (two COW writes) and reuses its frame (a fill).
    assert m.preemptions == 1
    points = [(s.task, s.end) for s in m.trace]
    stop = points.index(("ksmd", "get_ksm_page:before_get_page_unless_zero"))
    assert [t for t, _ in points[stop + 1 : stop + 5]] == ["user"] * 4
    assert [s.doing for s in m.trace[stop + 1 : stop + 5]] == [
        "write a.buf[0]",
        "write b.buf[0]",
        "fill a.buf",
        "fill a.buf",
    ]
    assert all(t == "ksmd" for t, _ in points[stop + 5 :])


def test_keyhole_with_its_recheck_survives_every_schedule() -> None:
    report = explore("keyhole_recheck")
    assert_clean(report)
    assert report.pruned > 0  # state hashing cut the search
    assert report.states > 100


# (b) LTP ksm05, CVE-2011-2183: __ksm_exit empties the list under scan_get_next_rmap_item.


@pytest.mark.parametrize("kernel", ["keyhole", "pinned", "v2.6.33"])
def test_ksm05_null_dereference_in_2009_code(kernel: str) -> None:
    report = explore("ksm05", kernel)
    assert report.finding is not None
    o = report.finding.outcome
    m = report.finding.minimal
    assert (o.status, o.task) == ("crash", "ksmd")
    assert "NULL pointer dereference: slot->mm of ksm_mm_head" in o.message
    assert o.where.startswith("scan_get_next_rmap_item (")
    assert [(s.task, s.end) for s in m.trace] == [
        ("ksmd", "ksm_do_scan:cond_resched"),
        ("ksmd", "scan_get_next_rmap_item:ksm_mmlist_lock"),
        ("child", "done"),
        ("ksmd", "crashed"),
    ]
    assert m.preemptions == 1


def test_ksm05_fixed_in_v6_18() -> None:
    assert_clean(explore("ksm05", "v6.18"))


# (c) Other races.


@pytest.mark.parametrize("kernel", ["keyhole", "pinned", "v2.6.33"])
def test_fork_during_run2_leaves_ksm_pages_in_2009_code(kernel: str) -> None:
    report = explore("fork_during_unmerge", kernel)
    assert report.finding is not None
    o = report.finding.outcome
    assert (o.status, o.task) == ("assertion", "writer")
    assert "run=2 completed but c still maps KSM page" in o.message
    trace = report.finding.minimal.trace
    fork = next(i for i, s in enumerate(trace) if s.task == "user")
    # The fork happens while the writer is inside run=2, after it started unmerging.
    assert 0 < fork < len(trace) - 1
    assert all(s.task == "writer" for i, s in enumerate(trace) if i != fork)


def test_fork_during_run2_is_fixed_by_tail_insertion_in_v6_18() -> None:
    assert_clean(explore("fork_during_unmerge", "v6.18"))


def test_migration_under_ksmd_needs_the_kpfn_recheck() -> None:
    report = explore("migrate_kpfn", mutations=frozenset({"no-kpfn-recheck"}), preemptions=1)
    assert report.finding is not None
    o = report.finding.outcome
    assert o.status == "invariant"
    assert "has no node in the stable tree" in o.message
    ends = [s.end for s in report.finding.minimal.trace]
    assert "migrate_page:unmapped" in ends and "lock_page" in ends
    assert_clean(explore("migrate_kpfn", preemptions=1))


# Every mode finds (a), and what it finds replays.


@pytest.mark.parametrize("mode", ["random", "pct"])
def test_sampling_modes_find_the_keyhole_bug(mode: str) -> None:
    report = explore(
        "keyhole_recheck",
        mutations=frozenset({"no-keyhole-recheck"}),
        mode=mode,
        schedules=2000,
        seed=3,
    )
    assert report.finding is not None
    assert report.finding.minimal.preemptions == 1


def test_a_finding_replays_exactly() -> None:
    r = load_race(RACES / "ksm05.toml")
    explorer = Explorer(r, race_profile(r))
    report = explorer.explore("random", schedules=500, seed=3)
    assert report.finding is not None
    m = report.finding.minimal
    again = explorer.replay(m.schedule)
    assert again.outcome == m.outcome
    assert again.trace == m.trace
    assert format_trace(again.trace, again.outcome) == format_trace(m.trace, m.outcome)
