"""A canonical dump of a simulated machine's whole state, for the shortcut differential tests.

``machine_state(machine)`` turns everything a later step of the model could depend on into
plain, comparable data: KSM's counters, cursor, mm list, both trees (shape, colours and every
node's fields), every rmap_item, every allocated frame, page tables and areas, the free list in
reuse order, the LRU lists, the swap device, the clock and the work counts. Objects are named by
the order they are met (stable nodes, anon_vmas), so two machines that went through the same
steps dump equal data, and any divergence shows up as the first differing key.

Caches that are not the kernel's and do not change what the model does next are left out
(``mmap_cache``, the checksum cache on frames, ``RmapItem.tree_page``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ksmsim.kernel.ksm import Ksm, RmapItem, StableNode
from ksmsim.kernel.machine import Machine
from ksmsim.kernel.rbtree import RbNode, RbRoot

_KSM_COUNTERS = (
    "ksm_pages_shared",
    "ksm_pages_sharing",
    "ksm_pages_unshared",
    "ksm_rmap_items",
    "ksm_pages_scanned",
    "ksm_pages_skipped",
    "ksm_zero_pages",
    "ksm_stable_node_chains",
    "ksm_stable_node_dups",
    "ksm_run",
    "ksm_thread_pages_to_scan",
    "ksm_thread_sleep_millisecs",
    "ksm_max_page_sharing",
    "ksm_stable_node_chains_prune_millisecs",
    "ksm_use_zero_pages",
    "ksm_smart_scan",
    "ksm_merge_across_nodes",
    "ksm_max_kernel_pages",
    "ksmd_wakeups",
)


class _Names:
    """Names objects by the order they are first met."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.keep: list[object] = []

    def __call__(self, obj: object) -> int | None:
        if obj is None:
            return None
        n = self.ids.get(id(obj))
        if n is None:
            n = self.ids[id(obj)] = len(self.ids)
            self.keep.append(obj)
        return n


def _data(data: bytes | None) -> str | None:
    return None if data is None else hashlib.blake2b(data, digest_size=8).hexdigest()


def _item_ref(item: RmapItem | None) -> tuple[int, int] | None:
    return None if item is None else (item.mm.pid, item.address)


def _tree(root: RbRoot, node_fields: Any) -> Any:
    """Return the tree as nested (fields, colour, left, right), and check its parent links."""

    def walk(node: RbNode | None, parent: RbNode | None) -> Any:
        if node is None:
            return None
        assert node.rb_parent is parent, "broken parent link"
        return (
            node_fields(node),
            node.rb_red,
            walk(node.rb_left, node),
            walk(node.rb_right, node),
        )

    return walk(root.rb_node, None)


def ksm_state(ksm: Ksm, names: _Names) -> dict[str, Any]:
    """Return KSM's state: counters, cursor, slots with their items, and both trees."""
    out: dict[str, Any] = {name: getattr(ksm, name) for name in _KSM_COUNTERS}
    out["work"] = ksm.work.as_dict()
    scan = ksm.ksm_scan
    link = scan.rmap_list
    out["cursor"] = (
        None if scan.mm_slot.mm is None else scan.mm_slot.mm.pid,
        scan.address,
        scan.seqnr,
        ("item", _item_ref(link))
        if isinstance(link, RmapItem)
        else ("slot", link.mm and link.mm.pid),
    )

    def stable_fields(node: RbNode) -> Any:
        assert isinstance(node, StableNode)
        return stable_node(node)

    def stable_node(node: StableNode) -> Any:
        return (
            names(node),
            node.page.pfn if node.page is not None else None,
            node.rmap_hlist_len,
            node.is_dup,
            names(node.chain),
            node.chain_prune_time,
            [_item_ref(i) for i in node.items()],
            [stable_node(d) for d in node.dup_nodes()],
        )

    out["stable_tree"] = _tree(ksm.root_stable_tree, stable_fields)
    out["unstable_tree"] = _tree(ksm.root_unstable_tree, lambda n: _item_ref(n))
    slots = []
    for slot in ksm.slots():
        assert slot.mm is not None
        items = [
            (
                i.address,
                i.oldchecksum,
                i.age,
                i.remaining_skips,
                names(i.head),
                names(i.anon_vma),
                _item_ref(i.hnext),
                _item_ref(i.hprev),
            )
            for i in ksm.rmap_items(slot)
        ]
        slots.append((slot.mm.pid, items))
    out["slots"] = slots
    return out


def machine_state(machine: Machine) -> dict[str, Any]:
    """Return the whole state of a machine as comparable data (see the module docstring)."""
    names = _Names()
    out: dict[str, Any] = {
        "clock_ns": machine.clock_ns,
        "nr_anon_pages": machine.nr_anon_pages,
        "vmstat": dict(sorted(machine.vmstat.items())),
        "oom": [(e.time_ns, e.pid, e.address) for e in machine.oom_events],
        "free_delays": list(machine.ksm_free_delays_ns),
        "release_delays": list(machine.ksm_release_delays_ns),
    }
    if machine.ksm is not None:
        out["ksm"] = ksm_state(machine.ksm, names)
    mms = []
    for pid in sorted(machine.tasks):
        mm = machine.tasks[pid]
        mms.append(
            (
                pid,
                mm.mm_users,
                mm.mm_count,
                mm.flags,
                mm.anon_rss,
                mm.ksm_rmap_items,
                mm.ksm_merging_pages,
                mm.ksm_zero_pages,
                [
                    (v.vm_start, v.vm_end, v.vm_flags, v.vm_pgoff, names(v.anon_vma))
                    for v in mm.mmap
                ],
                list(mm.all_ptes()),
            )
        )
    out["mms"] = mms
    zone = machine.zone
    pages = []
    for page in zone.mem_map:
        if page is None:
            continue
        mapping = page.mapping
        pages.append(
            (
                page.pfn,
                page.count,
                page.mapcount,
                page.mapping_flags,
                names(mapping) if mapping is not None else None,
                page.flags,
                page.index,
                page.private,
                _data(page.data),
            )
        )
    out["pages"] = pages
    out["free"] = [p.pfn for p in zone._free]
    out["nr_free"] = zone.nr_free
    out["fresh"] = zone._fresh
    out["lru"] = (
        [p.pfn for p in machine.lru.active],
        [p.pfn for p in machine.lru.inactive],
    )
    out["pagevecs"] = [[p.pfn for p in v] for v in machine.pagevecs]
    out["swap_cache"] = sorted((slot, p.pfn) for slot, p in machine.swap_cache.items())
    swap = machine.swap
    if swap is not None:
        out["swap"] = (
            list(swap.swap_map),
            bytes(swap.has_cache),
            swap.inuse_pages,
            swap.cluster_next,
            sorted((k, _data(v)) for k, v in swap.data.items()),
        )
    return out


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Return the path of the first place two dumps differ, or None when they are equal."""
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key}: missing on one side"
            d = first_difference(a[key], b[key], f"{path}.{key}")
            if d is not None:
                return d
        return None
    if isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        return None
    if a != b:
        return f"{path}: {a!r} != {b!r}"
    return None
