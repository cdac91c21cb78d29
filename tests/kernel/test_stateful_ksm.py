"""A Hypothesis state machine over the keyhole KSM model: user operations interleaved with
single ksmd batches, checked against a shadow of what every process must read back.

The shadow maps (process, page address) to the 4096 bytes the process must see there. It is
updated only from the operations' semantics (fill, write, munmap, MADV_DONTNEED, fork, exit),
never from the model, so any merge, COW or unmerge that corrupts user memory shows up as a
mismatch. After every step the model's own invariants (``check_all``) and a few more derived
from the notes (sections 1-8) are checked.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
)

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.ksm import SEQNR_MASK, STABLE_FLAG, UNSTABLE_FLAG, RmapItem, StableNode
from ksmsim.kernel.mm import MMF_VM_MERGEABLE, pte_pfn, pte_present, pte_special
from ksmsim.kernel.page import PAGE_MASK, PAGE_SIZE, PageKsm, page_stable_node
from ksmsim.kernel.rbtree import rb_iter, validate_rbtree
from ksmsim.kernel.rmap import AnonVma
from ksmsim.workload.host import Host
from ksmsim.workload.patterns import ZERO_PAGE_BYTES, page_bytes
from tests.kernel.shadow_machine import ShadowedHostMachine, idx, write_byte

MAX_PROCS = 4
MAX_REGIONS = 4
PATTERNS: list[int | str] = [0x11, 0x22, "zero", "repeat:3"]
VALUES = [0x00, 0x11, 0x22, 0xA5]  # 0xA5 is the repeat filler: some writes change nothing
OFFSETS = [0, 2048, 4095]
PAGES_TO_SCAN = [1, 2, 3, 5, 10, 100]
MAX_KERNEL_PAGES = [0, 1, 2, 500]

span = st.tuples(st.integers(0, 7), st.integers(1, 8))


class KsmStateMachine(ShadowedHostMachine):
    """Processes, regions and ksmd batches on a small keyhole host."""

    max_procs = MAX_PROCS
    max_regions = MAX_REGIONS

    def __init__(self) -> None:
        super().__init__(Host("keyhole", ram_pages=2000, check=False))
        self.host.set_tunable("pages_to_scan", 3)
        self.max_sharing = 0
        self.max_shared = 0
        self.steps = 0

    @initialize(pages=st.integers(1, 8), pattern=st.sampled_from(PATTERNS))
    def two_similar_processes(self, pages: int, pattern: int | str) -> None:
        """Start from two processes with one equally filled mergeable region each, so that
        merging is only a couple of passes away."""
        for _ in range(2):
            self.spawn()
            self.mmap(len(self.host.procs) - 1, pages, True)
        for pi in range(2):
            self.fill(pi, 0, (0, pages), pattern)

    # -- selection helpers ----------------------------------------------------------------------
    def _mapped(self, proc: str, addr: int) -> bool:
        vma = self.host.procs[proc].mm.find_vma(addr)
        return vma is not None and vma.vm_start <= addr

    # -- mappings -------------------------------------------------------------------------------
    @precondition(lambda self: self.host.procs)
    @rule(pi=idx, pages=st.integers(1, 8), mergeable=st.booleans())
    def mmap(self, pi: int, pages: int, mergeable: bool) -> None:
        self._mmap(pi, pages, mergeable)

    @precondition(lambda self: self._has_regions())
    @rule(pi=idx, ri=idx, sp=span)
    def munmap(self, pi: int, ri: int, sp: tuple[int, int]) -> None:
        self._munmap(pi, ri, sp)

    @precondition(lambda self: self._has_regions())
    @rule(
        pi=idx,
        ri=idx,
        sp=span,
        advice=st.sampled_from(["mergeable", "unmergeable", "dontneed"]),
    )
    def madvise(self, pi: int, ri: int, sp: tuple[int, int], advice: str) -> None:
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.madvise(proc, r.name, advice, start=pages.start, count=len(pages))
        if advice == "dontneed":
            for i in pages:
                addr = r.page_address(i)
                if self._mapped(proc, addr):
                    self.shadow[(proc, addr)] = ZERO_PAGE_BYTES

    # -- memory access --------------------------------------------------------------------------
    @precondition(lambda self: self._has_regions())
    @rule(pi=idx, ri=idx, sp=span, pattern=st.sampled_from(PATTERNS))
    def fill(self, pi: int, ri: int, sp: tuple[int, int], pattern: int | str) -> None:
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.fill(proc, r.name, pattern, start=pages.start, count=len(pages))
        for i in pages:
            addr = r.page_address(i)
            if self._mapped(proc, addr):
                self.shadow[(proc, addr)] = page_bytes(pattern, i, proc=proc, region=r.name)

    @precondition(lambda self: self._has_regions())
    @rule(
        pi=idx,
        ri=idx,
        sp=span,
        stride=st.integers(1, 3),
        value=st.sampled_from(VALUES),
        offset=st.sampled_from(OFFSETS),
    )
    def write(
        self, pi: int, ri: int, sp: tuple[int, int], stride: int, value: int, offset: int
    ) -> None:
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.write(
            proc, r.name, value, offset=offset, start=pages.start, count=len(pages), stride=stride
        )
        for i in pages[::stride]:
            addr = r.page_address(i)
            if self._mapped(proc, addr):
                self.shadow[(proc, addr)] = write_byte(self.shadow[(proc, addr)], offset, value)

    @precondition(lambda self: self._has_regions())
    @rule(pi=idx, ri=idx, sp=span)
    def read(self, pi: int, ri: int, sp: tuple[int, int]) -> None:
        proc, r = self._region(pi, ri)
        pages = self._range(r, sp)
        self.host.read(proc, r.name, start=pages.start, count=len(pages))

    # -- KSM ------------------------------------------------------------------------------------
    @rule(value=st.sampled_from(PAGES_TO_SCAN))
    def set_pages_to_scan(self, value: int) -> None:
        self.host.set_tunable("pages_to_scan", value)

    @rule(value=st.sampled_from(MAX_KERNEL_PAGES))
    def set_max_kernel_pages(self, value: int) -> None:
        self.host.set_tunable("max_kernel_pages", value)

    @rule()
    def ksmd_batch(self) -> None:
        sysfs = self.host.sysfs
        sysfs.write("run", 1)
        self.host.ksmd.batch()
        sysfs.write("run", 0)

    @rule(passes=st.integers(1, 2))
    def full_scan(self, passes: int = 1) -> None:
        self.host.scan(passes)

    @rule()
    def unmerge_all(self) -> None:
        self.host.unmerge_all()

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def model_invariants(self) -> None:
        self.steps += 1
        check_all(self.host.machine)
        c = self.host.counters()
        self.max_sharing = max(self.max_sharing, c["pages_sharing"])
        self.max_shared = max(self.max_shared, c["pages_shared"])

    @invariant()
    def ksm_structure(self) -> None:
        ksm = self.host.ksm
        machine = self.host.machine
        zone = machine.zone
        scan = ksm.ksm_scan
        head = ksm.ksm_mm_head
        slots = list(ksm.slots())
        # The slot hash and the list hold the same slots; MMF_VM_MERGEABLE marks them.
        assert len(slots) == len(ksm.mm_slots)
        assert {id(s) for s in slots} == {id(s) for s in ksm.mm_slots.values()}
        for mm in machine.tasks.values():
            assert bool(mm.flags & MMF_VM_MERGEABLE) == (mm in ksm.mm_slots), mm.name
        for mm in ksm.mm_slots:
            assert mm.pid in machine.tasks or mm.mm_users == 0, f"{mm.name}: lost slot"
        # Per-item facts: seqnr age, stable heads, anon_vma pins, per-mm merging counts.
        items: list[RmapItem] = [i for s in slots for i in ksm.rmap_items(s)]
        pins: Counter[int] = Counter()
        anon_vmas: dict[int, AnonVma] = {}
        merging: Counter[int] = Counter()
        volatile = 0
        for item in items:
            flags = item.address & (STABLE_FLAG | UNSTABLE_FLAG)
            assert flags != STABLE_FLAG | UNSTABLE_FLAG, item
            if flags == UNSTABLE_FLAG:
                age = (scan.seqnr - item.address) & SEQNR_MASK
                assert age in (0, 1), f"{item!r} of age {age}"
            elif flags == STABLE_FLAG:
                assert item.anon_vma is not None and not item.anon_vma.freed, item
                pins[id(item.anon_vma)] += 1
                anon_vmas[id(item.anon_vma)] = item.anon_vma
                merging[item.mm.pid] += 1
                # A stable item whose address maps a KSM page maps its own node's page.
                pte = item.mm.pte_get(item.address & PAGE_MASK)
                if pte_present(pte) and not pte_special(pte):
                    page = zone.pfn_to_page(pte_pfn(pte))
                    if PageKsm(page):
                        assert page_stable_node(page) is item.head, item
            else:
                assert item.address & ~PAGE_MASK == 0, item
                volatile += 1
        assert self.host.sysfs.read_int("pages_volatile") == volatile
        for mm in ksm.mm_slots:
            assert mm.ksm_merging_pages == merging[mm.pid], mm.name
        for mm in machine.tasks.values():
            for vma in mm.mmap:
                if vma.anon_vma is not None:
                    anon_vmas[id(vma.anon_vma)] = vma.anon_vma
        for key, anon_vma in anon_vmas.items():
            assert anon_vma.ksm_refcount == pins[key], anon_vma
        # Mapped KSM pages and their nodes point at each other.
        for mm in machine.tasks.values():
            for _, pte in mm.all_ptes():
                if pte_present(pte) and not pte_special(pte):
                    page = zone.pfn_to_page(pte_pfn(pte))
                    if PageKsm(page):
                        node = page_stable_node(page)
                        assert isinstance(node, StableNode) and node.page is page
        # Mid-pass, the unstable tree is exactly the items inserted in this pass, and the
        # cursor sits just past the item it returned last.
        if scan.mm_slot is not head:
            validate_rbtree(ksm.root_unstable_tree)
            current = {
                id(i)
                for i in items
                if i.address & UNSTABLE_FLAG and (scan.seqnr - i.address) & SEQNR_MASK == 0
            }
            assert {id(n) for n in rb_iter(ksm.root_unstable_tree)} == current
            assert scan.mm_slot in slots
            last = scan.rmap_list
            assert isinstance(last, RmapItem) and last.mm is scan.mm_slot.mm
            assert any(i is last for i in ksm.rmap_items(scan.mm_slot))
            assert scan.address == (last.address & PAGE_MASK) + PAGE_SIZE
        else:
            assert not any(
                i.address & UNSTABLE_FLAG and (scan.seqnr - i.address) & SEQNR_MASK == 0
                for i in items
            ), "between passes no item can belong to a pass not yet started"


TestKsmStateMachine = KsmStateMachine.TestCase


def test_typical_run_merges_pages() -> None:
    """The rules are not vacuous: a fixed, plausible sequence of them reaches pages_sharing > 0,
    unmerges, re-merges, and keeps every invariant on the way."""
    m = KsmStateMachine()
    steps = 0

    def check() -> None:
        nonlocal steps
        steps += 1
        m.model_invariants()
        m.memory_reads_back_its_shadow()
        m.ksm_structure()

    m.spawn()  # p0
    check()
    m.mmap(0, 6, True)
    check()
    m.fill(0, 0, (0, 6), 0x11)
    check()
    m.spawn()  # p1
    check()
    m.mmap(1, 4, True)
    check()
    m.fill(1, 0, (0, 4), "repeat:3")
    check()
    m.set_pages_to_scan(3)
    check()
    for _ in range(8):
        m.ksmd_batch()
        check()
    assert m.host.counters()["pages_sharing"] > 0
    sharing = m.host.counters()["pages_sharing"]
    m.fork(0)  # p2 maps p0's KSM pages
    check()
    m.write(0, 0, (0, 6), 2, 0x22, 2048)  # COW some KSM pages
    check()
    m.munmap(1, 0, (1, 1))
    check()
    m.full_scan()
    check()
    m.full_scan()
    check()
    assert m.host.counters()["pages_sharing"] >= sharing
    m.madvise(0, 0, (2, 3), "dontneed")
    check()
    m.unmerge_all()
    check()
    assert m.host.counters()["pages_sharing"] == 0
    m.full_scan()
    m.full_scan()
    check()
    assert m.host.counters()["pages_sharing"] > 0
    m.exit(0)
    check()
    m.teardown()
    assert m.max_sharing > 0 and m.max_shared > 0
    assert steps > 20
