"""Invariant checks that can run after any step of the model.

``check_machine`` verifies the memory-management invariants (reference and map counts against
the page tables, no pte mapping a free frame, anon_vma membership); ``check_ksm`` verifies
KSM's own (the counter identities of the notes' section 2, tree shape and order, sorted
rmap_lists, stable items on live nodes). Both raise ``InvariantError`` naming the first
violation. They are meant for quiescent points: between user operations and ksmd batches.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING

from ksmsim.kernel.ksm import STABLE_FLAG, UNSTABLE_FLAG, Ksm, RmapItem, StableNode
from ksmsim.kernel.mm import is_swap_pte, pte_dirty, pte_pfn, pte_present, pte_special, pte_write
from ksmsim.kernel.page import (
    PAGE_MASK,
    PageKsm,
    PG_locked,
    PG_swapcache,
    page_anon_vma,
    page_stable_node,
)
from ksmsim.kernel.rbtree import rb_iter, validate_rbtree

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine


class InvariantError(AssertionError):
    """The model reached a state the kernel could never be in."""


def _fail(msg: str) -> None:
    raise InvariantError(msg)


def check_swap(machine: Machine) -> None:
    """Check the swap device against the swap ptes and the swap cache."""
    swap = machine.swap
    refs: Counter[int] = Counter()
    for mm in machine.tasks.values():
        for _address, pte in mm.all_ptes():
            if is_swap_pte(pte):
                refs[pte_pfn(pte)] += 1
    if swap is None:
        if refs or machine.swap_cache:
            _fail("swap ptes or swap cache pages on a machine without swap")
        return
    inuse = 0
    for slot in range(1, swap.nr_slots + 1):
        if swap.swap_map[slot] != refs.get(slot, 0):
            _fail(f"swap slot {slot}: swap_map {swap.swap_map[slot]} but {refs.get(slot, 0)} ptes")
        if bool(swap.has_cache[slot]) != (slot in machine.swap_cache):
            _fail(f"swap slot {slot}: has_cache disagrees with the swap cache")
        if swap.swap_map[slot] or swap.has_cache[slot]:
            inuse += 1
            if slot not in machine.swap_cache and slot not in swap.data:
                _fail(f"swap slot {slot} in use with neither a cached page nor written contents")
    if inuse != swap.inuse_pages:
        _fail(f"swap inuse_pages {swap.inuse_pages} but {inuse} slots in use")
    for slot, page in machine.swap_cache.items():
        if not page.flags & PG_swapcache or page.private != slot:
            _fail(f"swap cache slot {slot} holds {page!r} not marked for it")


def check_machine(machine: Machine) -> None:
    """Check frames against page tables: counts, map counts, free frames, anon_vmas, swap."""
    check_swap(machine)
    zone = machine.zone
    mapcounts: Counter[int] = Counter()
    anon_rss: Counter[int] = Counter()
    for mm in machine.tasks.values():
        vmas = mm.mmap
        for prev, nxt in itertools.pairwise(vmas):
            if prev.vm_end > nxt.vm_start:
                _fail(f"{mm.name}: overlapping VMAs {prev!r} and {nxt!r}")
        for vma in vmas:
            if vma.anon_vma is not None and vma not in vma.anon_vma.head:
                _fail(f"{mm.name}: {vma!r} not on its anon_vma's list")
        for address, pte in mm.all_ptes():
            owner = mm.find_vma(address)
            if owner is None or owner.vm_start > address:
                _fail(f"{mm.name}: pte {pte:#x} at {address:#x} outside every VMA")
            if not pte_present(pte):
                if not is_swap_pte(pte):
                    _fail(f"{mm.name}: unexpected non-present pte {pte:#x} at {address:#x}")
                continue
            if pte_special(pte):
                if pte_pfn(pte) != zone.zero_page.pfn:
                    _fail(f"{mm.name}: special pte {pte:#x} at {address:#x} not the zero page")
                if pte_write(pte):
                    _fail(f"{mm.name}: writable zero-page pte at {address:#x}")
                continue
            page = zone.mem_map[pte_pfn(pte)]
            if page is None or zone.is_free(page):
                _fail(f"{mm.name}: pte at {address:#x} maps free frame {pte_pfn(pte)}")
            assert page is not None
            mapcounts[page.pfn] += 1
            anon_rss[mm.pid] += 1
            if PageKsm(page) and pte_write(pte):
                _fail(f"{mm.name}: writable pte at {address:#x} maps KSM page {page!r}")
            if not PageKsm(page):
                anon_vma = page_anon_vma(page)
                if anon_vma is None:
                    _fail(f"{mm.name}: mapped page {page!r} at {address:#x} is not anonymous")
                elif owner is not None and anon_vma is not owner.anon_vma:
                    # After fork the child's VMA shares the parent's anon_vma (2.6.33).
                    _fail(f"{mm.name}: page at {address:#x} belongs to another anon_vma")
        if anon_rss[mm.pid] != mm.anon_rss:
            _fail(f"{mm.name}: anon_rss {mm.anon_rss} but {anon_rss[mm.pid]} anonymous ptes")
    pins = _held_references(machine)
    nr_anon = 0
    for page in zone.allocated_pages():
        mapped = mapcounts.get(page.pfn, 0)
        if page.mapcount != mapped:
            _fail(f"{page!r}: mapcount {page.mapcount} but {mapped} ptes map it")
        expected = mapped + (1 if page.flags & PG_swapcache else 0) + pins.get(page.pfn, 0)
        if page.count != expected:
            _fail(f"{page!r}: count {page.count}, expected {expected} (ptes + swap cache + pins)")
        if page.flags & PG_locked:
            _fail(f"{page!r}: left locked")
        if mapped:
            nr_anon += 1
    if nr_anon != machine.nr_anon_pages:
        _fail(f"nr_anon_pages {machine.nr_anon_pages} but {nr_anon} mapped anonymous frames")
    if zone.nr_free != zone.present_pages - len(zone.allocated_pages()):
        _fail(f"nr_free {zone.nr_free} disagrees with the allocated frames")


def _held_references(machine: Machine) -> Counter[int]:
    """Return the references held by kernel objects rather than ptes, per pfn."""
    pins: Counter[int] = Counter()
    for pvec in machine.pagevecs:
        for page in pvec:
            pins[page.pfn] += 1
    ksm = machine.ksm
    if ksm is not None and ksm.profile.stable_node_pins_page:
        for node in ksm.stable_nodes():
            assert node.page is not None
            pins[node.page.pfn] += 1
    return pins


def _node_valid(node: StableNode) -> bool:
    page = node.page
    return page is not None and page.mapping is node and page.mapping_flags == 3 and page.count > 0


def _tree_key(node: StableNode) -> bytes | None:
    """Return the contents a tree node stands for (a chain: its first live dup's), if known."""
    for n in node.dup_nodes() if node.is_chain else (node,):
        if _node_valid(n):
            assert n.page is not None
            return n.page.data
    return None


def check_ksm(ksm: Ksm) -> None:
    """Check KSM's counters against its trees and lists, and the trees' shape and order."""
    validate_rbtree(ksm.root_stable_tree)
    items: list[RmapItem] = []
    per_mm: Counter[int] = Counter()
    merging: Counter[int] = Counter()
    for slot in ksm.slots():
        mm = slot.mm
        assert mm is not None
        if ksm.mm_slots.get(mm) is not slot:
            _fail(f"{mm.name}: slot missing from the slot hash")
        last = -1
        for item in ksm.rmap_items(slot):
            if item.mm is not mm:
                _fail(f"{item!r} on the list of {mm.name}")
            addr = item.address & PAGE_MASK
            if addr <= last:
                _fail(f"{mm.name}: rmap_list not sorted at {addr:#x}")
            last = addr
            items.append(item)
            per_mm[mm.pid] += 1
            if item.address & STABLE_FLAG:
                merging[mm.pid] += 1
        if per_mm[mm.pid] != mm.ksm_rmap_items:
            _fail(f"{mm.name}: ksm_rmap_items {mm.ksm_rmap_items} but {per_mm[mm.pid]} on its list")
    if len(items) != ksm.ksm_rmap_items:
        _fail(f"ksm_rmap_items {ksm.ksm_rmap_items} but {len(items)} items on the mm lists")
    stable_items = [i for i in items if i.address & STABLE_FLAG]
    unstable = sum(1 for i in items if i.address & UNSTABLE_FLAG)
    if unstable != ksm.ksm_pages_unshared:
        _fail(f"pages_unshared {ksm.ksm_pages_unshared} but {unstable} unstable items")
    shared = sharing = chains = dups = 0
    nodes = set()
    for top in rb_iter(ksm.root_stable_tree):
        assert isinstance(top, StableNode)
        if top.is_dup:
            _fail("a dup sits in the stable tree itself")
        if top.is_chain:
            chains += 1
            if top.hlist is not None:
                _fail("a chain has rmap_items of its own")
            for dup in top.dup_nodes():
                dups += 1
                if not dup.is_dup or dup.chain is not top or dup.is_chain:
                    _fail("a chain's dup does not point back to it")
    for node in ksm.stable_nodes():
        nodes.add(id(node))
        members = list(node.items())
        if len(members) != node.rmap_hlist_len:
            _fail(f"stable node rmap_hlist_len {node.rmap_hlist_len} but {len(members)} items")
        if members:
            shared += 1
            sharing += len(members) - 1
        for item in members:
            if item.head is not node or not item.address & STABLE_FLAG:
                _fail(f"{item!r} on a node's hlist without pointing back to it")
    if shared != ksm.ksm_pages_shared or sharing != ksm.ksm_pages_sharing:
        _fail(
            f"pages_shared/sharing {ksm.ksm_pages_shared}/{ksm.ksm_pages_sharing} but the tree "
            f"has {shared}/{sharing}"
        )
    if chains != ksm.ksm_stable_node_chains or dups != ksm.ksm_stable_node_dups:
        _fail(
            f"stable_node_chains/dups {ksm.ksm_stable_node_chains}/{ksm.ksm_stable_node_dups} "
            f"but the tree has {chains}/{dups}"
        )
    if len(stable_items) != shared + sharing:
        _fail(f"{len(stable_items)} stable items but shared+sharing = {shared + sharing}")
    for item in stable_items:
        if item.head is None or id(item.head) not in nodes:
            _fail(f"{item!r} is stable but its node is not in the stable tree")
    # Tree nodes whose pages are still theirs are in memcmp order of those contents.
    keys = [
        k
        for k in (_tree_key(n) for n in rb_iter(ksm.root_stable_tree) if isinstance(n, StableNode))
        if k is not None
    ]
    for a, b in itertools.pairwise(keys):
        if not a < b:
            _fail("stable tree out of memcmp order between two live nodes")
    # Every mapped KSM page's node is in the stable tree; KSM zero pages are counted.
    machine = ksm.machine
    zone = machine.zone
    zero_total = 0
    for mm in machine.tasks.values():
        zero = 0
        for address, pte in mm.all_ptes():
            if not pte_present(pte):
                continue
            if pte_special(pte):
                if pte_dirty(pte):
                    zero += 1
                continue
            page = zone.mem_map[pte_pfn(pte)]
            assert page is not None
            if PageKsm(page):
                node = page_stable_node(page)
                if node is None and ksm.profile.stable_node_pins_page:
                    # Pinned: the last item's removal leaves a still-mapped page KSM with a
                    # NULL node (a fork child, a swap-in); ksmd breaks it on its next visit.
                    continue
                if node is None or id(node) not in nodes:
                    _fail(f"{mm.name}: KSM page at {address:#x} has no node in the stable tree")
        if zero != mm.ksm_zero_pages:
            _fail(f"{mm.name}: ksm_zero_pages {mm.ksm_zero_pages} but {zero} KSM zero ptes")
        zero_total += zero
        if mm.pid in per_mm and merging[mm.pid] != mm.ksm_merging_pages:
            _fail(f"{mm.name}: ksm_merging_pages {mm.ksm_merging_pages} but {merging[mm.pid]}")
    if zero_total != ksm.ksm_zero_pages:
        _fail(f"ksm_zero_pages {ksm.ksm_zero_pages} but {zero_total} KSM zero ptes mapped")


def check_all(machine: Machine) -> None:
    """Run every invariant check that applies to the machine."""
    check_machine(machine)
    if machine.ksm is not None:
        check_ksm(machine.ksm)
