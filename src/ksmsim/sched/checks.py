"""The invariant checker for states where tasks are stopped in the middle of kernel operations.

``check_all`` (kernel/invariants.py) is written for quiescent points. Between two steps of a
race, a task may hold page references and page locks, may have cleared a pte it will set again
(write_protect_page), turned ptes into migration entries, or be tearing down an address space
whose process has already left the task list. ``check_interleaved`` accounts for exactly what
the suspended tasks' frames show (``state.in_flight``): it checks the references no pte, swap
cache or pin explains against the references the tasks can hold, then lets ``check_machine`` and
``check_ksm`` run unchanged on the state with those in-flight effects undone for the duration of
the check (and put back afterwards). So every invariant of the quiescent checker applies, the
in-flight ones included (a count the tasks cannot account for, a lock no task can release).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from ksmsim.kernel.invariants import InvariantError, _held_references, check_ksm, check_machine
from ksmsim.kernel.mm import mk_pte, pte_pfn, pte_present, pte_special
from ksmsim.kernel.page import (
    PAGE_MAPPING_ANON,
    PAGE_MAPPING_FLAGS,
    Page,
    PageKsm,
    PG_locked,
    PG_swapcache,
    page_stable_node,
)
from ksmsim.sched.state import InFlight, in_flight

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine
    from ksmsim.sched.scheduler import Scheduler


def check_interleaved(sched: Scheduler) -> None:
    """Check every invariant of the machine, tolerating what suspended tasks hold; raise
    InvariantError naming the first violation."""
    machine = sched.machine
    flight = in_flight(sched)
    undo: list[Callable[[], None]] = []
    try:
        _restore_in_flight_ptes(machine, flight, undo)
        _account_task_references(machine, flight, undo)
        check_machine(machine)
        if machine.ksm is not None:
            _hide_unkeyed_ksm_pages(machine, flight, undo)
            _relink_items(flight, undo)
            check_ksm(machine.ksm)
    finally:
        for fn in reversed(undo):
            fn()


def _restore_in_flight_ptes(
    machine: Machine, flight: InFlight, undo: list[Callable[[], None]]
) -> None:
    """Put back the ptes paused tasks took down (they will put them back themselves)."""
    for mm in flight.mms:
        machine.tasks[mm.pid] = mm
        undo.append(partial(machine.tasks.__delitem__, mm.pid))
    for mm, addr, pte in flight.cleared_ptes:
        mm.set_pte_at(addr, pte)
        undo.append(partial(mm.set_pte_at, addr, 0))
    for page, moved in flight.migrating:
        for vma, addr, writable in moved:
            mm = vma.vm_mm
            entry = mm.pte_get(addr)
            if pte_present(entry):
                continue  # already replaced: the migration went on past this pte
            mm.set_pte_at(addr, mk_pte(page.pfn, writable=writable))
            _map(machine, page, 1)
            undo.append(partial(mm.set_pte_at, addr, entry))
            undo.append(partial(_map, machine, page, -1))


def _account_task_references(
    machine: Machine, flight: InFlight, undo: list[Callable[[], None]]
) -> None:
    """Check each frame's count against ptes, swap cache, pins and the tasks' references;
    hide the tasks' references (and the page locks they hold) from the quiescent checker."""
    zone = machine.zone
    mapped: Counter[int] = Counter()
    for mm in machine.tasks.values():
        for table in mm.pgd.values():
            mapped.update(
                pte_pfn(pte) for pte in table if pte_present(pte) and not pte_special(pte)
            )
    pins = _held_references(machine)
    for page in zone.allocated_pages():
        pfn = page.pfn
        base = mapped[pfn] + (1 if page.flags & PG_swapcache else 0) + pins[pfn]
        extra = page.count - base
        held = flight.refs[pfn]
        if extra < 0 or extra > held:
            raise InvariantError(
                f"{page!r}: count {page.count}, but ptes + swap cache + pins = {base} and the "
                f"suspended tasks can hold at most {held} more"
            )
        if extra:
            _uncount(machine, page, extra)
            undo.append(partial(_uncount, machine, page, -extra))
        if page.flags & PG_locked and held:
            page.flags &= ~PG_locked
            undo.append(partial(_set_flags, page, PG_locked))


def _hide_unkeyed_ksm_pages(
    machine: Machine, flight: InFlight, undo: list[Callable[[], None]]
) -> None:
    """A KSM page whose stable node is not set yet (mid-merge) belongs to the task merging it:
    show it to check_ksm as a plain page until that task has inserted its node."""
    for page in machine.zone.allocated_pages():
        if flight.refs[page.pfn] and PageKsm(page) and page_stable_node(page) is None:
            page.mapping_flags = PAGE_MAPPING_ANON
            undo.append(partial(setattr, page, "mapping_flags", PAGE_MAPPING_FLAGS))


def _relink_items(flight: InFlight, undo: list[Callable[[], None]]) -> None:
    """Put rmap_items being removed back on their lists, where they still count."""
    for item, link in flight.unlinked:
        if link.rmap_list is item.rmap_list:
            link.rmap_list = item
            undo.append(partial(setattr, link, "rmap_list", item.rmap_list))


def _map(machine: Machine, page: Page, n: int) -> None:
    """Count (or uncount, with -1) one pte mapping of a page, as page_add_anon_rmap() would."""
    if n > 0 and page.mapcount == 0:
        machine.nr_anon_pages += 1
    page.mapcount += n
    page.count += n
    if n < 0 and page.mapcount == 0:
        machine.nr_anon_pages -= 1


def _uncount(machine: Machine, page: Page, n: int) -> None:
    """Take ``n`` references off a page (put back with -n), keeping nr_free consistent."""
    zone = machine.zone
    if n < 0 and page.count == 0:
        zone.nr_free -= 1
    page.count -= n
    if n > 0 and page.count == 0:
        zone.nr_free += 1


def _set_flags(page: Page, flags: int) -> None:
    page.flags |= flags
