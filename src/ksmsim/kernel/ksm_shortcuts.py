"""Exact shortcuts for ksmd's hot paths, each behind a switch (issue #8).

A shortcut replaces a stretch of the kernel-shaped code by a faster computation that provably
leaves the model in the same state, with the same work counted (the cost model turns work into
simulated time, so even a skipped memcmp must still be counted). Where the proof needs a
condition, the condition is tested at run time and the exact path is taken otherwise. Each
shortcut is used beside the function it shortcuts, with a comment saying why it is exact.

Switches (``Shortcuts``; the default comes from the environment variable ``KSMSIM_SHORTCUTS``:
``all`` (the default), ``none``, or a comma-separated list of names, each optionally prefixed
with ``-`` to switch it off, applied to ``all``, e.g. ``-c_helpers`` or ``none,stable_skip``):

``stable_skip``
    stable_tree_search() and stable_tree_insert() pass over regular nodes whose page
    get_ksm_page() would return and whose contents differ from the page sought, in one call.
    For such a node the exact step is: take a reference, memcmp, drop the reference, descend;
    the shortcut does the memcmp and the descent and counts the memcmp. It stops at a chain, at
    a node whose keyhole test would fail (stale: the exact code removes it), and at equal
    contents, and hands that node to the exact step. The node found is taken on the spot
    when it is a regular node whose keyhole holds and whose page is unlocked: the exact steps
    then add one memcmp and one reference, whatever else they do in between (with chains:
    put the page back, test the node is a candidate, take it again with TRYLOCK and unlock
    it), and the same holds for the dup a chain gives. So does a chain found whose first
    dup has room (and is not its only one), its page's keyhole holding, unlocked, with equal
    contents, when no prune is due: stable_node_dup() chooses that dup at once and changes
    nothing else, so the search takes its page on the spot.
``unstable_skip``
    unstable_tree_search_insert() does the same over unstable nodes. An unstable node records
    the page it was inserted with (``RmapItem.tree_page``); while no pte has started or stopped
    mapping a frame and no mm's areas have changed since the pass began (the zone's
    ``map_generation`` is the one recorded when the tree was emptied, and ksmd's own pte
    changes touch only items that are not, or no longer, in the tree), get_mergeable_page() of
    every node returns exactly that page, so its step is: memcmp against the page's live
    contents, descend. The node whose contents are equal (which is the only one that can be
    the scanned page itself) is handed to the exact step.
``dup_skip``
    stable_node_dup() passes over the dups of a chain whose page get_ksm_page() would return,
    choosing the best dup as it does, in one call: for such a dup the exact step is get,
    compare the hlist lengths, keep the page or put it back. It stops at a dup whose keyhole
    test fails (the exact step removes it) and where the walk breaks off; the reference on the
    chosen dup's page is then taken (and the one on a page no longer chosen dropped) as the
    exact walk leaves them.
``scan_cursor``
    ksm_do_scan() keeps the VMA loop of scan_get_next_rmap_item() (``Ksm._scan_mm``, a
    generator) running from one page to the next within an mm, instead of starting it afresh
    from the cursor for every page. Resuming it takes the same steps as a fresh start while the
    mm's areas, their flags and its users are unchanged (all of which move the zone's
    ``map_generation``); otherwise, and at the end of each mm and batch, the exact path runs.
``fill_batch``
    Whole-page user writes (a ``fill``, a background writer's writes) go through
    memory_shortcuts.write_user_pages(), which takes the two common cases (a page never
    touched, a page mapped writable) in one loop with the steps write_user_bytes() takes for
    them; see that module for the conditions. A fill or a writer hands a run of consecutive
    pages of one area, with contents a ``PageSource`` generates (a constant page, ``unique``
    and ``repeat:K`` pages as below), to write_page_run() there: the same loop over the run,
    in C with ``c_helpers`` (its pure-Python twin otherwise), which stops at the first page
    in neither case and leaves that page to write_user_bytes() (fill_batch.write_pattern).
``lazy_contents``
    A ``fill`` and a background writer write each ``unique`` and ``repeat:K`` page as a
    ``PageText`` (the C extension's): its header and filler byte, standing for the very same
    4096 bytes and behaving as them wherever the model uses contents (comparisons with bytes
    and with each other, hash, indexing, slices, the buffer protocol that checksums and
    digests read). Needs ``c_helpers``; off, they build the bytes themselves.
``content_checksum``
    calc_checksum() asks contents held as a ``PageText`` for their checksum, which the object
    computes once (with the profile's checksum function) and keeps: it is a function of the
    contents alone, and every frame holding the object shares it. The work counted is the
    same (a checksum at every call, as the kernel computes one). Needs ``c_helpers``.
``first_visit``
    ksmd's pte loop (the C scan_ptes of ``c_helpers``) takes whole ksm_do_scan() steps in C
    for the common cases of the first and later passes. It allocates a new rmap_item where
    get_next_rmap_item() would prune nothing (the same fields, links and counts as
    alloc_rmap_item()), and takes a page through its whole ksm_do_scan() step when all that
    step can do is note a changed checksum: the page not KSM, its item in no tree (but see
    below), a
    reference to spare, and the checksum tested before the stable tree search (6.11+) or
    the stable tree empty (its search then returns at once, changing nothing). The step is
    then: count the page scanned, compute the checksum as calc_checksum() does (its cache,
    ``content_checksum``, the count of checksums; within one call, the checksum of the very
    contents object the last page had is reused, the function being one of the contents
    alone), find it differs from the item's, store
    it, drop the reference, count the page in pages_scanned. A page whose checksum is
    unchanged goes on to the exact path (with the checksum in the frame's cache, where
    cmp_and_merge_page() takes it, as it would have been computed at that point). Taken
    pages count against the batch as the exact loop's iterations do, and only while the
    scan_cursor shortcut runs (the loop is resumed between pages in any case). With the
    checksum tested first it also takes a page whose checksum is unchanged when no zero
    page is to be tried for it and the stable tree search would take a KSM page at once
    (the C walk of ``stable_skip``) that the fused merge (``fused_merge``) merges it into:
    cmp_and_merge_page() does nothing else then; the walk's compares are counted and the
    search's reference kept only when the merge is made, so a page that does not merge
    goes to the exact path as it was; the page's reference is then dropped as ksm_do_scan()
    drops it (``fused_free``). The chains' prune test reads the clock, which stands still
    during a batch. Likewise a page the stable tree search does not find (its walk ending
    past a leaf, or an empty tree) whose unstable_tree_search_insert() inserts it, while the
    ``unstable_skip`` shortcut holds (its walk meets no equal page): the item is linked in,
    coloured (rb_insert_color), flagged with the seqnr, given its recorded page and counted,
    as that function does. And the removal from the tree that begins cmp_and_merge_page()
    for an item the unstable tree held in the last pass (since emptied: uncount it, clear
    its flags) is made here too. So is the step of a KSM page that ksm_do_scan() leaves
    alone (on its item's node, 6.11+; its item stable, before): count it, drop the
    reference. The twin is the exact path. Needs ``c_helpers`` and the C frame base.
``fused_merge``
    cmp_and_merge_page() merges a page into the KSM page the stable tree search found in one
    step (Ksm.merge_with_ksm_page_fused(), beside try_to_merge_with_ksm_page()) when every
    test of try_to_merge_with_ksm_page(), try_to_merge_one_page(), write_protect_page() and
    replace_page() would come out the way that merges and neither page is locked: the item
    in no tree, its area the mm's cached one, mergeable and not mlocked, the page anonymous
    in that area's anon_vma at the item's address, mapped by a present pte, with the counts
    write_protect_page() requires and a reference to spare, ``kpage`` a KSM page with a node,
    and equal contents. Those steps then do exactly what the fused step does (the same work
    counted, the same pte, counts, flags, anon_vma hold and hlist); the locks they take and
    release leave the flags as they were, and the pte values they write on the way are
    overwritten. The conditions are tested before anything changes; when one fails the exact
    steps run. Its C twin (``c_helpers``) makes the same tests and changes. Likewise
    try_to_merge_with_ksm_page() itself (try_to_merge_with_ksm_page_fused(), for the merges
    of two pages found equal in the unstable tree): the same conditions but for those on the
    item and on ``kpage`` beyond its being another KSM page, or with ``kpage`` None, the page
    upgraded in place (write-protected, made a KSM page with no node, referenced and dirty);
    then the item taken out of its tree (the very call the exact function makes, 3.x+) and
    the anon_vma held.
``fused_insert``
    cmp_and_merge_page() finishes the merge of two pages found equal in the unstable tree in
    one step (Ksm.insert_merged_fused(), beside stable_tree_insert()) when the tree item is
    already out of its tree (try_to_merge_with_ksm_page() took it out, 3.x+), so
    remove_rmap_item_from_tree() does nothing; the KSM page is unlocked, so lock_page() and
    unlock_page() leave its flags as they were; the stable tree walk of stable_tree_insert()
    (``stable_skip``, which must be on) passes every node, meeting no chain, no stale node and
    no equal page, so the exact walk takes the same compares and ends at the same leaf; the
    profile neither pins the node's page nor allocates the KSM page (no get_page() or
    put_page() to add; and the merge takes the item out of its tree, 3.x+). The step is then what those functions do, in their order: count the
    compares, make the node, link it at that leaf and colour it (rb_insert_color), set it on
    the page, and append the tree item, then the item, to its hlist (stable_tree_append()).
    The conditions are tested before anything changes; when one fails the exact steps run.
    Its C twin (``c_helpers``, on the C frame base) makes the same tests and changes.
``fused_free``
    ksm_do_scan()'s put_page() of the last reference to a page (the one a merge left), and
    cmp_and_merge_page()'s of the unstable tree's page that try_to_merge_two_pages() merged
    away (during a batch, with the same test of the free hook), frees it in one C call (free_scanned of ksmsim._speedups) when the machine's free hook is its
    own (Machine._page_freed()) and has nothing to note but the LRU (no KSM page that
    reclaim unmapped is waiting to be freed): the same steps as put_page(),
    free_hot_cold_page(), the hook and Lru.remove(), in the same order; otherwise, and for
    the zero page or a page still mapped, the exact path runs. The twin is the exact path.
    Needs ``c_helpers`` and the C frame base.
``gc_pause``
    Python's cyclic garbage collector is paused during a ksmd batch and a batch of writes
    (``pause_gc``). The model allocates many objects there and frees them by reference
    counting; the collector, which only reclaims unreachable cycles and runs no finalizer of
    the model's, would find nothing to change, and costs some 10% of a large scan. When the
    pause ends, the objects allocated during it join the oldest generation at once
    (``gc.freeze()`` then ``gc.unfreeze()``) instead of passing through the young ones: they
    are the model's long-lived frames, rmap_items and nodes, which the young collections
    would only traverse again and again (and, as they pile up, trigger full collections
    over millions of objects: half the time of a large fill, a third of a long run). An
    unreachable cycle among them is still reclaimed, by the next full collection (which
    they, not counted as survivors of a young collection, do not bring on themselves).
``c_helpers``
    Use the C versions of the helpers above (``ksmsim._speedups``) when it was built (the
    stable tree search's walk, stable_find, also takes the node found in C, with the tests
    stable_tree_search() makes after stable_skip_py() as its twin), and its
    rb_insert_color() and rb_erase() for the trees' inserts and erases and its twin of the
    pte loop of ksmd's VMA loop (Ksm._scan_ptes); the pure-Python twins (here, rbtree.py's
    rb_insert_color, rb_erase and Ksm._scan_ptes) give the same results (tests/perf compares
    them), and the count of KSM frames a sample of memory makes (machine.count_ksm_frames(),
    its twin beside it). At import it also chooses the C base of ``Page`` (page.py), which
    holds the same fields more compactly.

No shortcut runs under the interleaving explorer (``machine.preempt`` set) or with a deliberate
bug switched on (``ksm.mutations``): both need every step of the exact path.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ksmsim.kernel.page import Page
    from ksmsim.kernel.rbtree import RbNode

__all__ = [
    "ENV_VAR",
    "HAVE_C_HELPERS",
    "PageText",
    "Shortcuts",
    "default_shortcuts",
    "pause_gc",
    "set_default_shortcuts",
    "stable_skip_py",
    "unstable_skip_py",
    "using_shortcuts",
]

ENV_VAR: Final = "KSMSIM_SHORTCUTS"

SkipResult = tuple[Any, Any, bool, int]
"""(node to take the exact step at, or None; the last node passed; went left from it; memcmps)."""


@dataclass(frozen=True, slots=True)
class Shortcuts:
    """Which exact shortcuts a machine's KSM may take (see the module docstring)."""

    stable_skip: bool = True
    unstable_skip: bool = True
    dup_skip: bool = True
    scan_cursor: bool = True
    fill_batch: bool = True
    lazy_contents: bool = True
    content_checksum: bool = True
    first_visit: bool = True
    fused_merge: bool = True
    fused_insert: bool = True
    fused_free: bool = True
    gc_pause: bool = True
    c_helpers: bool = True

    @classmethod
    def all_on(cls) -> Shortcuts:
        """Return every shortcut on."""
        return cls()

    @classmethod
    def all_off(cls) -> Shortcuts:
        """Return every shortcut off: the kernel-shaped code alone."""
        return cls(**{f.name: False for f in fields(cls)})

    @classmethod
    def parse(cls, spec: str) -> Shortcuts:
        """Parse ``all``, ``none`` or a comma list of (``-``)names applied to ``all``."""
        out = cls.all_on()
        names = {f.name for f in fields(cls)}
        for raw in spec.split(","):
            word = raw.strip()
            if not word:
                continue
            if word == "all":
                out = cls.all_on()
            elif word == "none":
                out = cls.all_off()
            else:
                on = not word.startswith("-")
                name = word.lstrip("-+")
                if name not in names:
                    raise ValueError(f"{ENV_VAR}: unknown shortcut {name!r} (have {sorted(names)})")
                out = replace(out, **{name: on})
        return out

    def names_on(self) -> list[str]:
        """Return the names of the shortcuts switched on."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


_default = Shortcuts.parse(os.environ.get(ENV_VAR, "all"))


def default_shortcuts() -> Shortcuts:
    """Return the shortcuts a new machine's KSM starts with."""
    return _default


def set_default_shortcuts(shortcuts: Shortcuts) -> None:
    """Set the shortcuts new machines start with."""
    global _default
    _default = shortcuts


@contextmanager
def using_shortcuts(shortcuts: Shortcuts) -> Iterator[None]:
    """Build machines with ``shortcuts`` inside the block (for tests and benchmarks)."""
    old = _default
    set_default_shortcuts(shortcuts)
    try:
        yield
    finally:
        set_default_shortcuts(old)


class pause_gc:  # a class named as the function it stands for: ``with pause_gc(ksm):``
    """Pause the cyclic garbage collector inside the block when ``ksm`` (a Ksm, or None) has
    the ``gc_pause`` shortcut and shortcuts may run; restore it after, with what the block
    allocated moved to the oldest generation (``gc_pause``). A class, not a generator: ksmd
    enters one every batch."""

    __slots__ = ("_pause",)

    def __init__(self, ksm: Any) -> None:
        self._pause = (
            ksm is not None
            and ksm.shortcuts.gc_pause
            and ksm._shortcuts_allowed()
            and gc.isenabled()
        )

    def __enter__(self) -> None:
        if self._pause:
            gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._pause:
            if not gc.get_freeze_count():  # nobody else froze objects: unfreeze only ours
                gc.freeze()
                gc.unfreeze()  # everything now in the oldest generation
            gc.enable()


# -- the tree walks ----------------------------------------------------------------------------
STABLE_NODE_CHAIN: Final = -1024
KSM_MAPPING_FLAGS: Final = 3


def unstable_skip_py(node: RbNode | None, data: bytes) -> SkipResult:
    """Walk down from ``node`` past every unstable node whose recorded page holds contents other
    than ``data``; stop at a node with no recorded page or equal contents (pure Python)."""
    parent: RbNode | None = None
    left = False
    n = 0
    while node is not None:
        tree_page: Page | None = node.tree_page  # type: ignore[attr-defined]
        if tree_page is None:
            break
        tree_data = tree_page.data
        if tree_data is None or data == tree_data:
            break
        n += 1
        parent = node
        left = data < tree_data
        node = node.rb_left if left else node.rb_right
    return node, parent, left, n


def stable_skip_py(node: RbNode | None, data: bytes, pinned: bool) -> SkipResult:
    """Walk down from ``node`` past every regular stable node whose page get_ksm_page() would
    return and whose contents differ from ``data``; stop at a chain, a node failing the keyhole
    test, or equal contents (pure Python)."""
    parent: RbNode | None = None
    left = False
    n = 0
    while node is not None:
        if node.rmap_hlist_len == STABLE_NODE_CHAIN:  # type: ignore[attr-defined]
            break
        page: Page | None = node.page  # type: ignore[attr-defined]
        if page is None:
            break
        if not pinned and (
            page.mapping is not node or page.mapping_flags != KSM_MAPPING_FLAGS or page.count == 0
        ):
            break
        tree_data = page.data
        if tree_data is None or data == tree_data:
            break
        n += 1
        parent = node
        left = data < tree_data
        node = node.rb_left if left else node.rb_right
    return node, parent, left, n


def dup_skip_py(
    dup: Any, found: Any, found_len: int, max_page_sharing: int, prune: bool, pinned: bool
) -> tuple[Any, Any, int, bool]:
    """Walk a chain's dups from ``dup`` as stable_node_dup() does, past every dup whose page
    get_ksm_page() would return, choosing the best as it does; stop at a dup failing that
    test, at the end, or where the walk breaks off. Return (the dup to take the exact step at,
    or None; found; found_len; whether it broke off) (pure Python)."""
    while dup is not None:
        page = dup.page
        if page is None:
            break
        if not pinned and (
            page.mapping is not dup or page.mapping_flags != KSM_MAPPING_FLAGS or page.count == 0
        ):
            break
        nxt = dup.dup_next
        n = dup.rmap_hlist_len
        candidate = 0 < n < max_page_sharing
        if found is None or (
            candidate and (not 0 < found.rmap_hlist_len < max_page_sharing or n > found_len)
        ):
            found = dup
            found_len = n
            if not prune and candidate:
                return nxt, found, found_len, True
        dup = nxt
    return dup, found, found_len, False


UnstableSkip = Callable[[Any, bytes], SkipResult]
StableSkip = Callable[[Any, bytes, bool], SkipResult]

unstable_skip_c: UnstableSkip | None = None
stable_skip_c: StableSkip | None = None
rb_insert_color_c: Callable[[Any, Any], None] | None = None
rb_erase_c: Callable[[Any, Any], None] | None = None
DupSkip = Callable[[Any, Any, int, int, bool, bool], tuple[Any, Any, int, bool]]
dup_skip_c: DupSkip | None = None
scan_ptes_c: Callable[..., Any] | None = None
count_ksm_frames_c: Callable[[list[Any], int, int, int], int] | None = None
merge_fused_c: Callable[..., bool] | None = None
try_merge_fused_c: Callable[..., bool] | None = None
insert_fused_c: Callable[..., bool] | None = None
free_scanned_c: Callable[..., bool] | None = None
stable_find_c: Callable[..., tuple[Any, Any, int]] | None = None
visit_ready = False
HAVE_C_HELPERS = False


def _page_text_type() -> Any:
    """Return the C extension's PageText type, or None when it is not built."""
    try:
        from ksmsim._speedups import PageText as page_text
    except ImportError:  # pragma: no cover - built without a compiler, or a stale build
        return None
    return page_text


PageText: Any = _page_text_type()
"""Page contents as a head and a filler byte (``lazy_contents``); None without the extension."""


def _setup_c() -> None:
    """Hand the node and page layouts to the C walks, if the extension was built."""
    global unstable_skip_c, stable_skip_c, dup_skip_c, rb_insert_color_c, scan_ptes_c, rb_erase_c
    global merge_fused_c, visit_ready, free_scanned_c, stable_find_c, try_merge_fused_c
    global count_ksm_frames_c
    global insert_fused_c
    global HAVE_C_HELPERS
    try:
        from ksmsim import _speedups
    except ImportError:  # pragma: no cover - built without a compiler
        return
    needed: tuple[str, ...] = ("tree_setup", "unstable_skip", "stable_skip", "dup_skip", "rb_setup")
    needed += ("scan_setup", "scan_ptes", "merge_setup", "merge_fused", "visit_setup")
    needed += ("free_scanned", "find_setup", "stable_find", "try_merge_fused", "count_ksm_frames")
    if not all(hasattr(_speedups, name) for name in needed):
        return  # pragma: no cover - a stale build: the pure-Python twins run
    from ksmsim.kernel.ksm import RmapItem, StableNode
    from ksmsim.kernel.page import Page
    from ksmsim.kernel.rbtree import RbNode

    def descr(cls: type, name: str) -> Any:
        """Return the slot descriptor ``name`` of ``cls`` (from whichever class defines it)."""
        for klass in cls.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
        raise AttributeError(f"{cls.__name__} has no slot {name!r}")

    _speedups.tree_setup(
        RbNode,
        RmapItem,
        StableNode,
        Page,
        descr(RbNode, "rb_left"),
        descr(RbNode, "rb_right"),
        descr(RmapItem, "tree_page"),
        descr(StableNode, "page"),
        descr(StableNode, "rmap_hlist_len"),
        descr(Page, "data"),
        descr(Page, "mapping"),
        descr(Page, "mapping_flags"),
        descr(Page, "count"),
        STABLE_NODE_CHAIN,
        KSM_MAPPING_FLAGS,
        descr(StableNode, "dup_next"),
    )
    from ksmsim.kernel.rbtree import RbRoot

    _speedups.rb_setup(
        RbNode,
        RbRoot,
        descr(RbNode, "rb_parent"),
        descr(RbNode, "rb_left"),
        descr(RbNode, "rb_right"),
        descr(RbNode, "rb_red"),
        descr(RbRoot, "rb_node"),
    )
    from ksmsim.kernel.ksm import (
        _ANON_PRESENT_MASK,
        SEQNR_MASK,
        STABLE_FLAG,
        U8_MAX,
        UNSTABLE_FLAG,
        KsmScan,
        KsmWork,
        MmSlot,
    )
    from ksmsim.kernel.mm import _PAGE_PRESENT
    from ksmsim.kernel.page import PAGE_MAPPING_ANON, PAGE_MAPPING_FLAGS, PAGE_MASK, PAGE_SHIFT

    _speedups.scan_setup(
        RmapItem,
        MmSlot,
        KsmScan,
        Page,
        descr(RmapItem, "address"),
        descr(RmapItem, "age"),
        descr(RmapItem, "remaining_skips"),
        descr(RmapItem, "rmap_list"),
        descr(MmSlot, "rmap_list"),
        descr(KsmScan, "rmap_list"),
        descr(Page, "count"),
        descr(Page, "mapping_flags"),
        _ANON_PRESENT_MASK,
        _PAGE_PRESENT,
        PAGE_SHIFT,
        PAGE_MAPPING_ANON,
        PAGE_MAPPING_FLAGS,
        U8_MAX,
        PAGE_MASK & ((1 << 64) - 1),
        STABLE_FLAG | UNSTABLE_FLAG,
    )
    from ksmsim.kernel.mm import (
        _PAGE_ACCESSED,
        _PAGE_DIRTY,
        _PAGE_RW,
        _PAGE_SPECIAL,
        PTRS_PER_PTE,
        VM_LOCKED,
        VM_MERGEABLE,
        MmStruct,
        VmArea,
    )
    from ksmsim.kernel.page import PG_dirty, PG_locked, PG_referenced, PG_swapcache
    from ksmsim.kernel.rmap import AnonVma

    if Page.__base__ is _speedups.PageBase:
        # The fused merge reads the frame's fields from the C base.
        _speedups.merge_setup(
            RmapItem,
            MmStruct,
            VmArea,
            AnonVma,
            StableNode,
            KsmWork,
            descr(RmapItem, "mm"),
            descr(RmapItem, "address"),
            descr(RmapItem, "anon_vma"),
            descr(RmapItem, "head"),
            descr(RmapItem, "hnext"),
            descr(RmapItem, "hprev"),
            descr(MmStruct, "mm_users"),
            descr(MmStruct, "mmap_cache"),
            descr(MmStruct, "pgd"),
            descr(MmStruct, "ksm_merging_pages"),
            descr(VmArea, "vm_start"),
            descr(VmArea, "vm_end"),
            descr(VmArea, "vm_flags"),
            descr(VmArea, "vm_pgoff"),
            descr(VmArea, "anon_vma"),
            descr(AnonVma, "ksm_refcount"),
            descr(StableNode, "hlist"),
            descr(StableNode, "rmap_hlist_len"),
            descr(KsmWork, "memcmps"),
            descr(KsmWork, "merges"),
            STABLE_FLAG | UNSTABLE_FLAG,
            STABLE_FLAG,
            VM_MERGEABLE,
            VM_LOCKED,
            PAGE_MAPPING_ANON,
            PAGE_MAPPING_FLAGS,
            PG_locked,
            PG_dirty,
            PG_swapcache,
            _PAGE_PRESENT | _PAGE_SPECIAL,
            _PAGE_PRESENT,
            _PAGE_RW,
            _PAGE_DIRTY,
            _PAGE_ACCESSED,
            PTRS_PER_PTE,
            PAGE_SHIFT,
            PG_referenced,
        )
        merge_fused_c = _speedups.merge_fused
        try_merge_fused_c = _speedups.try_merge_fused
        insert_fused_c = _speedups.insert_fused
        _speedups.visit_setup(
            KsmWork,
            MmStruct,
            descr(RmapItem, "rb_parent"),
            descr(RmapItem, "rb_left"),
            descr(RmapItem, "rb_right"),
            descr(RmapItem, "rb_red"),
            descr(RmapItem, "mm"),
            descr(RmapItem, "oldchecksum"),
            descr(RmapItem, "anon_vma"),
            descr(RmapItem, "head"),
            descr(RmapItem, "hnext"),
            descr(RmapItem, "hprev"),
            descr(RmapItem, "tree_page"),
            descr(KsmWork, "scanned"),
            descr(KsmWork, "checksums"),
            descr(KsmWork, "items_allocated"),
            descr(MmStruct, "ksm_rmap_items"),
            PAGE_MAPPING_FLAGS,
            descr(KsmWork, "memcmps"),
            UNSTABLE_FLAG,
            SEQNR_MASK,
            STABLE_FLAG,
        )
        visit_ready = True
        free_scanned_c = _speedups.free_scanned
        count_ksm_frames_c = _speedups.count_ksm_frames
        _speedups.find_setup(
            descr(StableNode, "dups"), descr(StableNode, "chain_prune_time"), PG_locked
        )
        stable_find_c = _speedups.stable_find
    unstable_skip_c = _speedups.unstable_skip
    stable_skip_c = _speedups.stable_skip
    dup_skip_c = _speedups.dup_skip
    rb_insert_color_c = _speedups.rb_insert_color
    rb_erase_c = _speedups.rb_erase
    scan_ptes_c = _speedups.scan_ptes
    HAVE_C_HELPERS = True


def first_visit_enabled(shortcuts: Shortcuts) -> bool:
    """Tell whether the C pte loop may take the first_visit shortcut (it needs ``c_helpers``
    and the C frame base)."""
    if shortcuts.c_helpers and not HAVE_C_HELPERS:
        _setup_c()
    return shortcuts.first_visit and shortcuts.c_helpers and visit_ready


def _c_helper(shortcuts: Shortcuts, on: bool, name: str) -> Callable[..., Any] | None:
    """Return the C helper that _setup_c() put in the module global ``name`` when ``on`` and
    ``c_helpers`` (and the extension has it), else None."""
    if shortcuts.c_helpers and not HAVE_C_HELPERS:
        _setup_c()
    helper: Callable[..., Any] | None = globals()[name]
    return helper if on and shortcuts.c_helpers else None


def stable_find_function(shortcuts: Shortcuts) -> Callable[..., tuple[Any, Any, int]] | None:
    """Return the C walk of stable_tree_search() that also takes the node found
    (``stable_skip`` with ``c_helpers`` and the C frame base), else None; its twin is
    stable_skip_py() and the tests after it in stable_tree_search()."""
    return _c_helper(shortcuts, shortcuts.stable_skip, "stable_find_c")


def fused_free_function(shortcuts: Shortcuts) -> Callable[..., bool] | None:
    """Return free_scanned of ksmsim._speedups with ``fused_free`` and ``c_helpers`` and the C
    frame base, else None (the exact put_page())."""
    return _c_helper(shortcuts, shortcuts.fused_free, "free_scanned_c")


def try_merge_function(shortcuts: Shortcuts) -> Callable[..., bool] | None:
    """Return the C twin of Ksm.try_to_merge_with_ksm_page_fused() with ``fused_merge`` and
    ``c_helpers``, else None (use the method, or with ``fused_merge`` off, no shortcut)."""
    return _c_helper(shortcuts, shortcuts.fused_merge, "try_merge_fused_c")


def fused_insert_function(shortcuts: Shortcuts) -> Callable[..., bool] | None:
    """Return the C twin of Ksm.insert_merged_fused() with ``fused_insert`` and ``c_helpers``,
    else None (use the method, or with ``fused_insert`` off, no shortcut)."""
    return _c_helper(shortcuts, shortcuts.fused_insert, "insert_fused_c")


def fused_merge_function(shortcuts: Shortcuts) -> Callable[..., bool] | None:
    """Return the C twin of Ksm.merge_with_ksm_page_fused() with ``fused_merge`` and
    ``c_helpers``, else None (use the method, or with ``fused_merge`` off, no shortcut)."""
    return _c_helper(shortcuts, shortcuts.fused_merge, "merge_fused_c")


def scan_ptes_function(shortcuts: Shortcuts) -> Callable[..., Any] | None:
    """Return the C twin of Ksm._scan_ptes() with ``c_helpers``, else None (use the method)."""
    return _c_helper(shortcuts, True, "scan_ptes_c")


def insert_color_function(shortcuts: Shortcuts) -> Callable[[Any, Any], None]:
    """Return rb_insert_color(): the C version with ``c_helpers`` (same rotations and colours,
    tests/perf compares the trees), else rbtree.py's."""
    from ksmsim.kernel.rbtree import rb_insert_color

    return _c_helper(shortcuts, True, "rb_insert_color_c") or rb_insert_color


def erase_function(shortcuts: Shortcuts) -> Callable[[Any, Any], None]:
    """Return rb_erase(): the C version with ``c_helpers`` (same splice, rotations and colours,
    tests/perf compares the trees), else rbtree.py's."""
    from ksmsim.kernel.rbtree import rb_erase

    return _c_helper(shortcuts, True, "rb_erase_c") or rb_erase


def dup_skip_function(shortcuts: Shortcuts) -> DupSkip | None:
    """Return the dup walk shortcut to use (None where switched off)."""
    if not shortcuts.dup_skip:
        return None
    if shortcuts.c_helpers and not HAVE_C_HELPERS:
        _setup_c()
    if shortcuts.c_helpers and dup_skip_c is not None:
        return dup_skip_c
    return dup_skip_py


def skip_functions(shortcuts: Shortcuts) -> tuple[StableSkip | None, UnstableSkip | None]:
    """Return the stable and unstable walk shortcuts to use (None where switched off)."""
    if shortcuts.c_helpers and not HAVE_C_HELPERS:
        _setup_c()
    use_c = shortcuts.c_helpers and HAVE_C_HELPERS
    stable: StableSkip | None = None
    unstable: UnstableSkip | None = None
    if shortcuts.stable_skip:
        stable = stable_skip_c if use_c else stable_skip_py
    if shortcuts.unstable_skip:
        unstable = unstable_skip_c if use_c else unstable_skip_py
    return stable, unstable
