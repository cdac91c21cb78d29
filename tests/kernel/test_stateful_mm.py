"""Stateful test of the memory-management model against a shadow memory.

A Hypothesis rule-based state machine drives random mmap, munmap (partial too), reads, writes
(single bytes and whole pages from a small pool, so equal contents are common), fork, exit and
madvise (MERGEABLE, UNMERGEABLE, DONTNEED) over up to five processes. The test keeps its own
SHADOW memory: for every live process, every mapped page's expected 4096 bytes (zeros while
untouched) and whether its area is writable. Only the test updates it, from the Linux semantics
of each call. After every step the machine must pass ``check_all`` and every mapped page of
every live process must read back its shadow through ``peek_user_page``.

ksmd never runs: KSM only sees the madvise calls. Memory is sometimes small enough to run out;
a write that finds no free frame must fail with FaultError, record an OOM event and change
nothing, so the shadow stays as it was.
"""

from __future__ import annotations

import itertools

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ksmsim.kernel.contents import ZERO_DATA
from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.madvise import MADV_DONTNEED, MADV_MERGEABLE, MADV_UNMERGEABLE, do_madvise
from ksmsim.kernel.memory import FaultError, peek_user_page, read_user_byte, write_user_bytes
from ksmsim.kernel.mm import (
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    VM_ANON_DEFAULT,
    VM_MAYREAD,
    VM_READ,
    VM_WRITE,
    MmStruct,
)
from ksmsim.kernel.mmap import ENOMEM, MmapError, do_mmap_anon, do_munmap
from ksmsim.kernel.page import PAGE_SIZE, PageKsm
from ksmsim.kernel.profile import KEYHOLE

P = PAGE_SIZE
MAX_PROCS = 5
RO_FLAGS = VM_READ | VM_MAYREAD

PAGE_POOL = (
    ZERO_DATA,
    bytes([1]) * P,
    bytes([0xAB]) * P,
    bytes(range(256)) * (P // 256),
)
BYTE_POOL = (b"\x00", b"\x01", b"\xab", b"hi")


class MemoryModel(RuleBasedStateMachine):
    """Random address-space operations checked against a shadow of every mapped page."""

    def __init__(self) -> None:
        super().__init__()
        self.m: Machine
        self.procs: dict[int, MmStruct] = {}
        # pid -> page address -> expected contents; pid -> page address -> area writable
        self.shadow: dict[int, dict[int, bytes]] = {}
        self.writable: dict[int, dict[int, bool]] = {}
        self.nproc = 0

    # -- helpers ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        self.nproc += 1
        mm = self.m.new_process(f"p{self.nproc}")
        self.procs[mm.pid] = mm
        self.shadow[mm.pid] = {}
        self.writable[mm.pid] = {}

    def _pick_pid(self, data: st.DataObject, mapped: bool = True) -> int:
        """A live process; one with mapped pages when ``mapped`` and there is one."""
        pids = sorted(self.procs)
        if mapped:
            pids = [pid for pid in pids if self.shadow[pid]] or pids
        return data.draw(st.sampled_from(pids), label="pid")

    def _pick_addr(self, data: st.DataObject, pid: int) -> int:
        """A page address near the process's mappings: usually mapped, sometimes a hole.

        The anchor is a mapped page, a page backed by a frame (so that writes after a fork
        meet copy-on-write), or the first or last page of an area, so that ranges often start
        or end at area boundaries (where splits and merges happen).
        """
        mm = self.procs[pid]
        pages = sorted(self.shadow[pid])
        if not pages:
            return mm.mmap_base - P
        how = data.draw(st.integers(0, 4), label="anchor kind")
        resident = [a for a in pages if mm.pte_get(a) & (_PAGE_PRESENT | _PAGE_SPECIAL) == 1]
        if how == 4 and resident:
            anchor = data.draw(st.sampled_from(resident), label="anchor")
        elif how in (0, 4):
            anchor = data.draw(st.sampled_from(pages), label="anchor")
        else:
            vma = data.draw(st.sampled_from(mm.mmap), label="area")
            anchor = vma.vm_start if how != 3 else vma.vm_end - P
        stray = data.draw(st.integers(0, 7), label="stray")
        shift = (0, 0, 0, 0, 1, -1, 2, -2)[stray] if stray >= 4 else 0
        return anchor + shift * P

    def _any_mapped(self) -> bool:
        return any(self.shadow.values())

    @staticmethod
    def _range(start: int, npages: int) -> list[int]:
        return [start + i * P for i in range(npages)]

    def _expected_mmap_addr(self, pid: int, length: int) -> int:
        """Top of the highest gap below mmap_base that fits, from the shadow's mapped pages."""
        top = self.procs[pid].mmap_base
        for page in sorted(self.shadow[pid], reverse=True):
            if page >= top:
                continue
            if page + P <= top - length:
                break
            top = page
        return top - length

    def _write(self, mm: MmStruct, addr: int, offset: int, payload: bytes) -> None:
        """Write through the model and check the fault's outcome against the spec."""
        pid = mm.pid
        shadow = self.shadow[pid]
        zone = self.m.zone
        ooms = len(self.m.oom_events)
        free = zone.nr_free
        pte = mm.pte_get(addr)
        if addr not in shadow or not self.writable[pid][addr]:
            try:
                write_user_bytes(mm, addr + offset, payload)
            except FaultError as e:
                assert "SIGSEGV" in str(e)
            else:
                raise AssertionError(f"write to unmapped or read-only {addr:#x} succeeded")
            event("write: SIGSEGV " + ("ro" if addr in shadow else "unmapped"))
            assert mm.pte_get(addr) == pte
            assert len(self.m.oom_events) == ooms and zone.nr_free == free
            return
        # What the fault must do, decided from the pte before the write.
        if pte & _PAGE_PRESENT and pte & _PAGE_RW:
            expect = "none"
        elif pte == 0 or pte & _PAGE_SPECIAL:
            expect = "alloc"
        else:
            old = zone.mem_map[pte >> 12]
            assert old is not None
            expect = "reuse" if old.mapcount == 1 and not PageKsm(old) else "copy"
        try:
            write_user_bytes(mm, addr + offset, payload)
        except FaultError:
            event("write: OOM")
            assert expect in ("alloc", "copy"), f"{expect} fault failed"
            assert free == 0, "a fault failed while frames were free"
            assert len(self.m.oom_events) == ooms + 1
            ev = self.m.oom_events[-1]
            assert (ev.pid, ev.address) == (pid, addr)
            assert mm.pte_get(addr) == pte
            return
        event(f"write: {expect}")
        new = mm.pte_get(addr)
        assert new & _PAGE_PRESENT and new & _PAGE_RW and not new & _PAGE_SPECIAL
        assert len(self.m.oom_events) == ooms
        if expect in ("none", "reuse"):
            assert new >> 12 == pte >> 12, f"{expect}: the frame changed"
            assert zone.nr_free == free
        else:
            assert new >> 12 != pte >> 12 or pte == 0
            assert zone.nr_free == free - 1
        old_data = shadow[addr]
        if len(payload) == P:
            shadow[addr] = payload
        else:
            shadow[addr] = old_data[:offset] + payload + old_data[offset + len(payload) :]

    # -- rules -----------------------------------------------------------------------------
    @initialize(
        ram=st.sampled_from([8, 320]),
        order=st.sampled_from(["hot", "cold"]),
    )
    def setup(self, ram: int, order: str) -> None:
        self.m = Machine(KEYHOLE, MachineConfig(ram_pages=ram, reuse_order=order))  # type: ignore[arg-type]
        self._spawn()

    @precondition(lambda self: len(self.procs) < MAX_PROCS)
    @rule()
    def new_process(self) -> None:
        self._spawn()

    @rule(data=st.data(), npages=st.integers(1, 12), kind=st.integers(0, 4))
    def mmap(self, data: st.DataObject, npages: int, kind: int) -> None:
        pid = self._pick_pid(data, mapped=False)
        mm = self.procs[pid]
        flags = RO_FLAGS if kind == 4 else VM_ANON_DEFAULT
        expected = self._expected_mmap_addr(pid, npages * P)
        addr = do_mmap_anon(mm, npages * P, flags)
        assert addr == expected, f"mmap placed at {addr:#x}, top-down gives {expected:#x}"
        for a in self._range(addr, npages):
            assert a not in self.shadow[pid], f"mmap returned mapped page {a:#x}"
            self.shadow[pid][a] = ZERO_DATA
            self.writable[pid][a] = bool(flags & VM_WRITE)

    @precondition(lambda self: self._any_mapped())
    @rule(data=st.data(), npages=st.integers(1, 4))
    def munmap(self, data: st.DataObject, npages: int) -> None:
        pid = self._pick_pid(data)
        start = self._pick_addr(data, pid)
        do_munmap(self.procs[pid], start, npages * P)
        for a in self._range(start, npages):
            self.shadow[pid].pop(a, None)
            self.writable[pid].pop(a, None)

    @precondition(lambda self: self._any_mapped())
    @rule(data=st.data(), offset=st.integers(0, P - 1))
    def read(self, data: st.DataObject, offset: int) -> None:
        pid = self._pick_pid(data)
        mm = self.procs[pid]
        addr = self._pick_addr(data, pid)
        free = self.m.zone.nr_free
        if addr in self.shadow[pid]:
            assert read_user_byte(mm, addr + offset) == self.shadow[pid][addr][offset]
            assert mm.pte_get(addr) & _PAGE_PRESENT
        else:
            try:
                read_user_byte(mm, addr + offset)
            except FaultError as e:
                assert "SIGSEGV" in str(e)
            else:
                raise AssertionError(f"read of unmapped {addr:#x} succeeded")
        assert self.m.zone.nr_free == free  # reads never allocate

    @precondition(lambda self: self._any_mapped())
    @rule(data=st.data(), payload=st.sampled_from(BYTE_POOL))
    def write_bytes(self, data: st.DataObject, payload: bytes) -> None:
        pid = self._pick_pid(data)
        addr = self._pick_addr(data, pid)
        offset = data.draw(
            st.one_of(st.sampled_from([0, 100]), st.integers(0, P - len(payload))), label="off"
        )
        self._write(self.procs[pid], addr, offset, payload)

    @precondition(lambda self: self._any_mapped())
    @rule(data=st.data(), which=st.integers(0, len(PAGE_POOL) - 1))
    def write_page(self, data: st.DataObject, which: int) -> None:
        pid = self._pick_pid(data)
        addr = self._pick_addr(data, pid)
        self._write(self.procs[pid], addr, 0, PAGE_POOL[which])

    @precondition(lambda self: len(self.procs) < MAX_PROCS)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        pid = self._pick_pid(data)
        free = self.m.zone.nr_free
        self.nproc += 1
        child = self.m.fork(self.procs[pid], f"p{self.nproc}")
        assert self.m.zone.nr_free == free  # fork shares every frame
        self.procs[child.pid] = child
        self.shadow[child.pid] = dict(self.shadow[pid])
        self.writable[child.pid] = dict(self.writable[pid])
        # COW: no private writable page is writable in either process any more.
        parent = self.procs[pid]
        for mm in (parent, child):
            for _, pte in mm.all_ptes():
                if pte & _PAGE_PRESENT and not pte & _PAGE_SPECIAL:
                    assert not pte & _PAGE_RW
        for pv, cv in zip(parent.mmap, child.mmap, strict=True):
            assert cv.anon_vma is pv.anon_vma

    @rule(data=st.data())
    def exit(self, data: st.DataObject) -> None:
        pid = self._pick_pid(data, mapped=False)
        mm = self.procs.pop(pid)
        del self.shadow[pid]
        del self.writable[pid]
        self.m.exit(mm)
        assert mm.mmap == [] and mm.pgd == {} and mm.anon_rss == 0
        if not self.procs:
            self._spawn()  # like init, keep one process around so every rule stays enabled

    @precondition(lambda self: self._any_mapped())
    @rule(
        data=st.data(),
        npages=st.integers(1, 8),
        advice=st.sampled_from([MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_DONTNEED]),
    )
    def madvise(self, data: st.DataObject, npages: int, advice: int) -> None:
        pid = self._pick_pid(data)
        mm = self.procs[pid]
        start = self._pick_addr(data, pid)
        pages = self._range(start, npages)
        holes = any(a not in self.shadow[pid] for a in pages)
        free = self.m.zone.nr_free
        try:
            do_madvise(mm, start, npages * P, advice)
        except MmapError as e:
            event("madvise: ENOMEM")
            assert holes and e.errno == ENOMEM, f"unexpected madvise error {e}"
        else:
            assert not holes, "madvise over a hole did not fail with ENOMEM"
        if advice == MADV_DONTNEED:
            for a in pages:
                if a in self.shadow[pid]:
                    self.shadow[pid][a] = ZERO_DATA
                    assert mm.pte_get(a) == 0
            assert self.m.zone.nr_free >= free
        else:
            assert self.m.zone.nr_free == free

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def machine_is_consistent(self) -> None:
        if not hasattr(self, "m"):
            return
        check_all(self.m)
        assert set(self.m.tasks) == set(self.procs)
        zone = self.m.zone
        used = zone.present_pages - zone.nr_free
        assert used <= sum(len(s) for s in self.shadow.values())

    @invariant()
    def areas_are_merged(self) -> None:
        """Adjacent areas that could merge (equal flags, compatible anon_vmas) have merged."""
        if not hasattr(self, "m"):
            return
        for mm in self.procs.values():
            for vma in mm.mmap:
                assert vma.vm_pgoff == vma.vm_start >> 12, f"{mm.name}: {vma!r} pgoff"
            for lo, hi in itertools.pairwise(mm.mmap):
                assert not (
                    lo.vm_end == hi.vm_start
                    and lo.vm_flags == hi.vm_flags
                    and (lo.anon_vma is None or hi.anon_vma is None or lo.anon_vma is hi.anon_vma)
                ), f"{mm.name}: {lo!r} and {hi!r} should have merged"

    @invariant()
    def memory_matches_shadow(self) -> None:
        if not hasattr(self, "m"):
            return
        for pid, mm in self.procs.items():
            shadow = self.shadow[pid]
            writable = self.writable[pid]
            mapped: set[int] = set()
            for v in mm.mmap:
                assert bool(v.vm_flags & VM_WRITE) == writable[v.vm_start]
                mapped.update(range(v.vm_start, v.vm_end, P))
            assert mapped == set(shadow), f"{mm.name}: mapped pages differ from the shadow"
            for addr, expected in shadow.items():
                got = peek_user_page(mm, addr)
                assert got == expected, f"{mm.name}: page {addr:#x} differs from the shadow"
                assert bool(mm.find_vma(addr).vm_flags & VM_WRITE) == writable[addr]  # type: ignore[union-attr]


TestMemoryModel = MemoryModel.TestCase
