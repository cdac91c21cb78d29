"""A Hypothesis state machine over every profile with memory pressure: reclaim, swap and
migration interleaved with user operations and ksmd batches, on a machine small enough that
pressure really swaps (RAM 300 pages, swap 2000).

The shadow maps (process, page address) to the bytes the process must read back there (an
unmapped address has no entry). It is updated only from the operations' meaning (mmap, fill,
write, munmap, fork, exit); pressure, reclaim, swap-in, migration and KSM must leave it intact. ``peek_user_page``
reads swapped-out pages from the swap cache or the slot, so after every step every page is
compared, wherever it is. The model's own invariants (``check_all``) are checked too.
"""

from __future__ import annotations

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
)

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.mm import is_swap_pte, pte_pfn, pte_present, pte_special
from ksmsim.kernel.page import PageKsm
from ksmsim.workload.host import Host
from ksmsim.workload.patterns import page_bytes
from tests.kernel.shadow_machine import ShadowedHostMachine, idx, write_byte

RAM_PAGES = 300
SWAP_PAGES = 2000
PRESSURE_BUDGET = 1600
"""Pressure pages never go away (the hidden process keeps them): with the processes' at most
MAX_PROCS * MAX_REGIONS * 10 pages and their COW copies this stays well inside RAM + swap,
so no user operation may run out of memory."""
MAX_PROCS = 4
MAX_REGIONS = 3
PATTERNS: list[int | str] = [0x5A, 0x33, "repeat:3", "unique", "zero"]
VALUES = [0x00, 0x5A, 0xA5]
OFFSETS = [0, 2048, 4095]
PAGES_TO_SCAN = [5, 25, 100]

span = st.tuples(st.integers(0, 9), st.integers(1, 10))


class ReclaimStateMachine(ShadowedHostMachine):
    """Processes, pressure, swap, migration and ksmd on a small host of one profile."""

    kernel = "keyhole"

    max_procs = MAX_PROCS
    max_regions = MAX_REGIONS

    def __init__(self) -> None:
        super().__init__(Host(self.kernel, ram_pages=RAM_PAGES, swap_pages=SWAP_PAGES, check=False))
        self.host.set_tunable("pages_to_scan", 25)
        self.pressure_left = PRESSURE_BUDGET
        self.migrated = 0

    @initialize(pages=st.integers(1, 10), pattern=st.sampled_from(PATTERNS), merged=st.booleans())
    def two_similar_processes(self, pages: int, pattern: int | str, merged: bool) -> None:
        """Two processes with one equally filled mergeable region each, merged by two passes
        if ``merged`` (so that reclaim meets KSM pages early)."""
        for _ in range(2):
            self.spawn()
            self.mmap(len(self.host.procs) - 1, pages, True)
        for pi in range(2):
            self.fill(pi, 0, (0, pages), pattern)
        if merged:
            self.host.scan(2)

    @initialize(pages=st.sampled_from([0, 260, 400]))
    def initial_pressure(self, pages: int) -> None:
        """Often start under memory pressure, so that most runs swap (the initialize rules run
        in either order: the pressure pages or the two processes' pages are the oldest)."""
        if pages:
            self.pressure(pages)

    # -- selection helpers ----------------------------------------------------------------------
    # -- mappings -------------------------------------------------------------------------------
    @precondition(lambda self: self.host.procs)
    @rule(pi=idx, pages=st.integers(1, 10), mergeable=st.booleans())
    def mmap(self, pi: int, pages: int, mergeable: bool) -> None:
        self._mmap(pi, pages, mergeable)

    @precondition(lambda self: self._has_regions())
    @rule(pi=idx, ri=idx, sp=span)
    def munmap(self, pi: int, ri: int, sp: tuple[int, int]) -> None:
        self._munmap(pi, ri, sp)

    # -- memory access --------------------------------------------------------------------------
    @precondition(lambda self: self._has_regions())
    @rule(pi=idx, ri=idx, sp=span, pattern=st.sampled_from(PATTERNS))
    def fill(self, pi: int, ri: int, sp: tuple[int, int], pattern: int | str) -> None:
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.fill(proc, r.name, pattern, start=pages.start, count=len(pages))
        for i in pages:
            key = (proc, r.page_address(i))
            if key in self.shadow:
                self.shadow[key] = page_bytes(pattern, i, proc=proc, region=r.name)

    @precondition(lambda self: self._has_regions())
    @rule(
        pi=idx,
        ri=idx,
        sp=span,
        value=st.sampled_from(VALUES),
        offset=st.sampled_from(OFFSETS),
    )
    def write(self, pi: int, ri: int, sp: tuple[int, int], value: int, offset: int) -> None:
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.write(proc, r.name, value, offset=offset, start=pages.start, count=len(pages))
        for i in pages:
            key = (proc, r.page_address(i))
            if key in self.shadow:
                self.shadow[key] = write_byte(self.shadow[key], offset, value)

    @precondition(lambda self: self._has_regions())
    @rule(pi=idx, ri=idx, sp=span)
    def read(self, pi: int, ri: int, sp: tuple[int, int]) -> None:
        """Reads fault swapped-out pages back in (or map the zero page)."""
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.read(proc, r.name, start=pages.start, count=len(pages))

    # -- reclaim and migration ------------------------------------------------------------------
    @precondition(lambda self: self.pressure_left >= 150)
    @rule(pages=st.integers(150, 400))
    def pressure(self, pages: int) -> None:
        """Allocate and write pages elsewhere: reclaim swaps the processes' pages out."""
        pages = min(pages, self.pressure_left)
        self.pressure_left -= pages
        assert self.host.pressure(pages) == pages
        assert not self.host.machine.oom_events

    @precondition(lambda self: self._has_regions())
    @rule(pi=idx, ri=idx, sp=span)
    def migrate(self, pi: int, ri: int, sp: tuple[int, int]) -> None:
        """Move the present pages of a range to other frames, one page at a time."""
        proc, r = self._region(pi, ri)
        mm = self.host.procs[proc].mm
        profile = self.host.profile
        for i in self._range(r, sp):
            pte = mm.pte_get(r.page_address(i))
            if not pte_present(pte) or pte_special(pte):
                assert self.host.migrate(proc, r.name, start=i, count=1) == {}
                continue
            page = self.host.machine.zone.pfn_to_page(pte_pfn(pte))
            movable = not PageKsm(page) or profile.migrate_ksm_pages_compaction
            outcome = self.host.migrate(proc, r.name, start=i, count=1)
            assert outcome == ({"ok": 1} if movable else {"EBUSY": 1}), (page, outcome)
            self.migrated += movable

    # -- KSM ------------------------------------------------------------------------------------
    @rule(value=st.sampled_from(PAGES_TO_SCAN))
    def set_pages_to_scan(self, value: int) -> None:
        self.host.set_tunable("pages_to_scan", value)

    @rule(batches=st.integers(1, 4))
    def ksmd_batches(self, batches: int) -> None:
        sysfs = self.host.sysfs
        sysfs.write("run", 1)
        for _ in range(batches):
            self.host.ksmd.batch()
        sysfs.write("run", 0)

    @rule()
    def full_scan(self) -> None:
        self.host.scan(1)

    @rule()
    def unmerge_all(self) -> None:
        self.host.unmerge_all()

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def model_invariants(self) -> None:
        check_all(self.host.machine)

    def teardown(self) -> None:
        vmstat = self.host.machine.vmstat
        event(f"swapped out: {vmstat['pswpout'] > 0}")
        event(f"swapped in: {vmstat['pgmajfault'] > 0}")
        event(f"migrated: {self.migrated > 0}")
        event(f"KSM pages unmapped by reclaim: {vmstat['ksm_pages_unmapped'] > 0}")


def _settings() -> settings:
    """The loaded profile's settings (ci: no deadline, 50 steps), with a third of its examples
    for each of the four profiles, to stay within the suite's time budget."""
    return settings(settings.default, max_examples=max(10, settings.default.max_examples // 3))


class KeyholeReclaim(ReclaimStateMachine):
    kernel = "keyhole"


class PinnedReclaim(ReclaimStateMachine):
    kernel = "pinned"


class V2633Reclaim(ReclaimStateMachine):
    kernel = "v2.6.33"


class V618Reclaim(ReclaimStateMachine):
    kernel = "v6.18"


TestKeyholeReclaim = KeyholeReclaim.TestCase
TestPinnedReclaim = PinnedReclaim.TestCase
TestV2633Reclaim = V2633Reclaim.TestCase
TestV618Reclaim = V618Reclaim.TestCase
for _case in (TestKeyholeReclaim, TestPinnedReclaim, TestV2633Reclaim, TestV618Reclaim):
    _case.settings = _settings()
del _case


@pytest.mark.parametrize("kernel", ["keyhole", "pinned", "v2.6.33", "v6.18"])
def test_fixed_sequence_swaps_out_in_and_migrates(kernel: str) -> None:
    """The rules are not vacuous: a fixed sequence of them swaps pages out under pressure,
    faults them back in, migrates pages, and keeps every invariant on the way."""
    cls = {
        "keyhole": KeyholeReclaim,
        "pinned": PinnedReclaim,
        "v2.6.33": V2633Reclaim,
        "v6.18": V618Reclaim,
    }[kernel]
    m = cls()
    m.two_similar_processes(8, 0x5A, False)  # p0 and p2, with regions r1 and r3 of 8 pages

    def check() -> None:
        m.model_invariants()
        m.memory_reads_back_its_shadow()

    check()
    m.full_scan()
    m.full_scan()
    check()
    c = m.host.counters()
    assert (c["pages_shared"], c["pages_sharing"]) == (1, 15)
    m.fork(0)  # p4, a child of p0 (processes in order: p0, p2, p4)
    m.mmap(2, 10, False)  # p4's own r5 (its regions in order: r1, r5)
    m.fill(2, 1, (0, 10), "unique")
    m.write(0, 0, (2, 3), 0xA5, 4095)
    check()
    machine = m.host.machine
    m.pressure(200)
    m.pressure(200)
    check()
    assert machine.vmstat["pswpout"] > 0
    assert m.host.memory()["pages_swapped_out"] > 0
    swapped = sum(1 for proc, addr in m.shadow if is_swap_pte(m.host.procs[proc].mm.pte_get(addr)))
    assert swapped > 0
    assert machine.vmstat["ksm_pages_unmapped"] > 0  # the KSM page went to swap as well
    for pi in range(3):
        for ri in range(2):
            m.read(pi, ri, (0, 10))
            check()
    assert machine.vmstat["pgmajfault"] > 0
    m.write(1, 0, (0, 10), 0x00, 0)
    m.ksmd_batches(4)
    check()
    for pi in range(3):
        for ri in range(2):
            m.migrate(pi, ri, (0, 10))
            check()
    assert m.migrated > 0 and machine.vmstat["pgmigrate_success"] == m.migrated
    m.pressure(200)
    m.full_scan()
    m.unmerge_all()
    m.exit(0)
    check()
    assert not machine.oom_events
