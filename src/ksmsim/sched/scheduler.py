"""A deterministic scheduler: kernel activities run as tasks that switch only at preemption points.

Each task is any callable run in its own greenlet. The kernel paths call ``machine.preempt(point)``
where the kernel could be preempted or race, and ``machine.wait(what, ready)`` where it sleeps
(a page lock, a migration entry); the scheduler installs both hooks, so a task runs ordinary
kernel code until it reaches one, then control returns here and a ``Strategy`` picks the task that
runs next. Nothing else switches, so a run is a pure function of its sequence of choices: the
*schedule*, which can be recorded, saved, replayed and printed as a trace.

Sleeping is modelled by predicates: a task that waits is runnable again once its ``ready()``
holds, and since no other task runs between that check and the waiter's next instruction, locks
built on it (``primitives.py``) are exact.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import greenlet

from ksmsim.sched.primitives import KernelLocks

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine
    from ksmsim.kernel.mm import MmStruct

NEW: Final = "new"
READY: Final = "ready"
BLOCKED: Final = "blocked"
DONE: Final = "done"
CRASHED: Final = "crashed"

RCU_READ_POINTS: Final = frozenset({"get_ksm_page:before_get_page_unless_zero"})
"""Preemption points that sit inside an RCU read-side section (get_ksm_page() takes
rcu_read_lock() before testing page->mapping and drops it once the reference is checked)."""


class TaskAssertion(AssertionError):
    """A task's own check of what the kernel promised failed (e.g. run=2 left KSM pages)."""


@dataclass(eq=False)
class Task:
    """One kernel activity: ``fn`` runs in its own greenlet until it returns.

    A daemon (ksmd, kswapd) may be left sleeping when every other task has finished: that ends
    the run normally, where a non-daemon left sleeping is a deadlock.
    """

    name: str
    fn: Callable[[], None]
    kind: str = "task"
    daemon: bool = False
    state: str = NEW
    point: str = "start"
    """The preemption point (or wait) the task is stopped at."""
    waiting: tuple[str, Callable[[], bool]] | None = None
    steps: int = 0
    doing: str = ""
    """The operation in progress, for traces (e.g. ``write a.buf[0]``)."""
    current_mm: MmStruct | None = None
    """The mm whose page tables the task's faults touch (a user task's process)."""
    error: BaseException | None = None
    where: str = ""
    """For a crash: the innermost frame of the exception, ``function (file:line): source``."""
    notes: list[str] = field(default_factory=list)
    glet: Any = None

    @property
    def alive(self) -> bool:
        """Tell whether the task has not finished (or crashed)."""
        return self.state not in (DONE, CRASHED)

    def enabled(self) -> bool:
        """Tell whether the scheduler may run the task now."""
        if not self.alive:
            return False
        return self.waiting is None or self.waiting[1]()


@dataclass(frozen=True, slots=True)
class Decision:
    """A point where the scheduler chooses the next task."""

    index: int
    enabled: tuple[str, ...]
    previous: str | None
    """The task that ran last (None at the start)."""
    previous_enabled: bool
    preemptions: int


@dataclass(frozen=True, slots=True)
class Step:
    """What one task did between two decisions: it ran from ``start`` to ``end``."""

    index: int
    task: str
    start: str
    end: str
    doing: str


class Strategy(Protocol):
    """Picks the task that runs at each decision."""

    def pick(self, decision: Decision) -> str:
        """Return the name of one of ``decision.enabled``."""
        ...


@dataclass(slots=True)
class Outcome:
    """How a run ended: ``ok``, or a finding (``crash``, ``assertion``, ``invariant``,
    ``deadlock``), or cut short (``pruned`` by the explorer, ``step_limit``)."""

    status: str
    message: str = ""
    task: str = ""
    where: str = ""
    aftermath: str = ""
    """For a crash: the first invariant the state left behind violates (the crashed task's
    references no longer count as held)."""

    @property
    def is_finding(self) -> bool:
        """Tell whether the run found a bug."""
        return self.status in ("crash", "assertion", "invariant", "deadlock")

    def signature(self) -> str:
        """Return what identifies the bug across schedules (for shrinking)."""
        if self.status in ("crash", "assertion"):
            return f"{self.status}:{self.task}:{self.where.split(' (')[0]}"
        if self.status == "invariant":
            return "invariant:" + "".join("#" if c.isdigit() else c for c in self.message)
        return self.status


StepHook = Callable[["Scheduler"], Outcome | None]
DecisionHook = Callable[["Scheduler", Decision], bool]


class SchedulerError(RuntimeError):
    """The scheduler was misused (e.g. a replayed schedule names a task that cannot run)."""


class Scheduler:
    """Runs a machine's tasks one at a time, switching only at preemption points and waits."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.tasks: list[Task] = []
        self.locks = KernelLocks(self)
        self.current: Task | None = None
        self.decisions: list[str] = []
        self.trace: list[Step] = []
        self.preemptions = 0
        self._main: Any = None
        self._aborting = False

    # -- building ------------------------------------------------------------------------------
    def spawn(
        self, name: str, fn: Callable[[], None], *, kind: str = "task", daemon: bool = False
    ) -> Task:
        """Add a task; it starts at the first decision that picks it."""
        if any(t.name == name for t in self.tasks):
            raise SchedulerError(f"two tasks named {name!r}")
        task = Task(name, fn, kind=kind, daemon=daemon)
        self.tasks.append(task)
        return task

    def task(self, name: str) -> Task:
        """Return the task called ``name``."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise SchedulerError(f"no task named {name!r}")

    # -- hooks called from task code ------------------------------------------------------------
    def running(self) -> Task:
        """Return the task whose code is running (the caller's)."""
        task = self.current
        if task is None:
            raise SchedulerError("kernel code called a scheduler hook outside any task")
        return task

    def preempt(self, point: str) -> None:
        """The ``machine.preempt`` hook: stop the running task at ``point`` and decide again.

        A user fault stops until no other task holds its mm's page-table lock; __ksm_exit's stop
        is its down_write/up_write of mmap_sem, so it waits for every holder; a stop inside
        get_ksm_page()'s RCU read-side section holds up grace periods until the task goes on.
        """
        task = self.running()
        mm = task.current_mm
        if mm is not None and point == "handle_mm_fault":
            ptl = self.locks.ptl(mm)
            if not ptl.free_for(task):
                task.waiting = (f"pte_lock:{ptl.name}", lambda: ptl.free_for(task))
        elif mm is not None and point == "__ksm_exit:mmap_sem_write":
            # down_write(&mm->mmap_sem); up_write(): wait until ksmd has let go of the mm.
            sem = self.locks.mmap_sem(mm)
            if not sem.write_free_for(task):
                task.waiting = (f"down_write:{sem.name}", lambda: sem.write_free_for(task))
        rcu = point in RCU_READ_POINTS
        if rcu:
            self.locks.rcu.read_lock(task)
        self._switch_out(task, point)
        if rcu:
            self.locks.rcu.read_unlock(task)

    def wait(self, what: str, ready: Callable[[], bool]) -> None:
        """The ``machine.wait`` hook: sleep until ``ready()`` holds (at once if it does)."""
        if ready():
            return
        task = self.running()
        task.waiting = (what, ready)
        self._switch_out(task, what)

    def yield_point(self, point: str) -> None:
        """A preemption point of a task body itself (between two operations)."""
        self._switch_out(self.running(), point)

    def _switch_out(self, task: Task, point: str) -> None:
        if self._aborting:
            raise greenlet.GreenletExit
        task.point = point
        task.state = BLOCKED if task.waiting is not None else READY
        self._main.switch()
        task.waiting = None
        task.state = READY
        if self._aborting:
            raise greenlet.GreenletExit

    # -- running --------------------------------------------------------------------------------
    def run(
        self,
        strategy: Strategy,
        *,
        on_step: StepHook | None = None,
        on_decision: DecisionHook | None = None,
        max_steps: int = 20000,
    ) -> Outcome:
        """Run the tasks to the end (or a finding) with ``strategy`` choosing at each decision.

        ``on_decision`` may stop the run (returning False: the explorer has seen this state);
        ``on_step`` runs after every step and may return a finding (the invariant checker).
        """
        machine = self.machine
        if machine.preempt is not None or machine.wait is not None:
            raise SchedulerError("another scheduler is installed on this machine")
        self._main = greenlet.getcurrent()
        machine.preempt = self.preempt
        machine.wait = self.wait
        self.locks.install()
        previous: Task | None = None
        try:
            while True:
                enabled = [t for t in self.tasks if t.enabled()]
                if not enabled:
                    stuck = [t for t in self.tasks if t.alive and not t.daemon]
                    if stuck:
                        waits = ", ".join(f"{t.name} at {t.point}" for t in stuck)
                        return Outcome("deadlock", f"no task can run: {waits}")
                    return Outcome("ok")
                prev_enabled = previous is not None and previous in enabled
                decision = Decision(
                    len(self.decisions),
                    tuple(t.name for t in enabled),
                    previous.name if previous is not None else None,
                    prev_enabled,
                    self.preemptions,
                )
                if on_decision is not None and not on_decision(self, decision):
                    return Outcome("pruned")
                name = strategy.pick(decision)
                task = next((t for t in enabled if t.name == name), None)
                if task is None:
                    raise SchedulerError(
                        f"decision {decision.index}: task {name!r} cannot run "
                        f"(runnable: {', '.join(decision.enabled)})"
                    )
                if prev_enabled and task is not previous:
                    self.preemptions += 1
                self.decisions.append(name)
                start = task.point
                self._run_step(task)
                self.trace.append(Step(len(self.trace), task.name, start, task.point, task.doing))
                if task.state == CRASHED:
                    assert task.error is not None
                    status = "assertion" if isinstance(task.error, TaskAssertion) else "crash"
                    detail = str(task.error) or task.where.split(": ", 1)[-1]
                    message = f"{type(task.error).__name__}: {detail}"
                    after = on_step(self) if on_step is not None else None
                    aftermath = after.message if after is not None else ""
                    return Outcome(status, message, task.name, task.where, aftermath)
                if on_step is not None:
                    finding = on_step(self)
                    if finding is not None:
                        return finding
                if len(self.trace) >= max_steps:
                    return Outcome("step_limit", f"stopped after {max_steps} steps")
                previous = task
        finally:
            self._abort()
            machine.preempt = None
            machine.wait = None
            self.locks.uninstall()
            self.current = None

    def _run_step(self, task: Task) -> None:
        if task.glet is None:
            task.glet = greenlet.greenlet(self._body(task), parent=self._main)
        self.current = task
        task.steps += 1
        task.glet.switch()
        self.current = None

    @staticmethod
    def _body(task: Task) -> Callable[[], None]:
        def body() -> None:
            try:
                task.fn()
            except greenlet.GreenletExit:
                raise
            except BaseException as exc:
                task.state = CRASHED
                task.point = "crashed"
                task.error = exc
                task.where = _where(exc)
                return
            task.state = DONE
            task.point = "done"

        return body

    def _abort(self) -> None:
        """Unwind every task still suspended, so nothing of this run survives it."""
        self._aborting = True
        for task in self.tasks:
            g = task.glet
            if g is not None and not g.dead:
                self.current = task
                with contextlib.suppress(greenlet.GreenletExit):
                    g.throw(greenlet.GreenletExit)
        self.current = None

    def started(self) -> list[Task]:
        """Return the tasks whose greenlets are suspended mid-way (started, not finished)."""
        return [t for t in self.tasks if t.glet is not None and not t.glet.dead and t.alive]


def _where(exc: BaseException) -> str:
    """Describe the innermost frame an exception came from: ``function (file:line): source``."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    short = f.filename.rsplit("/src/", 1)[-1]
    return f"{f.name} ({short}:{f.lineno}): {(f.line or '').strip()}"
