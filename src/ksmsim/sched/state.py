"""What paused tasks hold, and a canonical fingerprint of a whole run's state.

A task stopped at a preemption point is in the middle of a kernel operation: its frames (the
greenlet's stack) hold page references, page locks, a pte it cleared, pages it is migrating.
``in_flight`` reads them off the frames, for the invariant checker to tolerate exactly that.

``fingerprint`` canonicalises the machine (frames, page tables, KSM's lists and trees, the free
list's order) together with every task's stack (function, instruction offset and locals of each
frame) and the locks held, so that two interleavings that reach the same state compare equal.
Objects are named by the order the walk meets them, pages by pfn and mms by pid, so equal
states built from different Python objects give equal fingerprints. Values on a frame's
evaluation stack (not in its locals) are not seen; each task's step count is part of the key
to keep loop iterations apart.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from ksmsim.kernel.ksm import Ksm, KsmScan, MmSlot, RmapItem, StableNode
from ksmsim.kernel.mm import MmStruct, VmArea
from ksmsim.kernel.page import Page
from ksmsim.kernel.rbtree import RbRoot
from ksmsim.kernel.rmap import AnonVma

if TYPE_CHECKING:
    from ksmsim.sched.scheduler import Scheduler, Task
    from ksmsim.sched.tasks import World


def task_frames(task: Task) -> list[FrameType]:
    """Return a suspended task's frames, innermost first (none if it is not suspended); for a
    task that crashed, the frames its exception unwound, which still hold what it held."""
    if task.error is not None:
        tb = task.error.__traceback__
        frames: list[FrameType] = []
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        return frames[::-1]
    g = task.glet
    if g is None or g.dead:
        return []
    out: list[FrameType] = []
    frame: FrameType | None = g.gr_frame
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


def _values(value: object, depth: int = 0) -> Iterator[object]:
    yield value
    if depth < 2 and isinstance(value, tuple | list):
        for v in value:
            yield from _values(v, depth + 1)


@dataclass(slots=True)
class InFlight:
    """What the suspended tasks are in the middle of."""

    refs: Counter[int] = field(default_factory=Counter)
    """pfn -> how many frame locals bind the page: an upper bound of the references held."""
    cleared_ptes: list[tuple[MmStruct, int, int]] = field(default_factory=list)
    """(mm, address, pte): ptes write_protect_page() cleared and will set again."""
    migrating: list[tuple[Page, list[tuple[VmArea, int, bool]]]] = field(default_factory=list)
    """(page, [(vma, address, writable)]): pages whose ptes are migration entries."""
    mms: list[MmStruct] = field(default_factory=list)
    """Address spaces a task still works in though their process has left the task list."""
    unlinked: list[tuple[RmapItem, Any]] = field(default_factory=list)
    """(item, link): rmap_items taken off their mm's list and being removed from a tree,
    not yet freed (remove_trailing_rmap_items(), get_next_rmap_item())."""


def in_flight(sched: Scheduler) -> InFlight:
    """Read what every suspended task holds off its frames."""
    out = InFlight()
    live = sched.machine.tasks
    seen_mms: set[int] = set()
    crashed = [t for t in sched.tasks if t.error is not None]
    for task in sched.started() + crashed:
        for depth, frame in enumerate(task_frames(task)):
            name = frame.f_code.co_name
            f_locals = frame.f_locals
            bound: set[int] = set()
            for value in f_locals.values():
                for v in _values(value):
                    if type(v) is Page:
                        bound.add(v.pfn)
                    elif (
                        type(v) is MmStruct
                        and v.pid not in live
                        and id(v) not in seen_mms
                        and (v.mmap or v.pgd)
                    ):
                        seen_mms.add(id(v))
                        out.mms.append(v)
            for pfn in bound:
                out.refs[pfn] += 1
            if name == "write_protect_page" and task.point == "write_protect_page:pte_cleared":
                mm, addr, pte = f_locals["mm"], f_locals["addr"], f_locals["pte"]
                if mm.pte_get(addr) == 0:
                    out.cleared_ptes.append((mm, addr, pte))
            elif name in _UNLINKING and depth > 0:
                # Stopped in remove_rmap_item_from_tree(), between unlinking and freeing.
                out.unlinked.append((f_locals["rmap_item"], f_locals["link"]))
            elif name == "migrate_page" and task.point == "migrate_page:unmapped":
                out.migrating.append((f_locals["page"], list(f_locals["moved"])))
    return out


_UNLINKING: Final = frozenset({"remove_trailing_rmap_items", "get_next_rmap_item"})


# -- the fingerprint -------------------------------------------------------------------------

_SKIP: Final = frozenset({"csum", "csum_of", "serial", "machine", "_ends", "mmap_cache", "name"})

_KSM_FIELDS: Final = (
    "ksm_mm_head",
    "ksm_scan",
    "root_stable_tree",
    "root_unstable_tree",
    "ksm_pages_shared",
    "ksm_pages_sharing",
    "ksm_pages_unshared",
    "ksm_rmap_items",
    "ksm_pages_skipped",
    "ksm_zero_pages",
    "ksm_stable_node_chains",
    "ksm_stable_node_dups",
    "ksm_run",
    "ksm_thread_pages_to_scan",
    "ksm_max_page_sharing",
    "ksm_use_zero_pages",
    "ksm_smart_scan",
    "mutations",
)


def _slots(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        for name in getattr(klass, "__slots__", ()):
            if name not in _SKIP and name not in names:
                names.append(name)
    return tuple(names)


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: _slots(cls) for cls in (MmSlot, RmapItem, StableNode, VmArea, AnonVma, KsmScan, RbRoot)
}
_FIELDS[Ksm] = _KSM_FIELDS
_MM_FIELDS: Final = tuple(
    n for n in _slots(MmStruct) if n not in ("pid", "pgd", "mmap", "machine", "_ends")
)
_ATOMS: Final = (int, str, bool, float, bytes, type(None), frozenset)


class _Canon:
    """Turns objects into hashable canonical forms, naming objects in the order met."""

    def __init__(self) -> None:
        self.memo: dict[int, int] = {}

    def __call__(self, x: object) -> Hashable:
        t = type(x)
        if t in _ATOMS:
            return x
        if isinstance(x, Page):
            return ("P", x.pfn)
        if isinstance(x, MmStruct):
            return ("M", x.pid)
        if isinstance(x, tuple | list):
            return tuple(self(e) for e in x)
        if isinstance(x, dict):
            return tuple((self(k), self(v)) for k, v in x.items())
        if isinstance(x, array):
            return x.tobytes()
        fields = _FIELDS.get(t)
        if fields is None:
            return ("?", t.__name__)
        n = self.memo.get(id(x))
        if n is not None:
            return ("@", n)
        self.memo[id(x)] = len(self.memo)
        return (t.__name__, tuple(self(getattr(x, f, None)) for f in fields))

    def mm(self, mm: MmStruct) -> Hashable:
        return (
            mm.pid,
            tuple(self(getattr(mm, f)) for f in _MM_FIELDS),
            tuple(self(v) for v in mm.mmap),
            tuple((k, mm.pgd[k].tobytes()) for k in sorted(mm.pgd)),
        )

    def page(self, p: Page) -> Hashable:
        return (
            p.pfn,
            p.count,
            p.mapcount,
            self(p.mapping),
            p.mapping_flags,
            p.flags,
            p.index,
            p.private,
            hash(p.data),
        )

    def frame(self, frame: FrameType) -> Hashable:
        code = frame.f_code
        return (
            code.co_qualname,
            frame.f_lasti,
            tuple((k, self(v)) for k, v in sorted(frame.f_locals.items())),
        )


def fingerprint(world: World) -> int:
    """Return a hash of the whole state: machine, KSM, tasks' stacks and locks held."""
    machine = world.host.machine
    sched = world.sched
    c = _Canon()
    zone = machine.zone
    parts: list[Any] = [
        tuple(c.page(p) for p in zone.mem_map[1 : zone._fresh] if p is not None),
        tuple(p.pfn for p in zone._free),
        zone.nr_free,
        machine.nr_anon_pages,
        tuple(c.mm(mm) for _, mm in sorted(machine.tasks.items())),
    ]
    if machine.ksm is not None:
        parts.append(c(machine.ksm))
        parts.append(tuple(c(s) for s in machine.ksm.slots()))
        parts.append(tuple(c.mm(s.mm) for s in machine.ksm.slots() if s.mm is not None))
    parts.append(tuple(sorted(machine.swap_cache)))
    parts.append(tuple(p.pfn for p in machine.lru.active))
    parts.append(tuple(p.pfn for p in machine.lru.inactive))
    parts.append(tuple(tuple(p.pfn for p in v) for v in machine.pagevecs))
    for task in sched.tasks:
        frames = task_frames(task)
        parts.append(
            (task.name, task.state, task.steps, task.point, tuple(c.frame(f) for f in frames))
        )
    parts.append(sched.locks.held())
    return hash(tuple(parts))
