"""The sleeping primitives kernel tasks meet: mutexes, rw-semaphores, page-table locks and RCU.

Each blocks through the scheduler's ``wait``: the task sleeps until the lock is free, and the
scheduler wakes it in whatever order the strategy picks (a superset of the kernel's FIFO
hand-over). A task that already holds a lock passes its own nested acquisitions: the model takes
mmap_sem at function boundaries that sometimes nest where the kernel takes it once.

``KernelLocks`` puts them where the kernel has them. ksm_thread_mutex and the user side of
mmap_sem are taken by the task bodies (``tasks.py``), at the system-call and kthread boundaries.
Inside mm/ksm.c, mmap_sem (read) and the page-table lock span whole functions, so under a
scheduler those functions are wrapped on the machine's ``Ksm`` instance (``LOCKED_FUNCTIONS``);
sequential runs never see the wrappers. The page lock is the page's PG_locked bit, which
``machine.lock_page`` waits on; page references (get_page_unless_zero, page_freeze_refs) are
the page's count, as in the kernel.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ksmsim.kernel.mm import MmStruct, VmArea
    from ksmsim.sched.scheduler import Scheduler, Task


class Mutex:
    """A sleeping mutex (struct mutex): mutex_lock() waits for the owner to unlock."""

    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self.owner: Task | None = None
        self.depth = 0

    def free_for(self, task: Task) -> bool:
        """Tell whether ``task`` could take the mutex now."""
        return self.owner is None or self.owner is task

    def lock(self) -> None:
        """Take the mutex, sleeping while another task holds it: mutex_lock()."""
        task = self.sched.running()
        self.sched.wait(f"mutex_lock:{self.name}", lambda: self.free_for(task))
        self.owner = task
        self.depth += 1

    def unlock(self) -> None:
        """Release the mutex: mutex_unlock()."""
        task = self.sched.running()
        if self.owner is not task:
            raise AssertionError(f"{task.name} unlocks {self.name} held by {self.owner}")
        self.depth -= 1
        if not self.depth:
            self.owner = None

    def holders(self) -> tuple[str, ...]:
        """Return the names of the tasks holding the lock."""
        return () if self.owner is None else (self.owner.name,)


class RwSem:
    """A read-write semaphore (mmap_sem): many readers or one writer."""

    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self.readers: Counter[str] = Counter()
        self.writer: Task | None = None
        self.write_depth = 0

    def read_free_for(self, task: Task) -> bool:
        """Tell whether ``task`` could take the semaphore for reading now."""
        return self.writer is None or self.writer is task

    def write_free_for(self, task: Task) -> bool:
        """Tell whether ``task`` could take the semaphore for writing now."""
        if self.writer is not None:
            return self.writer is task
        return not any(n for name, n in self.readers.items() if name != task.name)

    def down_read(self) -> None:
        """Take the semaphore for reading: down_read()."""
        task = self.sched.running()
        self.sched.wait(f"down_read:{self.name}", lambda: self.read_free_for(task))
        self.readers[task.name] += 1

    def up_read(self) -> None:
        """Release a read hold: up_read()."""
        task = self.sched.running()
        if not self.readers[task.name]:
            raise AssertionError(f"{task.name} up_read of {self.name} it does not hold")
        self.readers[task.name] -= 1
        if not self.readers[task.name]:
            del self.readers[task.name]

    def down_write(self) -> None:
        """Take the semaphore for writing: down_write()."""
        task = self.sched.running()
        self.sched.wait(f"down_write:{self.name}", lambda: self.write_free_for(task))
        self.writer = task
        self.write_depth += 1

    def up_write(self) -> None:
        """Release the write hold: up_write()."""
        task = self.sched.running()
        if self.writer is not task:
            raise AssertionError(f"{task.name} up_write of {self.name} held by {self.writer}")
        self.write_depth -= 1
        if not self.write_depth:
            self.writer = None

    def barrier(self) -> None:
        """Take the semaphore for writing and release it at once: wait out every holder
        (__ksm_exit's down_write(); up_write())."""
        self.down_write()
        self.up_write()

    def holders(self) -> tuple[str, ...]:
        """Return the names of the tasks holding the semaphore (``name:w`` for the writer)."""
        out = tuple(sorted(f"{n}:r" for n in self.readers))
        return out + ((f"{self.writer.name}:w",) if self.writer is not None else ())


class Rcu:
    """RCU: read-side sections and grace periods (rcu_read_lock(), synchronize_rcu()).

    A grace period that starts while tasks are inside read-side sections ends only when each of
    them has left its section; sections entered later do not hold it up.
    """

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.readers: dict[str, int] = {}
        """Tasks inside a read-side section, with the number of sections each has entered."""
        self.entered: Counter[str] = Counter()

    def read_lock(self, task: Task) -> None:
        """Enter a read-side section: rcu_read_lock()."""
        self.entered[task.name] += 1
        self.readers[task.name] = self.entered[task.name]

    def read_unlock(self, task: Task) -> None:
        """Leave the read-side section: rcu_read_unlock()."""
        self.readers.pop(task.name, None)

    def synchronize(self) -> None:
        """Wait for a grace period: every section open now has been left: synchronize_rcu()."""
        snapshot = dict(self.readers)

        def over() -> bool:
            return all(self.readers.get(name) != gen for name, gen in snapshot.items())

        self.sched.wait("synchronize_rcu", over)


LockedFunction = tuple[str, str, Callable[..., "MmStruct | None"]]


def _vma_mm(vma: VmArea, *_args: Any, **_kw: Any) -> MmStruct:
    return vma.vm_mm


def _item_mm(item: Any, *_args: Any, **_kw: Any) -> MmStruct | None:
    mm: MmStruct | None = item.mm
    return mm


def _first_mm(mm: MmStruct, *_args: Any, **_kw: Any) -> MmStruct:
    return mm


LOCKED_FUNCTIONS: Final[tuple[LockedFunction, ...]] = (
    # (Ksm method, lock, the mm it locks): the kernel's down_read(&mm->mmap_sem) and
    # pte_offset_map_lock() scopes in mm/ksm.c, as whole functions of the model.
    ("_scan_mm", "mmap_sem", _first_mm),  # scan_get_next_rmap_item()
    ("remove_trailing_rmap_items", "mmap_sem", _item_mm),  # still under the scan's mmap_sem
    ("get_mergeable_page", "mmap_sem", _item_mm),
    ("try_to_merge_with_ksm_page", "mmap_sem", _item_mm),
    ("try_to_merge_one_page", "mmap_sem", _vma_mm),  # try_to_merge_two_pages()'s first half
    ("break_cow", "mmap_sem", _item_mm),
    ("unmerge_ksm_pages", "mmap_sem", _vma_mm),  # run=2; madvise holds it already
    ("write_protect_page", "ptl", _vma_mm),  # page_check_address() .. pte_unmap_unlock()
)


class KernelLocks:
    """The locks of one machine under a scheduler, and the wrappers that take them."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.ksm_thread_mutex = Mutex(sched, "ksm_thread_mutex")
        self.rcu = Rcu(sched)
        self._mmap_sem: dict[MmStruct, RwSem] = {}
        self._ptl: dict[MmStruct, Mutex] = {}
        self._installed: list[str] = []

    def mmap_sem(self, mm: MmStruct) -> RwSem:
        """Return the mm's mmap_sem."""
        sem = self._mmap_sem.get(mm)
        if sem is None:
            sem = self._mmap_sem[mm] = RwSem(self.sched, f"mmap_sem({mm.name})")
        return sem

    def ptl(self, mm: MmStruct) -> Mutex:
        """Return the mm's page-table lock (one per mm: the kernel's split locks are finer)."""
        lock = self._ptl.get(mm)
        if lock is None:
            lock = self._ptl[mm] = Mutex(self.sched, f"ptl({mm.name})")
        return lock

    def held(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Return every held lock with its holders, in a stable order (for state hashing)."""
        out: list[tuple[str, tuple[str, ...]]] = []
        if self.ksm_thread_mutex.owner is not None:
            out.append((self.ksm_thread_mutex.name, self.ksm_thread_mutex.holders()))
        for sem in self._mmap_sem.values():
            if sem.holders():
                out.append((sem.name, sem.holders()))
        for lock in self._ptl.values():
            if lock.owner is not None:
                out.append((lock.name, lock.holders()))
        if self.rcu.readers:
            out.append(("rcu", tuple(sorted(self.rcu.readers))))
        return tuple(sorted(out))

    def install(self) -> None:
        """Wrap the locked functions on the machine's Ksm instance."""
        ksm = self.sched.machine.ksm
        if ksm is None:
            return
        for name, lock, mm_of in LOCKED_FUNCTIONS:
            original = getattr(ksm, name)
            setattr(ksm, name, self._wrap(original, lock, mm_of))
            self._installed.append(name)

    def uninstall(self) -> None:
        """Remove the wrappers: the class's functions show through again."""
        ksm = self.sched.machine.ksm
        for name in self._installed:
            delattr(ksm, name)
        self._installed.clear()

    def _wrap(
        self, fn: Callable[..., Any], lock: str, mm_of: Callable[..., MmStruct | None]
    ) -> Callable[..., Any]:
        if lock == "ptl":

            @functools.wraps(fn)
            def with_ptl(*args: Any, **kw: Any) -> Any:
                mm = mm_of(*args, **kw)
                if mm is None:
                    return fn(*args, **kw)
                ptl = self.ptl(mm)
                ptl.lock()
                try:
                    return fn(*args, **kw)
                finally:
                    ptl.unlock()

            return with_ptl

        @functools.wraps(fn)
        def with_mmap_sem(*args: Any, **kw: Any) -> Any:
            mm = mm_of(*args, **kw)
            if mm is None:
                return fn(*args, **kw)
            sem = self.mmap_sem(mm)
            sem.down_read()
            try:
                return fn(*args, **kw)
            finally:
                sem.up_read()

        return with_mmap_sem
