"""Unit tests of ksmsim.kernel.ksm at the keyhole commit (4035c07a), structure by structure.

Each test drives the model through ``Host`` (and, where the cursor has to stop in the middle of
a pass, through ``Ksm.ksm_do_scan`` with a small batch) and asserts exact counters, flags and
list/tree structure as described in ksm-kernel-notes.md sections 1-8 and 10.
"""

from __future__ import annotations

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.jhash import calc_checksum_jhash2
from ksmsim.kernel.ksm import (
    SEQNR_MASK,
    STABLE_FLAG,
    UNSTABLE_FLAG,
    Ksm,
    MmSlot,
    RmapItem,
    StableNode,
)
from ksmsim.kernel.mm import MMF_VM_MERGEABLE, pte_pfn, pte_present, pte_write
from ksmsim.kernel.page import (
    PAGE_MAPPING_ANON,
    PAGE_MASK,
    Page,
    PageAnon,
    PageKsm,
    get_page,
)
from ksmsim.kernel.rbtree import rb_iter, validate_rbtree
from ksmsim.workload.host import Host
from ksmsim.workload.patterns import page_bytes

Counts = tuple[int, int, int, int]


# -- helpers --------------------------------------------------------------------------------------
def make_host(ram_pages: int = 4096, *, check: bool = True) -> Host:
    host = Host("keyhole", ram_pages=ram_pages, check=check)
    host.set_tunable("pages_to_scan", 1_000_000)
    return host


def counts(host: Host) -> Counts:
    """Return (pages_shared, pages_sharing, pages_unshared, pages_volatile) as sysfs reads them."""
    c = host.counters()
    return c["pages_shared"], c["pages_sharing"], c["pages_unshared"], c["pages_volatile"]


def scan(host: Host, passes: int = 1) -> Counts:
    assert host.scan(passes)
    check_all(host.machine)
    return counts(host)


def batch(host: Host, n: int) -> None:
    """Run one ksm_do_scan(n) (what one ksmd batch does), then check every invariant."""
    host.ksm.ksm_do_scan(n)
    check_all(host.machine)


def proc_with(host: Host, proc: str, region: str, pages: int, pattern: int | str) -> None:
    if proc not in host.procs:
        host.spawn(proc)
    host.mmap(proc, region, pages)
    host.fill(proc, region, pattern)


def order(host: Host) -> list[str]:
    """Return the names of the registered mms in ksmd's scan order."""
    return [s.mm.name for s in host.ksm.slots() if s.mm is not None]


def slot_of(host: Host, proc: str) -> MmSlot:
    return host.ksm.mm_slots[host.proc(proc).mm]


def items_of(host: Host, proc: str) -> list[RmapItem]:
    return list(host.ksm.rmap_items(slot_of(host, proc)))


def addr_of(host: Host, proc: str, region: str, index: int = 0) -> int:
    return host.region(proc, region).page_address(index)


def page_at(host: Host, proc: str, region: str, index: int = 0) -> Page:
    pte = host.proc(proc).mm.pte_get(addr_of(host, proc, region, index))
    assert pte_present(pte)
    return host.machine.zone.pfn_to_page(pte_pfn(pte))


def item_at(host: Host, proc: str, region: str, index: int = 0) -> RmapItem:
    addr = addr_of(host, proc, region, index)
    found = [i for i in items_of(host, proc) if i.address & PAGE_MASK == addr]
    assert len(found) == 1, f"no single rmap_item for {proc}:{region}[{index}]"
    return found[0]


def flags(item: RmapItem) -> str:
    return ("S" if item.address & STABLE_FLAG else "") + (
        "U" if item.address & UNSTABLE_FLAG else ""
    ) or "-"


def stable_nodes(ksm: Ksm) -> list[StableNode]:
    nodes = []
    for n in rb_iter(ksm.root_stable_tree):
        assert isinstance(n, StableNode)
        nodes.append(n)
    return nodes


def unstable_items(ksm: Ksm) -> list[RmapItem]:
    nodes = []
    for n in rb_iter(ksm.root_unstable_tree):
        assert isinstance(n, RmapItem)
        nodes.append(n)
    return nodes


# -- the mm_slot list -----------------------------------------------------------------------------
def test_mms_registered_while_idle_go_to_the_tail_in_order() -> None:
    host = make_host()
    assert host.ksm.ksmd_wakeups == 0
    for name in "ABC":
        proc_with(host, name, "r", 1, ord(name))
    assert order(host) == ["A", "B", "C"]
    # Only the registration that made the list non-empty wakes ksmd.
    assert host.ksm.ksmd_wakeups == 1
    assert all(host.proc(n).mm.flags & MMF_VM_MERGEABLE for n in "ABC")
    # A second MADV_MERGEABLE area of a registered mm does not register it again.
    host.mmap("A", "r2", 1)
    assert order(host) == ["A", "B", "C"]
    assert len(host.ksm.mm_slots) == 3
    scan(host)
    # Between passes the cursor is at the head: a new mm still goes to the tail.
    assert host.ksm.ksm_scan.mm_slot is host.ksm.ksm_mm_head
    proc_with(host, "D", "r", 1, ord("D"))
    assert order(host) == ["A", "B", "C", "D"]


def test_mm_registered_mid_pass_goes_just_behind_the_cursor() -> None:
    host = make_host()
    for name in "ABC":
        proc_with(host, name, "r", 2, "unique")
    scan(host)
    # Two pages of A, then B's first page: the cursor stops inside B.
    batch(host, 3)
    cursor = host.ksm.ksm_scan
    assert cursor.mm_slot is slot_of(host, "B")
    assert cursor.address == addr_of(host, "B", "r", 1)
    assert cursor.rmap_list is item_at(host, "B", "r", 0)
    proc_with(host, "D", "r", 2, "unique")
    assert order(host) == ["A", "D", "B", "C"]
    # The rest of this pass (B, C) does not see D.
    batch(host, 1_000)
    assert host.counters()["full_scans"] == 2
    assert items_of(host, "D") == []
    assert host.proc("D").mm.ksm_rmap_items == 0
    # The next pass reaches D after A and before B, near its end.
    batch(host, 3)
    assert cursor.mm_slot is slot_of(host, "D")
    assert len(items_of(host, "D")) == 1
    assert [len(items_of(host, n)) for n in "ABC"] == [2, 2, 2]
    batch(host, 1_000)
    assert host.counters()["full_scans"] == 3
    assert len(items_of(host, "D")) == 2


def test_exiting_mm_with_items_moves_just_after_the_cursor() -> None:
    host = make_host()
    for name in "ABCD":
        proc_with(host, name, "r", 2, "unique")
    scan(host)
    assert host.ksm.ksm_rmap_items == 8
    batch(host, 1)  # cursor inside A
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "A")
    d_slot = slot_of(host, "D")
    d_mm = host.proc("D").mm
    host.exit("D")
    assert order(host) == ["A", "D", "B", "C"]
    assert d_mm.mm_users == 0
    assert host.ksm.mm_slots[d_mm] is d_slot, "the slot stays until ksmd reaches it"
    assert host.ksm.ksm_rmap_items == 8, "items are freed by ksmd, not at exit"
    assert counts(host) == (0, 0, 1, 7)
    # One more page: A's second page. Then the next call tears D down and frees its slot.
    batch(host, 1)
    assert order(host) == ["A", "D", "B", "C"]
    batch(host, 1)
    assert order(host) == ["A", "B", "C"]
    assert d_mm not in host.ksm.mm_slots
    assert not d_mm.flags & MMF_VM_MERGEABLE
    assert d_slot.rmap_list is None
    assert host.ksm.ksm_rmap_items == 6
    assert d_mm.ksm_rmap_items == 0
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "B")
    assert counts(host) == (0, 0, 3, 3)


def test_exiting_mm_while_idle_moves_to_the_front() -> None:
    """With the cursor at the head, "just after the cursor" is the first place of the list."""
    host = make_host()
    for name in "ABC":
        proc_with(host, name, "r", 1, "unique")
    scan(host)
    host.exit("C")
    assert order(host) == ["C", "A", "B"]
    batch(host, 1)  # the pass starts by tearing C down, then returns A's page
    assert order(host) == ["A", "B"]
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "A")
    assert host.ksm.ksm_rmap_items == 2


def test_exiting_mm_without_items_is_freed_at_once() -> None:
    host = make_host()
    for name in "AB":
        proc_with(host, name, "r", 1, "unique")
    scan(host)
    batch(host, 1)  # mid-pass, cursor at A
    proc_with(host, "E", "r", 3, "unique")  # registered, never scanned: no rmap_items
    assert order(host) == ["E", "A", "B"]
    e_mm = host.proc("E").mm
    count_before = e_mm.mm_count
    host.exit("E")
    assert order(host) == ["A", "B"]
    assert e_mm not in host.ksm.mm_slots
    assert not e_mm.flags & MMF_VM_MERGEABLE
    assert e_mm.mm_count == count_before - 2, "ksm's mm_count reference and the last one"


def test_exiting_cursor_mm_stays_put_and_is_torn_down_next() -> None:
    host = make_host()
    for name in "AB":
        proc_with(host, name, "r", 3, "unique")
    scan(host)
    batch(host, 1)
    a_mm = host.proc("A").mm
    host.exit("A")
    assert order(host) == ["A", "B"]
    assert host.ksm.ksm_scan.mm_slot is host.ksm.mm_slots[a_mm]
    assert host.ksm.ksm_rmap_items == 6
    batch(host, 1)  # A is exiting: all its items go, its slot goes, B's first page is returned
    assert order(host) == ["B"]
    assert host.ksm.ksm_rmap_items == 3
    assert a_mm.ksm_rmap_items == 0


def test_mm_without_mergeable_areas_leaves_at_the_end_of_a_whole_pass() -> None:
    host = make_host()
    for name in "AB":
        proc_with(host, name, "r", 2, "unique")
    host.mmap("A", "r2", 2)
    host.fill("A", "r2", "unique")
    scan(host)
    assert host.ksm.ksm_rmap_items == 6
    # Stop inside A (address > 0 there), then make every area of A unmergeable.
    batch(host, 1)
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "A")
    assert host.ksm.ksm_scan.address > 0
    host.madvise("A", "r", "unmergeable")
    host.madvise("A", "r2", "unmergeable")
    # The pass resumed in the middle of A: the items past the cursor are pruned, the one
    # before it stays, and so does the slot.
    kept = items_of(host, "A")[0]
    batch(host, 1_000)
    assert host.counters()["full_scans"] == 2
    assert order(host) == ["A", "B"]
    assert items_of(host, "A") == [kept]
    assert host.proc("A").mm.flags & MMF_VM_MERGEABLE
    # The next pass starts at A's beginning and finds nothing mergeable: A leaves.
    a_mm = host.proc("A").mm
    mm_count = a_mm.mm_count
    batch(host, 1_000)
    assert order(host) == ["B"]
    assert not a_mm.flags & MMF_VM_MERGEABLE
    assert a_mm.mm_count == mm_count - 1
    assert host.ksm.ksm_rmap_items == 2
    # MADV_MERGEABLE registers it again, at the tail (idle).
    host.madvise("A", "r", "mergeable")
    assert order(host) == ["B", "A"]


def test_mm_with_only_untouched_mergeable_area_stays_registered() -> None:
    """A VM_MERGEABLE area without anon_vma is skipped whole, yet counts as mergeable."""
    host = make_host()
    host.spawn("A")
    host.mmap("A", "r", 4)
    host.read("A", "r")  # zero-page ptes only: never scanned
    assert scan(host, 3) == (0, 0, 0, 0)
    assert order(host) == ["A"]
    assert host.ksm.ksm_rmap_items == 0
    assert host.counters()["full_scans"] == 3


# -- rmap_items -----------------------------------------------------------------------------------
def test_rmap_items_sorted_by_address_across_regions() -> None:
    host = make_host()
    host.spawn("P")
    for name in ("a", "b", "c"):
        host.mmap("P", name, 3)
        host.fill("P", name, "unique")
    # Leave holes: only even pages of d get an anonymous page (the zero page elsewhere).
    host.mmap("P", "d", 4)
    host.write("P", "d", 7, stride=2)
    host.read("P", "d")
    scan(host)
    items = items_of(host, "P")
    addrs = [i.address & PAGE_MASK for i in items]
    assert addrs == sorted(addrs)
    assert len(items) == 9 + 2
    assert host.ksm.ksm_rmap_items == 11
    assert host.proc("P").mm.ksm_rmap_items == 11
    expected = sorted(
        [addr_of(host, "P", r, i) for r in ("a", "b", "c") for i in range(3)]
        + [addr_of(host, "P", "d", 0), addr_of(host, "P", "d", 2)]
    )
    assert addrs == expected
    # Every item seen once: flagless, with its page's checksum recorded.
    for item in items:
        assert item.address & ~PAGE_MASK == 0
        page = host.machine.zone.pfn_to_page(pte_pfn(host.proc("P").mm.pte_get(item.address)))
        assert page.data is not None
        assert item.oldchecksum == calc_checksum_jhash2(page.data)
    # A page faulted into a hole later gets a new item linked in at its place.
    host.write("P", "d", 7, start=1, count=1)
    d0, d2 = item_at(host, "P", "d", 0), item_at(host, "P", "d", 2)
    scan(host)
    d1 = item_at(host, "P", "d", 1)
    assert d0.rmap_list is d1 and d1.rmap_list is d2
    assert d1.oldchecksum != 0 and flags(d1) == "-"
    assert host.ksm.ksm_rmap_items == 12


def test_skipped_middle_address_prunes_its_item_when_the_scan_passes_it() -> None:
    host = make_host()
    proc_with(host, "P", "r", 5, "unique")
    scan(host)
    assert host.ksm.ksm_rmap_items == 5
    doomed = item_at(host, "P", "r", 2)
    host.munmap("P", "r", start=2, count=1)
    assert host.ksm.ksm_rmap_items == 5, "munmap does not touch rmap_items"
    batch(host, 2)  # pages 0 and 1
    assert host.ksm.ksm_rmap_items == 5
    assert doomed in items_of(host, "P")
    batch(host, 1)  # asks for page 3: the item for page 2 is pruned on the way
    assert host.ksm.ksm_rmap_items == 4
    assert host.proc("P").mm.ksm_rmap_items == 4
    assert doomed not in items_of(host, "P")
    assert [i.address & PAGE_MASK for i in items_of(host, "P")] == [
        addr_of(host, "P", "r", i) for i in (0, 1, 3, 4)
    ]
    assert host.ksm.ksm_scan.rmap_list is item_at(host, "P", "r", 3)
    assert counts(host) == (0, 0, 3, 1)


def test_pruning_an_unstable_item_uncounts_it() -> None:
    host = make_host()
    proc_with(host, "P", "r", 3, "unique")
    assert scan(host, 2) == (0, 0, 3, 0)
    host.madvise("P", "r", "dontneed", start=1, count=1)
    host.read("P", "r", start=1, count=1)  # now the zero page: not scanned
    batch(host, 2)  # page 0 re-inserted; page 2's request prunes page 1's item
    assert host.ksm.ksm_rmap_items == 2
    assert counts(host) == (0, 0, 2, 0)


def test_remove_trailing_rmap_items_at_the_end_of_an_mm() -> None:
    host = make_host()
    proc_with(host, "P", "r", 5, "unique")
    proc_with(host, "Q", "r", 1, "unique")
    scan(host)
    host.munmap("P", "r", start=3, count=2)
    batch(host, 3)  # P's pages 0..2; the cursor still sits inside P
    assert host.ksm.ksm_rmap_items == 6
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "P")
    batch(host, 1)  # P has nothing more: items 3 and 4 go; Q's page is returned
    assert host.ksm.ksm_rmap_items == 4
    assert [i.address & PAGE_MASK for i in items_of(host, "P")] == [
        addr_of(host, "P", "r", i) for i in range(3)
    ]
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "Q")


def test_zero_page_and_unmapped_addresses_cost_nothing_against_the_batch() -> None:
    host = make_host()
    host.spawn("P")
    host.mmap("P", "r", 10)
    host.read("P", "r")
    host.write("P", "r", 1, start=3, count=1)
    host.write("P", "r", 2, start=8, count=1)
    before = host.ksm.work.scanned
    batch(host, 2)  # exactly the two anonymous pages: the pass has not ended yet
    assert host.ksm.work.scanned - before == 2
    assert host.counters()["full_scans"] == 0
    assert host.ksm.ksm_rmap_items == 2
    batch(host, 2)  # nothing left: the first call ends the pass and the batch
    assert host.ksm.work.scanned - before == 2
    assert host.counters()["full_scans"] == 1


def test_batch_ends_early_at_the_end_of_a_pass() -> None:
    host = make_host()
    proc_with(host, "P", "r", 3, "unique")
    host.sysfs.write("run", 1)
    for expected in (1, 2, 3):
        scanned = host.ksm.work.scanned
        host.ksmd.batch()
        assert host.counters()["full_scans"] == expected, "one pass per batch, not more"
        assert host.ksm.work.scanned - scanned == 3
    # With pages_to_scan equal to the page count the end of pass is met only by the next call.
    host.set_tunable("pages_to_scan", 3)
    host.ksmd.batch()
    assert host.counters()["full_scans"] == 3
    scanned = host.ksm.work.scanned
    host.ksmd.batch()
    assert host.counters()["full_scans"] == 4
    assert host.ksm.work.scanned == scanned
    host.sysfs.write("run", 0)
    check_all(host.machine)


def test_empty_list_ends_a_batch_without_counting_a_pass() -> None:
    host = make_host()
    host.ksm.ksm_do_scan(100)
    assert host.counters()["full_scans"] == 0
    assert host.ksm.ksm_scan.mm_slot is host.ksm.ksm_mm_head


def test_new_pass_resets_the_unstable_tree_but_not_pages_unshared() -> None:
    host = make_host()
    proc_with(host, "P", "r", 3, "unique")
    assert scan(host, 2) == (0, 0, 3, 0)
    ksm = host.ksm
    assert len(unstable_items(ksm)) == 3
    seqnr = ksm.ksm_scan.seqnr
    for item in items_of(host, "P"):
        assert item.address & UNSTABLE_FLAG
        assert item.address & SEQNR_MASK == (seqnr - 1) & SEQNR_MASK
    batch(host, 1)  # the new pass starts: the tree is dropped in O(1)
    # Page 0 was revisited: removed (age 1, no rb_erase) and reinserted into the new tree.
    assert unstable_items(ksm) == [item_at(host, "P", "r", 0)]
    assert item_at(host, "P", "r", 0).address & SEQNR_MASK == seqnr & SEQNR_MASK
    # Pages 1 and 2 still count although their tree is gone.
    assert counts(host) == (0, 0, 3, 0)
    assert item_at(host, "P", "r", 1).address & SEQNR_MASK == (seqnr - 1) & SEQNR_MASK


# -- oldchecksum ----------------------------------------------------------------------------------
def test_oldchecksum_is_zero_for_a_new_item_and_set_on_first_visit() -> None:
    host = make_host()
    proc_with(host, "P", "r", 1, "zero")
    item = RmapItem(host.proc("P").mm, addr_of(host, "P", "r"))
    assert item.oldchecksum == 0
    assert scan(host) == (0, 0, 0, 1), "a new item always needs a second visit"
    assert item_at(host, "P", "r").oldchecksum == 0x31CBE0FA  # jhash2 of a zero page


def test_oldchecksum_survives_stable_membership() -> None:
    """Merge a pair, COW-write the same bytes back in both mappers, and they pair up again in
    a single pass: their checksum from before the merge is still there to match."""
    host = make_host()
    proc_with(host, "A", "r", 1, ord("X"))
    proc_with(host, "B", "r", 1, ord("X"))
    assert scan(host, 2) == (1, 1, 0, 0)
    x_sum = calc_checksum_jhash2(page_bytes(ord("X"), 0, proc="A", region="r"))
    assert item_at(host, "A", "r").oldchecksum == x_sum
    assert item_at(host, "B", "r").oldchecksum == x_sum
    kpage = page_at(host, "A", "r")
    assert PageKsm(kpage)
    # Same bytes back: a COW copy each, equal contents; the KSM page is freed.
    host.write("A", "r", ord("X"))
    host.write("B", "r", ord("X"))
    assert host.memory()["ksm_pages"] == 0
    assert not PageKsm(page_at(host, "A", "r"))
    assert counts(host) == (1, 1, 0, 0)
    # A's revisit finds the node stale; checksum unchanged -> unstable; B pairs with it.
    assert scan(host) == (1, 1, 0, 0)
    assert host.memory()["ksm_pages"] == 1
    assert page_at(host, "A", "r") is page_at(host, "B", "r")
    assert item_at(host, "A", "r").oldchecksum == x_sum


# -- the stable tree ------------------------------------------------------------------------------
def test_two_page_merge_builds_a_node_with_both_items() -> None:
    host = make_host()
    proc_with(host, "A", "r", 1, ord("X"))
    proc_with(host, "B", "r", 1, ord("X"))
    scan(host)
    a_page, b_page = page_at(host, "A", "r"), page_at(host, "B", "r")
    assert scan(host) == (1, 1, 0, 0)
    (node,) = stable_nodes(host.ksm)
    kpage = node.page
    assert kpage is not None
    # The keyhole commit still allocates a fresh KSM page and frees both originals.
    assert kpage is not a_page and kpage is not b_page
    assert page_at(host, "A", "r") is kpage and page_at(host, "B", "r") is kpage
    assert kpage.mapping is node and kpage.mapping_flags == 3
    assert (kpage.mapcount, kpage.count) == (2, 2), "no reference held by the node"
    assert not pte_write(host.proc("A").mm.pte_get(addr_of(host, "A", "r")))
    # hlist_add_head: B was appended last, so it is first.
    assert list(node.items()) == [item_at(host, "B", "r"), item_at(host, "A", "r")]
    for name in "AB":
        item = item_at(host, name, "r")
        assert flags(item) == "S" and item.head is node
        assert item.anon_vma is host.proc(name).mm.find_vma(item.address).anon_vma  # type: ignore[union-attr]
        assert item.anon_vma is not None and item.anon_vma.ksm_refcount == 1
        assert host.proc(name).mm.ksm_merging_pages == 1
    assert unstable_items(host.ksm) == []


def test_stable_ksm_items_are_skipped_outright() -> None:
    host = make_host()
    proc_with(host, "P", "r", 4, ord("X"))
    assert scan(host, 2) == (1, 3, 0, 0)
    work = host.ksm.work
    before = work.as_dict()
    assert scan(host) == (1, 3, 0, 0)
    after = work.as_dict()
    assert after["scanned"] - before["scanned"] == 4
    for key in ("checksums", "memcmps", "merges", "items_allocated", "break_cows"):
        assert after[key] == before[key], key


def test_late_page_merges_into_stable_tree_on_its_first_visit() -> None:
    host = make_host()
    proc_with(host, "P", "r", 2, ord("X"))
    scan(host, 2)
    proc_with(host, "C", "r", 1, ord("X"))
    item_count = host.ksm.ksm_rmap_items
    assert scan(host) == (1, 2, 0, 0)
    assert host.ksm.ksm_rmap_items == item_count + 1
    assert flags(item_at(host, "C", "r")) == "S"
    assert item_at(host, "C", "r").oldchecksum == 0, "the stable path computes no checksum"


def test_forked_ksm_pages_merge_on_the_childs_first_visit() -> None:
    host = make_host()
    proc_with(host, "P", "r", 4, ord("X"))
    assert scan(host, 2) == (1, 3, 0, 0)
    (node,) = stable_nodes(host.ksm)
    host.fork("P", "C")
    assert order(host) == ["P", "C"]
    assert items_of(host, "C") == [], "rmap_items are not copied at fork"
    kpage = node.page
    assert kpage is not None and kpage.mapcount == 8
    memcmps = host.ksm.work.memcmps
    checksums = host.ksm.work.checksums
    assert scan(host) == (1, 7, 0, 0)
    assert host.ksm.work.memcmps == memcmps, "page_stable_node() short-cut: no comparison"
    assert host.ksm.work.checksums == checksums
    assert node.hlist_len == 8
    assert all(flags(i) == "S" and i.head is node for i in items_of(host, "C"))
    anon_vma = host.proc("P").mm.find_vma(addr_of(host, "P", "r")).anon_vma  # type: ignore[union-attr]
    assert anon_vma is not None
    assert anon_vma.ksm_refcount == 8, "2.6.33: the child shares the parent's anon_vma"
    assert host.proc("C").mm.ksm_merging_pages == 4


def test_node_with_empty_hlist_stays_while_a_forked_child_maps_it() -> None:
    host = make_host()
    proc_with(host, "A", "r", 1, ord("X"))
    proc_with(host, "B", "r", 1, ord("X"))
    assert scan(host, 2) == (1, 1, 0, 0)
    (node,) = stable_nodes(host.ksm)
    host.fork("A", "C")  # C maps the KSM page, has no item
    host.write("A", "r", ord("Y"))
    host.write("B", "r", ord("Z"))
    assert host.memory()["ksm_pages"] == 1
    batch(host, 2)  # A: sharing-- ; B: the hlist empties: shared--
    assert counts(host) == (0, 0, 0, 2)
    assert stable_nodes(host.ksm) == [node]
    assert node.hlist is None and node.hlist_len == 0
    assert node.page is not None and node.page.mapping is node
    batch(host, 1)  # C's forked KSM page: appended onto the empty hlist -> shared++
    assert counts(host) == (1, 0, 0, 2)
    assert list(node.items()) == [item_at(host, "C", "r")]


def test_stable_path_merge_appends_at_the_head_and_counts_sharing() -> None:
    host = make_host()
    proc_with(host, "P", "r", 3, ord("X"))
    scan(host)
    batch(host, 2)  # page 0 into the unstable tree, page 1 pairs with it
    assert counts(host) == (1, 1, 0, 1)
    (node,) = stable_nodes(host.ksm)
    batch(host, 1)  # page 2 finds the node by content
    assert counts(host) == (1, 2, 0, 0)
    assert node.hlist is item_at(host, "P", "r", 2)


def test_write_to_a_ksm_page_always_copies_even_at_mapcount_one() -> None:
    host = make_host()
    proc_with(host, "A", "r", 1, ord("X"))
    proc_with(host, "B", "r", 1, ord("X"))
    scan(host, 2)
    kpage = page_at(host, "A", "r")
    host.write("A", "r", ord("X"))
    assert page_at(host, "A", "r") is not kpage
    assert kpage.mapcount == 1 and PageKsm(kpage)
    host.write("B", "r", ord("X"))
    b_page = page_at(host, "B", "r")
    assert b_page is not kpage, "do_wp_page never reuses a KSM page"
    assert PageAnon(b_page) and not PageKsm(b_page)
    assert pte_write(host.proc("B").mm.pte_get(addr_of(host, "B", "r")))
    assert host.machine.vmstat["cow_ksm"] == 2
    assert kpage.count == 0 and kpage.mapping is None  # freed at once (keyhole)


# -- the keyhole ----------------------------------------------------------------------------------
def test_keyhole_frees_ksm_page_at_once_and_counters_lag() -> None:
    host = make_host()
    proc_with(host, "P", "r", 4, ord("X"))
    assert scan(host, 2) == (1, 3, 0, 0)
    (node,) = stable_nodes(host.ksm)
    kpage = node.page
    assert kpage is not None
    assert host.memory()["ksm_pages"] == 1
    host.write("P", "r", ord("Y"))
    assert host.memory()["ksm_pages"] == 0
    assert kpage.count == 0 and kpage.mapping is None and kpage.mapping_flags == 0
    assert host.machine.zone.is_free(kpage)
    # Nothing is reconciled yet: the node, its four items and the counters are as they were.
    assert counts(host) == (1, 3, 0, 0)
    assert stable_nodes(host.ksm) == [node] and node.page is kpage
    assert node.hlist_len == 4
    # The first item ksmd meets finds the node stale and drops it with all four items.
    batch(host, 1)
    assert counts(host) == (0, 0, 0, 4)
    assert stable_nodes(host.ksm) == []
    assert node.hlist is None and node.page is None
    for item in items_of(host, "P"):
        assert flags(item) == "-"
        assert item.anon_vma is not None and item.anon_vma.ksm_refcount == 0
    assert host.proc("P").mm.ksm_merging_pages == 0


def test_stale_node_counters_drop_in_one_step_for_many_items() -> None:
    host = make_host()
    proc_with(host, "A", "r", 3, ord("X"))
    proc_with(host, "B", "r", 2, ord("X"))
    proc_with(host, "Q", "r", 1, "unique")
    assert scan(host, 2) == (1, 4, 1, 0)
    host.write("A", "r", 1)
    host.write("B", "r", 2)
    assert counts(host) == (1, 4, 1, 0)
    # The first item ksmd meets (A's first page) drops the node: -1 shared, -4 sharing.
    batch(host, 1)
    assert counts(host) == (0, 0, 1, 5)


def test_get_ksm_page_detects_a_freed_and_reallocated_frame_by_its_mapping() -> None:
    host = make_host()
    proc_with(host, "A", "r", 1, ord("X"))
    proc_with(host, "B", "r", 1, ord("X"))
    assert scan(host, 2) == (1, 1, 0, 0)
    (node,) = stable_nodes(host.ksm)
    kframe = node.page
    assert kframe is not None
    host.write("A", "r", 1)
    host.write("B", "r", 2)
    assert host.machine.zone.is_free(kframe)
    # The hot allocator hands the frame to the very next allocation: C's page, same contents.
    proc_with(host, "C", "r", 1, ord("X"))
    c_page = page_at(host, "C", "r")
    assert c_page is kframe
    assert node.page is kframe and c_page.count == 1
    assert c_page.data == page_bytes(ord("X"), 0, proc="C", region="r")
    assert c_page.mapping is not node and c_page.mapping_flags == PAGE_MAPPING_ANON
    # Count and contents would pass; the mapping (the keyhole) says the node is stale.
    assert host.ksm.get_ksm_page(node) is None
    assert c_page.count == 1, "no reference left behind"
    assert stable_nodes(host.ksm) == []
    assert counts(host) == (0, 0, 0, 2)
    assert not PageKsm(c_page)
    check_all(host.machine)


def test_get_ksm_page_on_a_live_node_takes_a_reference() -> None:
    host = make_host()
    proc_with(host, "A", "r", 2, ord("X"))
    scan(host, 2)
    (node,) = stable_nodes(host.ksm)
    kpage = node.page
    assert kpage is not None
    assert host.ksm.get_ksm_page(node) is kpage
    assert kpage.count == 3
    host.machine.zone.put_page(kpage)
    check_all(host.machine)


def test_failed_stable_insert_breaks_cow_on_both_pages() -> None:
    """A stable search aborted by a stale node leaves another stale node on the insert path.

    Stable tree: M (root) with P as right child. Q's page Z entered the unstable tree in this
    pass while M and P were alive; then every mapper of M and of P writes. R's page Z: the
    search meets stale M (pruned, abort); the unstable search pairs R with Q into a new KSM
    page; its insert meets stale P (now the root) and fails, so both ptes are COW-broken.
    """
    host = make_host()
    proc_with(host, "A", "m", 2, ord("M"))
    proc_with(host, "B", "p", 2, ord("P"))
    assert scan(host, 2) == (2, 2, 0, 0)
    root = host.ksm.root_stable_tree.rb_node
    assert isinstance(root, StableNode) and root.page is not None
    assert root.page.data is not None and root.page.data[:1] == b"M"
    assert isinstance(root.rb_right, StableNode)
    proc_with(host, "Q", "r", 1, ord("Z"))
    proc_with(host, "R", "r", 1, ord("Z"))
    assert scan(host) == (2, 2, 0, 2)
    batch(host, 5)  # A's and B's KSM pages are skipped; Q goes into the unstable tree
    assert counts(host) == (2, 2, 1, 1)
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "Q")
    host.write("A", "m", 0)
    host.write("B", "p", 0)
    assert host.memory()["ksm_pages"] == 0
    breaks = host.ksm.work.break_cows
    kpages = host.ksm.work.kpage_copies
    batch(host, 1)  # R
    assert host.ksm.work.kpage_copies == kpages + 1, "the two pages were merged..."
    assert host.ksm.work.break_cows == breaks + 2, "...and both broken again"
    assert stable_nodes(host.ksm) == []
    assert counts(host) == (0, 0, 0, 6)
    assert host.memory()["ksm_pages"] == 0
    for name in "QR":
        item = item_at(host, name, "r")
        assert flags(item) == "-"
        page = page_at(host, name, "r")
        assert not PageKsm(page) and page.mapcount == 1
        assert page.data == page_bytes(ord("Z"), 0, proc=name, region="r")
        assert item.anon_vma is not None and item.anon_vma.ksm_refcount == 0
    assert page_at(host, "Q", "r") is not page_at(host, "R", "r")
    # Nothing is lost: the next pass pairs Q and R for good.
    batch(host, 1_000)  # only ends the pass
    assert host.counters()["full_scans"] == 4
    assert scan(host) == (1, 1, 0, 4)
    assert page_at(host, "Q", "r") is page_at(host, "R", "r")


# -- the unstable tree ----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["munmap", "dontneed", "dontneed+read", "unmergeable"])
def test_unstable_search_aborts_on_a_vanished_address(how: str) -> None:
    host = make_host()
    proc_with(host, "U", "r", 1, ord("U"))
    proc_with(host, "S", "r", 1, ord("S"))
    assert scan(host) == (0, 0, 0, 2)
    batch(host, 1)  # U goes into the unstable tree
    u_item = item_at(host, "U", "r")
    assert unstable_items(host.ksm) == [u_item]
    assert counts(host) == (0, 0, 1, 1)
    if how == "munmap":
        host.munmap("U", "r")
    elif how == "unmergeable":
        host.madvise("U", "r", "unmergeable")
    else:
        host.madvise("U", "r", "dontneed")
        if how == "dontneed+read":
            host.read("U", "r")  # the zero page is not anonymous
    memcmps = host.ksm.work.memcmps
    s_sum = item_at(host, "S", "r").oldchecksum
    batch(host, 1)  # S: checksum unchanged, but the walk meets U's vanished page first
    s_item = item_at(host, "S", "r")
    assert flags(s_item) == "-"
    assert s_item.oldchecksum == s_sum
    assert unstable_items(host.ksm) == [u_item], "S was not inserted"
    assert host.ksm.work.memcmps == memcmps
    assert counts(host) == (0, 0, 1, 1)
    batch(host, 1_000)  # ends the pass
    # The next pass drops U's item (its address is not scanned) and S enters the tree.
    assert scan(host) == (0, 0, 1, 0)
    assert flags(item_at(host, "S", "r")) == "U"
    if how in ("munmap", "unmergeable"):
        assert order(host) == ["S"], "no mergeable area left: U's slot went too"
    else:
        assert order(host) == ["U", "S"] and items_of(host, "U") == []


def test_exiting_mm_unstable_items_are_erased_before_anyone_meets_them() -> None:
    """An exiting mm's slot moves just after the cursor, so ksmd tears it down (rb_erasing its
    current-pass unstable items) before any later search of the pass can meet them."""
    host = make_host()
    proc_with(host, "U", "r", 1, ord("U"))
    proc_with(host, "X", "r", 1, "unique")
    proc_with(host, "S", "r", 1, ord("S"))
    scan(host)
    batch(host, 2)  # U and X into the unstable tree; the cursor is in X
    assert counts(host) == (0, 0, 2, 1)
    host.exit("U")
    assert order(host) == ["X", "U", "S"]
    batch(host, 1)  # U torn down (unshared--), then S is inserted: no abort
    assert order(host) == ["X", "S"]
    assert counts(host) == (0, 0, 2, 0)
    assert flags(item_at(host, "S", "r")) == "U"
    assert len(unstable_items(host.ksm)) == 2


def test_unstable_tree_compares_contents_live() -> None:
    """A page that changed after its insertion is compared with what it holds now."""
    host = make_host()
    proc_with(host, "A", "r", 1, ord("M"))
    proc_with(host, "B", "r", 1, ord("Y"))
    proc_with(host, "C", "r", 1, ord("Z"))
    scan(host)
    batch(host, 2)  # A (root) and B into the tree
    a_item = item_at(host, "A", "r")
    assert host.ksm.root_unstable_tree.rb_node is a_item
    host.fill("A", "r", ord("Z"))  # in place: the unstable page is still writable
    assert flags(a_item) == "U"
    batch(host, 1)  # C (Z, checksum stable) compares with A's page as it is now: equal
    assert counts(host) == (1, 1, 1, 0)
    assert page_at(host, "A", "r") is page_at(host, "C", "r")
    assert flags(item_at(host, "B", "r")) == "U"


def test_unstable_search_aborts_on_the_very_same_page_after_fork() -> None:
    host = make_host()
    proc_with(host, "P", "r", 1, ord("X"))
    host.fork("P", "C")
    shared_page = page_at(host, "P", "r")
    assert page_at(host, "C", "r") is shared_page and shared_page.mapcount == 2
    assert scan(host) == (0, 0, 0, 2)
    for _ in range(3):
        assert scan(host) == (0, 0, 1, 1)
        p_item, c_item = item_at(host, "P", "r"), item_at(host, "C", "r")
        assert flags(p_item) == "U" and flags(c_item) == "-"
        assert unstable_items(host.ksm) == [p_item]
        assert c_item.oldchecksum == p_item.oldchecksum != 0
    assert not PageKsm(shared_page) and shared_page.mapcount == 2
    assert host.ksm.work.kpage_copies == 0


def test_unstable_item_of_the_current_pass_is_rb_erased_when_merged() -> None:
    host = make_host()
    proc_with(host, "P", "r", 2, "unique")
    proc_with(host, "Q", "r", 1, ord("X"))
    proc_with(host, "R", "r", 1, ord("X"))
    scan(host)
    batch(host, 3)
    assert len(unstable_items(host.ksm)) == 3
    q_item = item_at(host, "Q", "r")
    batch(host, 1)  # R pairs with Q, which leaves the unstable tree for the stable one
    remaining = unstable_items(host.ksm)
    assert q_item not in remaining and len(remaining) == 2
    validate_rbtree(host.ksm.root_unstable_tree)
    assert counts(host) == (1, 1, 2, 0)


# -- write_protect_page ---------------------------------------------------------------------------
def test_failed_stable_path_merge_leaves_the_item_volatile_without_a_checksum() -> None:
    host = make_host(check=False)
    proc_with(host, "A", "r", 2, ord("X"))
    scan(host, 2)
    proc_with(host, "C", "r", 1, ord("X"))
    c_page = page_at(host, "C", "r")
    get_page(c_page)
    host.ksm.ksm_do_scan(1_000)
    c_item = item_at(host, "C", "r")
    assert flags(c_item) == "-"
    assert c_item.oldchecksum == 0, "the stable path returns before any checksum"
    assert counts(host) == (1, 1, 0, 1)
    host.machine.zone.put_page(c_page)
    check_all(host.machine)
    assert scan(host) == (1, 2, 0, 0)


def test_extra_reference_makes_write_protect_fail_until_dropped() -> None:
    host = make_host(check=False)
    proc_with(host, "A", "r", 1, ord("X"))
    proc_with(host, "B", "r", 1, ord("X"))
    scan(host)
    b_page = page_at(host, "B", "r")
    b_addr = addr_of(host, "B", "r")
    b_mm = host.proc("B").mm
    assert pte_write(b_mm.pte_get(b_addr))
    get_page(b_page)  # a GUP pin (O_DIRECT in flight)
    host.ksm.ksm_do_scan(1_000)
    assert counts(host) == (0, 0, 1, 1)
    assert flags(item_at(host, "B", "r")) == "-"
    assert page_at(host, "B", "r") is b_page and not PageKsm(b_page)
    assert pte_write(b_mm.pte_get(b_addr)), "the pte is restored writable"
    assert b_page.count == 2 and b_page.mapcount == 1
    assert host.memory()["ksm_pages"] == 0, "the new kpage was freed again"
    host.machine.zone.put_page(b_page)  # the I/O completes
    check_all(host.machine)
    assert scan(host) == (1, 1, 0, 0)
    assert PageKsm(page_at(host, "B", "r"))
    assert host.machine.zone.is_free(b_page)


def test_tree_page_merge_failure_undoes_the_first_half_of_a_two_page_merge() -> None:
    """try_to_merge_two_pages(): the scanned page went into the new KSM page, the tree page
    cannot follow (pinned), so the scanned page is COW-broken back and the kpage freed."""
    host = make_host(check=False)
    proc_with(host, "A", "r", 1, ord("X"))
    proc_with(host, "B", "r", 1, ord("X"))
    scan(host)
    host.ksm.ksm_do_scan(1)  # A into the unstable tree
    a_page = page_at(host, "A", "r")
    b_page = page_at(host, "B", "r")
    get_page(a_page)
    work = host.ksm.work
    copies, merges, breaks = work.kpage_copies, work.merges, work.break_cows
    host.ksm.ksm_do_scan(1)  # B
    assert (work.kpage_copies, work.merges, work.break_cows) == (copies + 1, merges + 1, breaks + 1)
    assert counts(host) == (0, 0, 1, 1)
    assert flags(item_at(host, "A", "r")) == "U" and flags(item_at(host, "B", "r")) == "-"
    assert page_at(host, "A", "r") is a_page
    new_b = page_at(host, "B", "r")
    assert new_b is not b_page and not PageKsm(new_b), "B got a private copy of the kpage"
    assert new_b.data == page_bytes(ord("X"), 0, proc="B", region="r")
    assert host.machine.zone.is_free(b_page), "B's original page went when it was merged"
    assert host.memory()["ksm_pages"] == 0
    b_item = item_at(host, "B", "r")
    assert b_item.anon_vma is not None and b_item.anon_vma.ksm_refcount == 0
    host.machine.zone.put_page(a_page)
    check_all(host.machine)
    host.ksm.ksm_do_scan(1_000)  # end of the pass
    assert scan(host) == (1, 1, 0, 0)


def test_extra_reference_on_a_read_only_pte_does_not_stop_the_merge() -> None:
    """The count check is made only when the pte is writable (fork left it read-only)."""
    host = make_host(check=False)
    proc_with(host, "A", "r", 1, ord("X"))
    host.fork("A", "C")
    host.exit("C")
    a_page = page_at(host, "A", "r")
    a_mm = host.proc("A").mm
    assert a_page.mapcount == 1 and not pte_write(a_mm.pte_get(addr_of(host, "A", "r")))
    proc_with(host, "B", "r", 1, ord("X"))
    scan(host)
    get_page(a_page)
    host.ksm.ksm_do_scan(1_000)
    assert counts(host) == (1, 1, 0, 0)
    assert PageKsm(page_at(host, "A", "r"))
    assert a_page.count == 1 and a_page.mapcount == 0, "only the pin is left"
    host.machine.zone.put_page(a_page)
    check_all(host.machine)


# -- max_kernel_pages -----------------------------------------------------------------------------
def test_max_kernel_pages_limits_new_ksm_pages_only() -> None:
    host = make_host()
    host.set_tunable("max_kernel_pages", 1)
    host.spawn("P")
    host.mmap("P", "x", 2)
    host.fill("P", "x", ord("X"))
    host.mmap("P", "y", 2)  # mapped lower: scanned first
    host.fill("P", "y", ord("Y"))
    scan(host)
    copies = host.ksm.work.kpage_copies
    assert scan(host) == (1, 1, 1, 1)
    assert host.ksm.work.kpage_copies == copies + 1, "the second pair never got a kpage"
    assert host.memory()["ksm_pages"] == 1
    assert flags(item_at(host, "P", "x", 0)) == "U"
    assert flags(item_at(host, "P", "x", 1)) == "-"
    # Merging into an existing KSM page is not limited.
    host.mmap("P", "z", 1)
    host.fill("P", "z", ord("Y"))
    assert scan(host) == (1, 2, 1, 1)
    # 0 means no limit.
    host.set_tunable("max_kernel_pages", 0)
    assert scan(host) == (2, 3, 0, 0)
    assert host.memory()["ksm_pages"] == 2


# -- unmerging -------------------------------------------------------------------------------------
def test_madv_unmergeable_breaks_pages_and_counters_follow_lazily() -> None:
    host = make_host()
    proc_with(host, "A", "r", 3, ord("X"))
    proc_with(host, "B", "r", 1, "unique")
    assert scan(host, 2) == (1, 2, 1, 0)
    host.madvise("A", "r", "unmergeable")
    assert host.memory()["ksm_pages"] == 0
    assert counts(host) == (1, 2, 1, 0)
    assert len({page_at(host, "A", "r", i).pfn for i in range(3)}) == 3
    assert scan(host) == (0, 0, 1, 0)
    assert order(host) == ["B"]


def test_run2_unmerges_everything_and_keeps_slots() -> None:
    host = make_host()
    proc_with(host, "A", "r", 3, ord("X"))
    proc_with(host, "B", "r", 2, "unique")
    assert scan(host, 2) == (1, 2, 2, 0)
    anon_vma = host.proc("A").mm.find_vma(addr_of(host, "A", "r")).anon_vma  # type: ignore[union-attr]
    assert anon_vma is not None and anon_vma.ksm_refcount == 3
    host.unmerge_all()
    ksm = host.ksm
    assert counts(host) == (0, 0, 0, 0)
    assert host.counters()["full_scans"] == 0 and host.counters()["run"] == 0
    assert ksm.ksm_rmap_items == 0
    assert all(s.rmap_list is None for s in ksm.slots())
    assert order(host) == ["A", "B"]
    assert ksm.ksm_scan.mm_slot is ksm.ksm_mm_head
    assert stable_nodes(ksm) == []
    assert host.memory()["ksm_pages"] == 0
    assert anon_vma.ksm_refcount == 0
    assert len({page_at(host, "A", "r", i).pfn for i in range(3)}) == 3
    assert host.proc("A").mm.ksm_merging_pages == 0
    # oldchecksum went with the items: two passes again to re-merge.
    assert scan(host) == (0, 0, 0, 5)
    assert scan(host) == (1, 2, 2, 0)


def test_run2_in_the_middle_of_a_pass() -> None:
    host = make_host()
    for name in "ABC":
        proc_with(host, name, "r", 2, ord("X") if name != "B" else "unique")
    assert scan(host, 2) == (1, 3, 2, 0)
    batch(host, 3)  # mid-pass, inside B; A's stable pages skipped, B0 re-inserted
    assert host.ksm.ksm_scan.mm_slot is slot_of(host, "B")
    assert len(unstable_items(host.ksm)) == 1
    host.exit("C")  # C has items: moved just after the cursor, torn down by ksmd or run=2
    assert order(host) == ["A", "B", "C"]
    host.sysfs.write("run", 2)
    ksm = host.ksm
    assert counts(host) == (0, 0, 0, 0)
    assert host.counters()["full_scans"] == 0
    assert ksm.ksm_rmap_items == 0
    assert order(host) == ["A", "B"], "the exiting mm's slot is freed, the others stay"
    assert ksm.ksm_scan.mm_slot is ksm.ksm_mm_head
    assert host.memory()["ksm_pages"] == 0
    assert not ksm.ksmd_should_run()
    host.sysfs.write("run", 0)
    check_all(host.machine)
    # run=1 starts a fresh pass from the first slot.
    batch(host, 1)
    assert ksm.ksm_scan.mm_slot is slot_of(host, "A")
    assert unstable_items(ksm) == []
    batch(host, 1_000)
    assert host.counters()["full_scans"] == 1
    assert counts(host) == (0, 0, 0, 4)
    assert scan(host) == (1, 1, 2, 0)


def test_run0_stops_ksmd_and_keeps_merged_pages() -> None:
    host = make_host()
    proc_with(host, "A", "r", 2, ord("X"))
    assert scan(host, 2) == (1, 1, 0, 0)
    assert host.counters()["run"] == 0
    assert not host.ksm.ksmd_should_run()
    assert host.ksmd.batch() == 0
    assert counts(host) == (1, 1, 0, 0)
    assert host.memory()["ksm_pages"] == 1


@pytest.mark.parametrize("pages", [1, 2, 7])
def test_one_process_of_equal_pages_merges_in_two_passes(pages: int) -> None:
    host = make_host()
    proc_with(host, "P", "r", pages, ord("X"))
    assert scan(host) == (0, 0, 0, pages)
    expected = (0, 0, 1, 0) if pages == 1 else (1, pages - 1, 0, 0)
    assert scan(host) == expected
    assert host.memory()["ksm_pages"] == (0 if pages == 1 else 1)
    assert host.machine.zone.present_pages - host.memory()["free_pages"] == 1
