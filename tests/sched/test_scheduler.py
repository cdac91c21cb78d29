"""The scheduler, its strategies and the primitives, on small hand-made tasks."""

from __future__ import annotations

import pytest

from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.page import PG_locked, trylock_page, unlock_page
from ksmsim.kernel.profile import get_profile
from ksmsim.sched.scheduler import Decision, Outcome, Scheduler, SchedulerError
from ksmsim.sched.strategies import NonPreemptive, Pct, RandomWalk, Replay


def machine() -> Machine:
    return Machine(get_profile("keyhole"), MachineConfig(ram_pages=16))


def counting_tasks(sched: Scheduler, log: list[str], n: int = 3) -> None:
    """Two tasks that log each step and stop at a preemption point between steps."""
    for name in ("A", "B"):

        def body(name: str = name) -> None:
            for i in range(n):
                log.append(f"{name}{i}")
                sched.machine.preempt(f"{name}:{i}")  # type: ignore[misc]

        sched.spawn(name, body)


def run(strategy: object, n: int = 3) -> tuple[list[str], list[str], Outcome]:
    sched = Scheduler(machine())
    log: list[str] = []
    counting_tasks(sched, log, n)
    outcome = sched.run(strategy)  # type: ignore[arg-type]
    return log, sched.decisions, outcome


def test_non_preemptive_runs_each_task_to_the_end() -> None:
    log, decisions, outcome = run(NonPreemptive())
    assert outcome.status == "ok"
    assert log == ["A0", "A1", "A2", "B0", "B1", "B2"]
    assert decisions == ["A"] * 4 + ["B"] * 4


def test_a_seed_gives_the_same_run_and_a_replay_reproduces_it() -> None:
    first = run(RandomWalk(7))
    assert run(RandomWalk(7)) == first
    log, decisions, _ = first
    assert run(Replay(decisions))[:2] == (log, decisions)
    assert any(run(RandomWalk(seed))[0] != log for seed in range(8))


def test_replay_refuses_a_task_that_cannot_run() -> None:
    with pytest.raises(SchedulerError, match="does not replay"):
        run(Replay(["A", "A", "A", "A", "A"]))


def test_preemptions_count_switches_away_from_a_runnable_task() -> None:
    sched = Scheduler(machine())
    counting_tasks(sched, [])
    sched.run(Replay(["A", "B", "A", "A", "A", "B", "B", "B"]))
    assert sched.preemptions == 2  # A -> B while A could go on, and back
    assert sched.trace[1].task == "B" and sched.trace[1].end == "B:0"


def test_pct_is_deterministic_and_follows_priorities() -> None:
    log1 = run(Pct(3, ["A", "B"], depth=2, steps=8))[0]
    assert run(Pct(3, ["A", "B"], depth=2, steps=8))[0] == log1
    d = Decision(0, ("A", "B"), None, False, 0)
    p = Pct(1, ["A", "B"], depth=1, steps=4)
    assert p.pick(d) == max(("A", "B"), key=p.priority.__getitem__)


def test_a_crash_in_a_task_is_a_finding_with_its_place() -> None:
    sched = Scheduler(machine())

    def body() -> None:
        sched.machine.preempt("p")  # type: ignore[misc]
        raise KeyError("boom")

    sched.spawn("T", body)
    outcome = sched.run(NonPreemptive())
    assert outcome.status == "crash" and outcome.task == "T"
    assert outcome.message == "KeyError: 'boom'"
    assert outcome.where.startswith("body (")


def test_mutex_excludes_and_lock_order_inversion_deadlocks() -> None:
    def build(inverted: bool) -> Scheduler:
        sched = Scheduler(machine())
        locks = sched.locks
        m1, m2 = locks.ksm_thread_mutex, locks.ptl(sched.machine.new_process("p"))
        inside: list[str] = []

        def task(name: str, first: object, second: object) -> None:
            first.lock()  # type: ignore[attr-defined]
            inside.append(name)
            assert inverted or len(inside) == 1, "two tasks inside the critical section"
            sched.yield_point(f"{name}:held")
            second.lock()  # type: ignore[attr-defined]
            second.unlock()  # type: ignore[attr-defined]
            inside.remove(name)
            first.unlock()  # type: ignore[attr-defined]

        sched.spawn("A", lambda: task("A", m1, m2))
        sched.spawn("B", lambda: task("B", m2 if inverted else m1, m1 if inverted else m2))
        return sched

    # Same order: whatever the interleaving, no deadlock and never two inside.
    for seed in range(20):
        assert build(False).run(RandomWalk(seed)).status == "ok"
    outcome = build(True).run(Replay(["A", "B"]))
    assert outcome.status == "deadlock"
    assert "A at mutex_lock:ptl(p)" in outcome.message
    assert "B at mutex_lock:ksm_thread_mutex" in outcome.message


def test_rwsem_shares_readers_and_excludes_writers() -> None:
    sched = Scheduler(machine())
    sem = sched.locks.mmap_sem(sched.machine.new_process("p"))
    order: list[str] = []

    def reader(name: str) -> None:
        sem.down_read()
        order.append(f"{name}+")
        sched.yield_point("reading")
        order.append(f"{name}-")
        sem.up_read()

    def writer() -> None:
        sem.down_write()
        order.append("W")
        sem.up_write()

    sched.spawn("R1", lambda: reader("R1"))
    sched.spawn("R2", lambda: reader("R2"))
    sched.spawn("W", writer)
    outcome = sched.run(Replay(["R1", "R2", "W", "R1", "R2"]))
    assert outcome.status == "ok"
    # Both readers were inside together; the writer waited for both to leave.
    assert order == ["R1+", "R2+", "R1-", "R2-", "W"]
    assert sched.trace[2].end == "down_write:mmap_sem(p)"


def test_lock_page_sleeps_under_a_scheduler_and_asserts_without_one() -> None:
    m = machine()
    page = m.zone.alloc_page()
    assert page is not None
    sched = Scheduler(m)

    def holder() -> None:
        assert trylock_page(page)
        sched.yield_point("holding")
        unlock_page(page)

    def waiter() -> None:
        m.lock_page(page)
        unlock_page(page)

    sched.spawn("holder", holder)
    sched.spawn("waiter", waiter)
    outcome = sched.run(Replay(["holder", "waiter", "holder", "waiter"]))
    assert outcome.status == "ok"
    assert sched.trace[1].end == "lock_page"
    assert not page.flags & PG_locked
    assert m.preempt is None and m.wait is None
    page.flags |= PG_locked
    with pytest.raises(AssertionError, match="no other task"):
        m.lock_page(page)


def test_a_grace_period_waits_for_readers_inside_the_keyhole() -> None:
    sched = Scheduler(machine())
    done: list[str] = []

    def reader() -> None:
        # get_ksm_page() stops here inside rcu_read_lock().
        sched.machine.preempt("get_ksm_page:before_get_page_unless_zero")  # type: ignore[misc]
        done.append("reader")

    def updater() -> None:
        sched.locks.rcu.synchronize()
        done.append("grace period")

    sched.spawn("reader", reader)
    sched.spawn("updater", updater)
    outcome = sched.run(Replay(["reader", "updater"]))
    assert outcome.status == "ok"
    assert done == ["reader", "grace period"]
    assert sched.trace[1].end == "synchronize_rcu"
    # A grace period that starts before the reader enters does not wait for it.
    sched = Scheduler(machine())
    done.clear()
    sched.spawn("reader", reader)
    sched.spawn("updater", updater)
    sched.run(Replay(["updater", "reader", "reader"]))
    assert done == ["grace period", "reader"]


def test_kernel_lock_wrappers_exist_only_during_a_run() -> None:
    m = machine()
    assert m.ksm is not None
    sched = Scheduler(m)
    seen: list[bool] = []
    sched.spawn("T", lambda: seen.append("try_to_merge_one_page" in vars(m.ksm)))
    sched.run(NonPreemptive())
    assert seen == [True]
    assert "try_to_merge_one_page" not in vars(m.ksm)
