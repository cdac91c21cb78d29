"""What the Hypothesis state machines over a Host share: processes that spawn, fork, exit and
map regions, and a shadow of the bytes each process must read back at each page.

The shadow maps (process, page address) to the 4096 bytes the process must see there (an
unmapped address has no entry). Only the operations' meaning updates it, never the model, so
anything that corrupts user memory (a merge, a COW, reclaim, a swap-in, a migration) shows up
as a mismatch in ``memory_reads_back_its_shadow``. A machine sets ``max_procs`` and ``max_regions``
and declares its own ``mmap`` and ``munmap`` rules (the sizes it draws are its own) on top of
``_mmap`` and ``_munmap``.
"""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ksmsim.kernel.memory import peek_user_page
from ksmsim.workload.host import Host, RegionMap
from ksmsim.workload.patterns import ZERO_PAGE_BYTES

Shadow = dict[tuple[str, int], bytes]

idx = st.integers(0, 15)
"""Which process or region a rule picks: taken modulo the live ones."""


def write_byte(data: bytes, offset: int, value: int) -> bytes:
    """Return ``data`` with one byte stored at ``offset``."""
    return data[:offset] + bytes((value,)) + data[offset + 1 :]


def describe(data: bytes | None) -> str:
    """Say what a page holds, briefly, for a failed comparison."""
    if data is None:
        return "nothing (unmapped)"
    common = Counter(data).most_common(1)[0][0]
    diffs = [(i, b) for i, b in enumerate(data) if b != common][:4]
    return f"{common:#04x}-filled page, differing at {diffs}"


class ShadowedHostMachine(RuleBasedStateMachine):
    """Processes on one host and the shadow of their memory (no TestCase of its own)."""

    max_procs = 4
    max_regions = 4

    def __init__(self, host: Host) -> None:
        super().__init__()
        self.host = host
        self.shadow: Shadow = {}
        self.names = itertools.count()

    # -- selection helpers ----------------------------------------------------------------------
    def _procs(self) -> list[str]:
        return sorted(self.host.procs)

    def _proc(self, pi: int) -> str:
        procs = self._procs()
        return procs[pi % len(procs)]

    def _region(self, pi: int, ri: int) -> tuple[str, RegionMap]:
        procs = [p for p in self._procs() if self.host.procs[p].regions]
        proc = procs[pi % len(procs)]
        regions = self.host.procs[proc].regions
        return proc, regions[sorted(regions)[ri % len(regions)]]

    @staticmethod
    def _range(r: RegionMap, sp: tuple[int, int]) -> range:
        """The pages of region ``r`` that a drawn (start, count) picks, cut to the region."""
        start = sp[0] % r.pages
        return range(start, start + min(sp[1], r.pages - start))

    def _has_regions(self) -> bool:
        return any(p.regions for p in self.host.procs.values())

    # -- processes ------------------------------------------------------------------------------
    @precondition(lambda self: len(self.host.procs) < self.max_procs)
    @rule()
    def spawn(self) -> None:
        self.host.spawn(f"p{next(self.names)}")

    @precondition(lambda self: 0 < len(self.host.procs) < self.max_procs)
    @rule(pi=idx)
    def fork(self, pi: int) -> None:
        parent = self._proc(pi)
        child = f"p{next(self.names)}"
        self.host.fork(parent, child)
        for (proc, addr), data in list(self.shadow.items()):
            if proc == parent:
                self.shadow[(child, addr)] = data

    @precondition(lambda self: self.host.procs)
    @rule(pi=idx)
    def exit(self, pi: int) -> None:
        proc = self._proc(pi)
        self.host.exit(proc)
        for key in [k for k in self.shadow if k[0] == proc]:
            del self.shadow[key]

    # -- mappings -------------------------------------------------------------------------------
    def _mmap(self, pi: int, pages: int, mergeable: bool) -> None:
        """Map a new region of ``pages`` in process ``pi`` (none past ``max_regions``): it
        reads as zeros."""
        proc = self._proc(pi)
        if len(self.host.procs[proc].regions) >= self.max_regions:
            return
        r = self.host.mmap(proc, f"r{next(self.names)}", pages, mergeable=mergeable)
        for i in range(pages):
            self.shadow[(proc, r.page_address(i))] = ZERO_PAGE_BYTES

    def _munmap(self, pi: int, ri: int, sp: tuple[int, int]) -> None:
        """Unmap the pages ``sp`` picks in region ``ri`` of process ``pi``."""
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.munmap(proc, r.name, start=pages.start, count=len(pages))
        for i in pages:
            self.shadow.pop((proc, r.page_address(i)), None)

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def memory_reads_back_its_shadow(self) -> None:
        for name, proc in self.host.procs.items():
            seen: set[int] = set()
            for r in proc.regions.values():
                for i in range(r.pages):
                    addr = r.page_address(i)
                    if addr in seen:
                        continue
                    seen.add(addr)
                    expected = self.shadow.get((name, addr))
                    actual = peek_user_page(proc.mm, addr)
                    assert actual == expected, (
                        f"{name}:{r.name}[{i}] at {addr:#x} reads "
                        f"{describe(actual)}, expected {describe(expected)}"
                    )
        live = set(self.host.procs)
        assert all(proc in live for proc, _ in self.shadow)
