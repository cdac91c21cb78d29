"""The task bodies under the scheduler: kswapd's reclaim interleaved with ksmd and a user task
(tests/scenarios/races/reclaim_ksm_page.toml)."""

from __future__ import annotations

import time
from pathlib import Path

from ksmsim.kernel.mm import is_swap_pte, pte_pfn, pte_present
from ksmsim.kernel.page import PageKsm
from ksmsim.sched.explorer import Explorer
from ksmsim.sched.race import build_world, load_race, race_profile
from ksmsim.sched.scheduler import Decision, Outcome
from ksmsim.sched.tasks import World

RACE = Path(__file__).resolve().parents[1] / "scenarios" / "races" / "reclaim_ksm_page.toml"


class Plan:
    """Run each (task, steps) in turn (None: until the task cannot run), then the task that
    ran last while it can, else the first runnable one."""

    def __init__(self, plan: list[tuple[str, int | None]]) -> None:
        self.plan = list(plan)
        self.done = 0

    def pick(self, decision: Decision) -> str:
        while self.plan:
            task, steps = self.plan[0]
            if task in decision.enabled and (steps is None or self.done < steps):
                self.done += 1
                return task
            self.plan.pop(0)
            self.done = 0
        if decision.previous_enabled and decision.previous is not None:
            return decision.previous
        return decision.enabled[0]


def run_plan(
    plan: list[tuple[str, int | None]], mutations: frozenset[str]
) -> tuple[World, Outcome]:
    race = load_race(RACE)
    world = build_world(race, race_profile(race), mutations)
    outcome = world.sched.run(Plan(plan), on_step=Explorer._check)
    return world, outcome


def test_kswapd_is_the_only_reclaimer_of_a_race_with_a_kswapd_task() -> None:
    race = load_race(RACE)
    world = build_world(race, race_profile(race), frozenset())
    assert not world.host.kswapd_between_operations
    assert world.host.machine.zone.nr_free == world.host.machine.watermarks[1]
    # The user's first fault takes free memory below the low watermark and wakes kswapd.
    world, outcome = run_plan([("user", 2), ("ksmd", None)], frozenset())
    assert outcome.status == "ok"
    kswapd = [s for s in world.sched.trace if s.task == "kswapd"]
    assert kswapd[0].end == "shrink_active_list:lru_lock"
    assert {s.task for s in world.sched.trace if s.end.startswith("shrink_")} == {"kswapd"}


def test_ksmd_sleeps_on_the_page_lock_reclaim_holds_and_its_reference_saves_the_page() -> None:
    # kswapd stops with the KSM page in the swap cache, unmapped and locked (trylock_page);
    # ksmd, dropping a's stale rmap_item, takes the page through get_ksm_page() and sleeps in
    # lock_page(); the freeze in __remove_mapping() then fails and the page survives.
    world, outcome = run_plan([("user", 2), ("kswapd", 5), ("ksmd", None)], frozenset())
    assert outcome.status == "ok", outcome
    trace = [(s.task, s.end) for s in world.sched.trace]
    stop = trace.index(("kswapd", "shrink_page_list:unmapped"))
    assert ("ksmd", "lock_page") in trace[stop + 1 :]
    machine = world.host.machine
    assert machine.vmstat["ksm_pages_unmapped"] == 1 and machine.vmstat["pswpout"] == 1
    ksm = [p for p in machine.zone.allocated_pages() if PageKsm(p)]
    assert len(ksm) == 1 and ksm[0].flags & 1 == 0  # alive, unlocked
    a = world.host.proc("a").mm
    pte = a.pte_get(world.host.region("a", "buf").page_address(0))
    assert is_swap_pte(pte) or (pte_present(pte) and pte_pfn(pte) == ksm[0].pfn)


def test_without_the_keyhole_recheck_ksmd_takes_a_frame_reclaim_freed_and_c_reused() -> None:
    # ksmd stops inside get_ksm_page() after its first look at page->mapping; kswapd unmaps,
    # swaps and frees the KSM page; c's second fault gets the frame back with the same contents.
    plan: list[tuple[str, int | None]] = [("user", 2), ("ksmd", 11), ("kswapd", None)]
    world, outcome = run_plan([*plan, ("user", None)], frozenset({"no-keyhole-recheck"}))
    assert outcome.status == "crash" and outcome.task == "ksmd", outcome
    assert "isinstance(node, StableNode)" in outcome.where
    trace = [(s.task, s.end) for s in world.sched.trace]
    assert trace[12] == ("ksmd", "get_ksm_page:before_get_page_unless_zero")
    assert ("kswapd", "shrink_page_list:unmapped") in trace[13:]
    # With the re-check, the same schedule is harmless.
    world, outcome = run_plan([*plan, ("user", None)], frozenset())
    assert outcome.status == "ok", outcome


def test_keyhole_survives_every_schedule_with_one_preemption() -> None:
    race = load_race(RACE)
    start = time.monotonic()
    report = Explorer(race, race_profile(race)).explore("exhaustive", preemptions=1, seconds=60)
    assert report.finding is None, report.finding.outcome
    assert report.complete and report.outcomes.get("ok", 0) >= 1
    assert report.states > 1000 and report.pruned > 0
    assert time.monotonic() - start < 60
