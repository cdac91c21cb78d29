"""Kernel Samepage Merging: ksmd, the stable and unstable trees, merging and unmerging (mm/ksm.c).

The seed is mm/ksm.c at commit 4035c07a ("ksm: take keyhole reference to page"): a stable node
points at its KSM page without holding a reference, and ``get_ksm_page`` checks through
``page->mapping`` that the page is still the one the node knew. Later kernels' behaviour is
switched on by named features of the profile (``self.profile``): the in-place upgrade of the
scanned page, checksum-first ordering, walks that restart at a stale node, stable node chains
(max_page_sharing), KSM zero pages, smart scan, and the rest listed in profile.py.

The kernel's globals (ksm_run, the counters, the mm list, the cursor) are the attributes of one
``Ksm`` object per machine, and each kernel function is a method of the same name.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import xxhash

from ksmsim.kernel.jhash import calc_checksum_jhash2
from ksmsim.kernel.ksm_advisor import KsmAdvisor
from ksmsim.kernel.ksm_shortcuts import (
    PageText,
    Shortcuts,
    default_shortcuts,
    dup_skip_function,
    erase_function,
    first_visit_enabled,
    fused_free_function,
    fused_insert_function,
    fused_merge_function,
    insert_color_function,
    scan_ptes_function,
    skip_functions,
    stable_find_function,
    try_merge_function,
)
from ksmsim.kernel.memory import (
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
    VM_FAULT_WRITE,
    copy_user_highpage,
    follow_page,
    handle_mm_fault,
)
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    MMF_VM_MERGE_ANY,
    MMF_VM_MERGEABLE,
    PTRS_PER_PTE,
    VM_DONTEXPAND,
    VM_DROPPABLE,
    VM_HUGETLB,
    VM_INSERTPAGE,
    VM_IO,
    VM_LOCKED,
    VM_MAYSHARE,
    VM_MERGEABLE,
    VM_MIXEDMAP,
    VM_NONLINEAR,
    VM_PFNMAP,
    VM_RESERVED,
    VM_SAO,
    VM_SHARED,
    MmStruct,
    VmArea,
    pte_dirty,
    pte_mkclean,
    pte_write,
    pte_wrprotect,
)
from ksmsim.kernel.page import (
    PAGE_MAPPING_ANON,
    PAGE_MAPPING_FLAGS,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    Page,
    PageAnon,
    PageKsm,
    PG_active,
    PG_dirty,
    PG_locked,
    PG_lru,
    PG_mlocked,
    PG_referenced,
    PG_reserved,
    PG_swapbacked,
    PG_swapcache,
    PG_uptodate,
    get_page,
    get_page_unless_zero,
    page_stable_node,
    set_page_stable_node,
    trylock_page,
    unlock_page,
)
from ksmsim.kernel.profile import Profile
from ksmsim.kernel.rbtree import (
    RbNode,
    RbRoot,
    rb_iter,
    rb_link_node,
    rb_replace_node,
)
from ksmsim.kernel.rmap import (
    AnonVma,
    page_add_anon_rmap,
    page_address_in_vma,
    page_check_address,
    page_remove_rmap,
)

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine

SEQNR_MASK: Final = 0x0FF
UNSTABLE_FLAG: Final = 0x100
STABLE_FLAG: Final = 0x200

KSM_RUN_STOP: Final = 0
KSM_RUN_MERGE: Final = 1
KSM_RUN_UNMERGE: Final = 2

MADV_MERGEABLE: Final = 12
MADV_UNMERGEABLE: Final = 13

EFAULT: Final = 14
ENOMEM: Final = 12
EBUSY: Final = 16

STABLE_NODE_CHAIN: Final = -1024
"""rmap_hlist_len of a chain node (any negative value would do; the kernel's choice)."""

SIZEOF_KSM_RMAP_ITEM: Final = 64
"""sizeof(struct ksm_rmap_item) on 64-bit, as general_profit charges it."""

U8_MAX: Final = 255

# Areas KSM leaves alone: ksm_madvise() ignores MADV_MERGEABLE on them.
VM_KSM_REFUSED_2009: Final = (
    VM_SHARED
    | VM_MAYSHARE
    | VM_PFNMAP
    | VM_IO
    | VM_DONTEXPAND
    | VM_RESERVED
    | VM_HUGETLB
    | VM_INSERTPAGE
    | VM_NONLINEAR
    | VM_MIXEDMAP
    | VM_SAO
)
VM_KSM_REFUSED_6X: Final = (
    VM_SHARED
    | VM_MAYSHARE
    | VM_PFNMAP
    | VM_IO
    | VM_DONTEXPAND
    | VM_HUGETLB
    | VM_MIXEDMAP
    | VM_DROPPABLE
    | VM_SAO
)

_ANON_PRESENT_MASK: Final = _PAGE_PRESENT | _PAGE_SPECIAL
_KSM_ZERO_PTE_BITS: Final = _PAGE_PRESENT | _PAGE_SPECIAL | _PAGE_DIRTY

# ksm_get_folio() locking modes (6.x); the 2009 get_ksm_page() is the NOLOCK one.
NOLOCK: Final = 0
LOCK: Final = 1
TRYLOCK: Final = 2


class _Busy:
    """ERR_PTR(-EBUSY): the page of a node was locked by someone else."""

    __slots__ = ()


BUSY: Final = _Busy()


class StableNode(RbNode):
    """A node of the stable tree (struct stable_node / ksm_stable_node).

    A regular node (or a dup) has ``page``, the keyhole pointer to its KSM page (no reference
    held unless the profile pins it), and ``hlist``, the first rmap_item of its hlist, linked
    through the items' ``hnext``/``hprev``; ``rmap_hlist_len`` counts them. A chain (6.x,
    ``rmap_hlist_len == STABLE_NODE_CHAIN``) sits in the tree in place of a regular node and
    holds, in ``dups``, the dups sharing its contents, linked through ``dup_next``/``dup_prev``.
    """

    __slots__ = (
        "chain",
        "chain_prune_time",
        "dup_next",
        "dup_prev",
        "dups",
        "hlist",
        "is_dup",
        "page",
        "rmap_hlist_len",
    )

    def __init__(self, page: Page | None) -> None:
        super().__init__()
        self.page: Page | None = page
        self.hlist: RmapItem | None = None
        self.rmap_hlist_len = 0
        self.is_dup = False
        self.chain: StableNode | None = None
        self.dups: StableNode | None = None
        self.dup_next: StableNode | None = None
        self.dup_prev: StableNode | None = None
        self.chain_prune_time = 0

    @property
    def is_chain(self) -> bool:
        """Tell whether this is a chain of dups: is_stable_node_chain()."""
        return self.rmap_hlist_len == STABLE_NODE_CHAIN

    @property
    def hlist_len(self) -> int:
        """Return the number of rmap_items on the hlist (0 for a chain)."""
        return max(self.rmap_hlist_len, 0)

    def items(self) -> Iterator[RmapItem]:
        """Yield the rmap_items on this node's hlist, head first."""
        item = self.hlist
        while item is not None:
            yield item
            item = item.hnext

    def dup_nodes(self) -> Iterator[StableNode]:
        """Yield a chain's dups, head first."""
        dup = self.dups
        while dup is not None:
            yield dup
            dup = dup.dup_next


class RmapItem(RbNode):
    """One (mm, virtual address) at which ksmd found an anonymous page (struct rmap_item).

    ``address`` carries the kernel's flag bits: the seqnr byte, UNSTABLE_FLAG, STABLE_FLAG.
    ``rmap_list`` is the next item of the mm's address-sorted list. While in the unstable tree
    the item is itself the red-black node; while stable, ``head`` is its stable node. ``age``
    and ``remaining_skips`` are smart scan's (6.7+). ``tree_page`` is not the kernel's: the
    page the item was inserted into the unstable tree with, for the ``unstable_skip`` shortcut
    (ksm_shortcuts.py); None when that shortcut is off or the item is in no tree.
    """

    __slots__ = (
        "address",
        "age",
        "anon_vma",
        "head",
        "hnext",
        "hprev",
        "mm",
        "oldchecksum",
        "remaining_skips",
        "rmap_list",
        "tree_page",
    )

    def __init__(self, mm: MmStruct, address: int) -> None:
        # RbNode's fields, set here rather than through super() on this hot path.
        self.rb_parent = self.rb_left = self.rb_right = None
        self.rb_red = False
        self.mm: MmStruct = mm
        self.address = address
        self.oldchecksum = 0
        self.rmap_list: RmapItem | None = None
        self.anon_vma: AnonVma | None = None
        self.head: StableNode | None = None
        self.hnext: RmapItem | None = None
        self.hprev: RmapItem | None = None
        self.age = 0
        self.remaining_skips = 0
        self.tree_page: Page | None = None

    def __repr__(self) -> str:
        flags = ("S" if self.address & STABLE_FLAG else "") + (
            "U" if self.address & UNSTABLE_FLAG else ""
        )
        return f"<RmapItem {self.mm.name}:{self.address & PAGE_MASK:#x} {flags or '-'}>"


class MmSlot:
    """An mm registered with KSM (struct mm_slot): a place in ksmd's list and its rmap_items."""

    __slots__ = ("mm", "mm_next", "mm_prev", "rmap_list")

    def __init__(self, mm: MmStruct | None) -> None:
        self.mm = mm
        self.rmap_list: RmapItem | None = None
        self.mm_next: MmSlot = self
        self.mm_prev: MmSlot = self

    def __repr__(self) -> str:
        return f"<MmSlot {self.mm.name if self.mm else 'head'}>"


RmapLink = MmSlot | RmapItem
"""What the kernel's ``struct rmap_item **rmap_list`` points into: the ``rmap_list`` field
of either a slot (the list head) or an item (its next pointer)."""


class KsmScan:
    """ksmd's single cursor (struct ksm_scan): slot, next address, list position and seqnr."""

    __slots__ = ("address", "mm_slot", "rmap_list", "seqnr")

    def __init__(self, head: MmSlot) -> None:
        self.mm_slot = head
        self.address = 0
        self.rmap_list: RmapLink = head
        self.seqnr = 0


class KsmWork:
    """Counts of the work ksmd did, from which the cost model derives its CPU time."""

    __slots__ = (
        "addresses",
        "break_cows",
        "checksums",
        "items_allocated",
        "kpage_copies",
        "memcmps",
        "merges",
        "scanned",
    )

    def __init__(self) -> None:
        self.addresses = 0
        self.scanned = 0
        self.checksums = 0
        self.memcmps = 0
        self.merges = 0
        self.kpage_copies = 0
        self.items_allocated = 0
        self.break_cows = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counts by name."""
        return {name: getattr(self, name) for name in self.__slots__}


def skip_age(age: int) -> int:
    """Return how many passes smart scan skips a page of this age: skip_age() (6.7+)."""
    if age <= 3:
        return 1
    if age <= 5:
        return 2
    if age <= 8:
        return 4
    return 8


class Ksm:
    """The state of mm/ksm.c on one machine, with its functions as methods."""

    def __init__(self, machine: Machine, profile: Profile) -> None:
        self.machine = machine
        self.profile = profile
        self.ksm_mm_head = MmSlot(None)
        self.mm_slots: dict[MmStruct, MmSlot] = {}
        self.ksm_scan = KsmScan(self.ksm_mm_head)
        self.root_stable_tree = RbRoot()
        self.root_unstable_tree = RbRoot()
        self.ksm_pages_shared = 0
        self.ksm_pages_sharing = 0
        self.ksm_pages_unshared = 0
        self.ksm_rmap_items = 0
        self.ksm_pages_scanned = 0
        self.ksm_pages_skipped = 0
        self.ksm_zero_pages = 0
        self.ksm_stable_node_chains = 0
        self.ksm_stable_node_dups = 0
        self.ksm_run = KSM_RUN_STOP
        self.ksm_thread_pages_to_scan = 100
        self.ksm_thread_sleep_millisecs = 20
        self.ksm_max_page_sharing = 256
        self.ksm_stable_node_chains_prune_millisecs = 2000
        self.ksm_use_zero_pages = False
        self.ksm_smart_scan = True
        self.ksm_merge_across_nodes = 1
        # ksm_init(): a quarter of RAM, where the profile still has the limit.
        self.ksm_max_kernel_pages = (
            machine.zone.present_pages // 4 if profile.has_max_kernel_pages else 0
        )
        self.refused_vm_flags = VM_KSM_REFUSED_6X if profile.vma_compat_6x else VM_KSM_REFUSED_2009
        self.work = KsmWork()
        self.ksmd_wakeups = 0
        self._mem_map = machine.zone.mem_map
        self._calc: Callable[[bytes], int] = (
            calc_checksum_jhash2 if profile.checksum == "jhash2" else _calc_checksum_xxhash
        )
        # ksm_init(): the checksum of an empty page, for use_zero_pages.
        self.zero_checksum = self._calc(machine.zone.zero_page.data or b"")
        self.advisor = KsmAdvisor(self)
        self.mutations: frozenset[str] = frozenset()
        """Deliberate bugs the interleaving explorer may switch on (``ksmsim check --mutation``);
        empty in every ordinary run."""
        self._checksum_first = profile.checksum_before_stable_tree
        # For the C twins of the fused merges.
        self._wp_dirty = profile.write_protect_dirty_ptes
        self._find_mergeable_vma = profile.find_mergeable_vma
        self.set_shortcuts(default_shortcuts())

    def set_shortcuts(self, shortcuts: Shortcuts) -> None:
        """Choose the exact shortcuts this KSM may take (ksm_shortcuts.py)."""
        self.shortcuts = shortcuts
        self._stable_skip, self._unstable_skip = skip_functions(shortcuts)
        self._rb_insert_color = insert_color_function(shortcuts)
        self._rb_erase = erase_function(shortcuts)
        self._dup_skip = dup_skip_function(shortcuts)
        self._stable_find = stable_find_function(shortcuts)
        self._content_checksum = shortcuts.content_checksum and shortcuts.c_helpers
        self._scan_ptes_fn = scan_ptes_function(shortcuts) or Ksm._scan_ptes
        self._first_visit = first_visit_enabled(shortcuts)
        self._fused_free = fused_free_function(shortcuts)
        # While ksm_do_scan() lets the first_visit shortcut take pages: the ksm_pages_scanned
        # count it must stay below (None: not now).
        self._visit_until: int | None = None
        # While it may also take pages that merge into the stable tree (see ksm_do_scan()).
        self._visit_merge: tuple[Any, ...] | None = None
        # While a ksmd batch may free pages with free_scanned (fused_free): it and its arguments.
        self._batch_free: tuple[Any, tuple[Any, ...]] | None = None
        self._fused_try = try_merge_function(shortcuts) or (
            Ksm.try_to_merge_with_ksm_page_fused if shortcuts.fused_merge else None
        )
        self._fused_merge = fused_merge_function(shortcuts) or (
            Ksm.merge_with_ksm_page_fused if shortcuts.fused_merge else None
        )
        # Shortcut fused_insert needs stable_skip's walk, and a profile whose merge takes the
        # tree item out of its tree (3.x+), whose stable_tree_insert() takes no reference and
        # whose merge allocates no page to put.
        self._fused_insert: Callable[..., bool] | None = None
        if (
            shortcuts.fused_insert
            and shortcuts.stable_skip
            and self.profile.find_mergeable_vma
            and not self.profile.stable_node_pins_page
            and not self.profile.merge_allocates_kpage
        ):
            self._fused_insert = fused_insert_function(shortcuts) or Ksm.insert_merged_fused
        # The zone's map_generation when the unstable tree was last emptied (-1: never).
        self._unstable_generation = -1
        # The VMA loop that found the page scan_get_next_rmap_item() returned last, for the
        # scan_cursor shortcut of ksm_do_scan().
        self._scan_cursor: Iterator[tuple[RmapItem, Page]] | None = None

    def _shortcuts_allowed(self) -> bool:
        """Tell whether shortcuts may run now: not under the interleaving explorer, which
        needs every step, nor with a deliberate bug switched on."""
        return self.machine.preempt is None and not self.mutations

    # -- counters --------------------------------------------------------------------------------
    @property
    def pages_volatile(self) -> int:
        """Return pages_volatile as sysfs shows it: derived, and clamped at zero."""
        v = (
            self.ksm_rmap_items
            - self.ksm_pages_shared
            - self.ksm_pages_sharing
            - self.ksm_pages_unshared
        )
        return max(v, 0)

    @property
    def general_profit(self) -> int:
        """Return general_profit: bytes saved less the rmap_items' own cost (6.x)."""
        saved = (self.ksm_pages_sharing + self.ksm_zero_pages) * PAGE_SIZE
        return saved - self.ksm_rmap_items * SIZEOF_KSM_RMAP_ITEM

    def ksm_process_profit(self, mm: MmStruct) -> int:
        """Return a process's profit as /proc/PID/ksm_stat shows it: ksm_process_profit()."""
        saved = (mm.ksm_merging_pages + mm.ksm_zero_pages) * PAGE_SIZE
        return saved - mm.ksm_rmap_items * SIZEOF_KSM_RMAP_ITEM

    def ksm_process_mergeable(self, mm: MmStruct) -> bool:
        """Tell whether any VMA of the mm is mergeable: ksm_process_mergeable()."""
        return any(vma.vm_flags & VM_MERGEABLE for vma in mm.mmap)

    def jiffies(self) -> int:
        """Return the machine's clock in jiffies."""
        hz = self.machine.config.hz
        return self.machine.clock_ns * hz // 1_000_000_000

    # -- small helpers ---------------------------------------------------------------------------
    def calc_checksum(self, page: Page) -> int:
        """Return the checksum of a page's contents: calc_checksum() (jhash2 or xxhash by profile).

        The value is cached on the frame for its current contents object; the work counts a
        checksum at every call all the same, as the kernel computes one at every call.
        """
        self.work.checksums += 1
        data = page.data
        if page.csum_of is data:
            return page.csum
        assert data is not None
        if self._content_checksum and type(data) is PageText:
            # Shortcut content_checksum: contents held as a PageText keep their checksum, which
            # is a function of the contents alone (shared by every frame holding the object).
            contents: Any = data
            csum: int = contents.checksum(self._calc)
        else:
            csum = self._calc(data)
        page.csum = csum
        page.csum_of = data
        return csum

    def hold_anon_vma(self, rmap_item: RmapItem, anon_vma: AnonVma | None) -> None:
        """Pin the anon_vma a stable item was merged in: hold_anon_vma() / get_anon_vma()."""
        assert anon_vma is not None
        rmap_item.anon_vma = anon_vma
        anon_vma.ksm_refcount += 1

    def drop_anon_vma(self, rmap_item: RmapItem) -> None:
        """Drop the item's anon_vma pin, freeing an anon_vma nothing else uses: drop_anon_vma()."""
        anon_vma = rmap_item.anon_vma
        assert anon_vma is not None
        anon_vma.ksm_refcount -= 1
        if anon_vma.ksm_refcount == 0 and not anon_vma.head:
            anon_vma.freed = True

    def alloc_rmap_item(self, mm: MmStruct, address: int) -> RmapItem:
        """Allocate a zeroed rmap_item and count it: alloc_rmap_item()."""
        self.ksm_rmap_items += 1
        mm.ksm_rmap_items += 1
        self.work.items_allocated += 1
        return RmapItem(mm, address)

    def free_rmap_item(self, rmap_item: RmapItem) -> None:
        """Uncount and free an rmap_item: free_rmap_item()."""
        self.ksm_rmap_items -= 1
        rmap_item.mm.ksm_rmap_items -= 1
        rmap_item.rmap_list = None

    def _preempt(self, point: str) -> None:
        hook = self.machine.preempt
        if hook is not None:
            hook(point)

    def find_mergeable_vma(self, mm: MmStruct, addr: int) -> VmArea | None:
        """Return the mergeable VMA with an anon_vma that covers ``addr``: find_mergeable_vma()."""
        if mm.mm_users == 0:
            return None
        vma = mm.find_vma(addr)
        if vma is None or vma.vm_start > addr:
            return None
        if not vma.vm_flags & VM_MERGEABLE or vma.anon_vma is None:
            return None
        return vma

    def ksm_might_unmap_zero_page(self, mm: MmStruct, pte: int) -> None:
        """Uncount a KSM-placed zero page whose pte is going away: ksm_might_unmap_zero_page().

        KSM marks the zero pages it maps with the dirty bit, which a read fault never sets.
        """
        if pte & _KSM_ZERO_PTE_BITS == _KSM_ZERO_PTE_BITS:
            self.ksm_zero_pages -= 1
            mm.ksm_zero_pages -= 1

    # -- unmerging -------------------------------------------------------------------------------
    def break_ksm(self, vma: VmArea, addr: int) -> int:
        """Fault a KSM page at ``addr`` until it is private again: break_ksm().

        At 4035c07a any page found ends the loop unless it is KSM, which gets a write fault.
        With the profile's ``unshare_fault`` (6.x) only KSM pages and KSM-placed zero pages are
        touched, with FAULT_FLAG_UNSHARE. Returns 0, or -ENOMEM when the fault ran out of memory.
        """
        zone = self.machine.zone
        unshare = self.profile.unshare_fault
        while True:
            if unshare:
                pte = vma.vm_mm.pte_get(addr)
                if not pte & _PAGE_PRESENT:
                    return 0
                if pte & _PAGE_SPECIAL:
                    if pte & _KSM_ZERO_PTE_BITS != _KSM_ZERO_PTE_BITS:
                        return 0
                else:
                    kpage = self._mem_map[pte >> PAGE_SHIFT]
                    if kpage is None or not PageKsm(kpage):
                        return 0
                ret = handle_mm_fault(vma, addr, write=False, unshare=True)
                if ret & (VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_OOM):
                    return -ENOMEM if ret & VM_FAULT_OOM else 0
                continue
            page = follow_page(vma, addr, foll_get=True)
            if page is None:
                return 0
            ret = handle_mm_fault(vma, addr, write=True) if PageKsm(page) else VM_FAULT_WRITE
            zone.put_page(page)
            if ret & (VM_FAULT_WRITE | VM_FAULT_SIGBUS | VM_FAULT_OOM):
                return -ENOMEM if ret & VM_FAULT_OOM else 0

    def break_cow(self, rmap_item: RmapItem, drop_anon_vma: bool = True) -> None:
        """Undo a merge at the item's address, dropping its anon_vma pin first: break_cow().

        The pinned design's break_cow() left the pin to its callers; the one caller that had
        none to drop (a KSM page no stable node knows) passes ``drop_anon_vma=False``.
        """
        self.work.break_cows += 1
        if drop_anon_vma:
            self.drop_anon_vma(rmap_item)
        addr = rmap_item.address & PAGE_MASK
        vma = self.find_mergeable_vma(rmap_item.mm, addr)
        if vma is not None:
            self.break_ksm(vma, addr)

    def get_mergeable_page(self, rmap_item: RmapItem) -> Page | None:
        """Return, with a reference, the anonymous page now at the item's address:
        get_mergeable_page(), with follow_page() inlined for the tree walk."""
        mm = rmap_item.mm
        if mm.mm_users == 0:
            return None
        addr = rmap_item.address & PAGE_MASK
        vma = mm.mmap_cache
        if vma is None or not vma.vm_start <= addr < vma.vm_end:
            vma = mm.find_vma(addr)
            if vma is None or vma.vm_start > addr:
                return None
        if not vma.vm_flags & VM_MERGEABLE or vma.anon_vma is None:
            return None
        vpn = addr >> PAGE_SHIFT
        table = mm.pgd.get(vpn >> 9)
        if table is None:
            return None
        pte = table[vpn & (PTRS_PER_PTE - 1)]
        # Not present, a swap entry, or the zero page (which is not anonymous): no page.
        if pte & _ANON_PRESENT_MASK != _PAGE_PRESENT:
            return None
        page = self._mem_map[pte >> PAGE_SHIFT]
        assert page is not None
        if not page.mapping_flags & PAGE_MAPPING_ANON:
            return None
        page.count += 1
        return page

    # -- the stable tree and the keyhole ------------------------------------------------------------
    def remove_node_from_stable_tree(self, stable_node: StableNode) -> None:
        """Take a node whose page is gone out of the tree (or out of its chain), uncounting all
        its items: remove_node_from_stable_tree(). The items stay on their mm's list, flagless."""
        item = stable_node.hlist
        while item is not None:
            if item.hnext is not None:
                self.ksm_pages_sharing -= 1
            else:
                self.ksm_pages_shared -= 1
            item.mm.ksm_merging_pages -= 1
            stable_node.rmap_hlist_len -= 1
            self.drop_anon_vma(item)
            item.address &= PAGE_MASK
            item = item.hnext
        if stable_node.is_dup:
            self.__stable_node_dup_del(stable_node)
        else:
            self._rb_erase(stable_node, self.root_stable_tree)
        stable_node.hlist = None
        stable_node.page = None

    def get_ksm_page(self, stable_node: StableNode, lock: int = NOLOCK) -> Page | _Busy | None:
        """Return the node's page with a reference if it still carries the node's key, else
        remove the stale node and return None: get_ksm_page() (4035c07a, the keyhole), with
        6.x ksm_get_folio()'s locking modes (TRYLOCK may give BUSY).

        With a profile whose stable nodes pin their page, the page is always the node's.
        """
        page = stable_node.page
        assert page is not None
        if self.profile.stable_node_pins_page:
            get_page(page)
            return page
        self._preempt("get_ksm_page:read_page")
        # rcu_read_lock(): the struct page stays a struct page, whatever happens to it.
        if page.mapping is stable_node and page.mapping_flags == PAGE_MAPPING_FLAGS:
            self._preempt("get_ksm_page:before_get_page_unless_zero")
            if get_page_unless_zero(page):
                # The keyhole's re-check; the explorer's no-keyhole-recheck mutation skips it.
                if (
                    page.mapping is stable_node and page.mapping_flags == PAGE_MAPPING_FLAGS
                ) or "no-keyhole-recheck" in self.mutations:
                    if lock == NOLOCK:
                        return page
                    if lock == TRYLOCK:
                        if not trylock_page(page):
                            self.machine.zone.put_page(page)
                            return BUSY
                    else:
                        self.machine.lock_page(page)
                    if page.mapping is stable_node:
                        return page
                    unlock_page(page)
                self.machine.zone.put_page(page)
        if (
            stable_node.page is not page
            and self.profile.migrate_ksm_pages_compaction
            and "no-kpfn-recheck" not in self.mutations
        ):
            # ksm_get_folio(): migration moved the page meanwhile (node->kpfn changed): again.
            return self.get_ksm_page(stable_node, lock)
        self.remove_node_from_stable_tree(stable_node)
        return None

    def _get_ksm_page(self, stable_node: StableNode) -> Page | None:
        page = self.get_ksm_page(stable_node)
        assert not isinstance(page, _Busy)
        return page

    def remove_rmap_item_from_tree(self, rmap_item: RmapItem) -> None:
        """Take an item out of whichever tree holds it and uncount it: remove_rmap_item_from_tree().

        A stable item leaves its node's hlist (the node stays in the tree, even empty, while its
        page lives); an unstable item is rb_erased only if it belongs to the current pass.
        """
        address = rmap_item.address
        if address & STABLE_FLAG and self.profile.stable_node_pins_page:
            self._remove_pinned_rmap_item(rmap_item)
        elif address & STABLE_FLAG:
            stable_node = rmap_item.head
            assert stable_node is not None
            if not self.profile.checksum_before_stable_tree:
                page = self._get_ksm_page(stable_node)
                if page is None:
                    return
                self.machine.lock_page(page)
            else:
                locked = self.get_ksm_page(stable_node, LOCK)
                assert not isinstance(locked, _Busy)
                if locked is None:
                    return
                page = locked
            self._hlist_del(rmap_item, stable_node)
            unlock_page(page)
            self.machine.zone.put_page(page)
            if stable_node.hlist is not None:
                self.ksm_pages_sharing -= 1
            else:
                self.ksm_pages_shared -= 1
            rmap_item.mm.ksm_merging_pages -= 1
            stable_node.rmap_hlist_len -= 1
            self.drop_anon_vma(rmap_item)
            rmap_item.head = None
            rmap_item.address = address & PAGE_MASK
        elif address & UNSTABLE_FLAG:
            age = (self.ksm_scan.seqnr - address) & 0xFF
            if age > 1:
                raise AssertionError(f"BUG: unstable rmap_item of age {age}: {rmap_item!r}")
            if age == 0:
                self._rb_erase(rmap_item, self.root_unstable_tree)
            self.ksm_pages_unshared -= 1
            rmap_item.address = address & PAGE_MASK
            rmap_item.tree_page = None

    def _remove_pinned_rmap_item(self, rmap_item: RmapItem) -> None:
        """The pinned design's removal of a stable item (db114b83): the node goes, and its page
        is unpinned, exactly when its last item does."""
        stable_node = rmap_item.head
        assert stable_node is not None and stable_node.page is not None
        page = stable_node.page
        self.machine.lock_page(page)
        self._hlist_del(rmap_item, stable_node)
        stable_node.rmap_hlist_len -= 1
        rmap_item.mm.ksm_merging_pages -= 1
        if stable_node.hlist is not None:
            unlock_page(page)
            self.ksm_pages_sharing -= 1
        else:
            set_page_stable_node(page, None)
            unlock_page(page)
            self._rb_erase(stable_node, self.root_stable_tree)
            stable_node.page = None
            self.ksm_pages_shared -= 1
            self.machine.note_ksm_page_released(page)
            self.machine.zone.put_page(page)  # the pin
        self.drop_anon_vma(rmap_item)
        rmap_item.head = None
        rmap_item.address &= PAGE_MASK

    @staticmethod
    def _hlist_del(rmap_item: RmapItem, stable_node: StableNode) -> None:
        nxt, prev = rmap_item.hnext, rmap_item.hprev
        if prev is None:
            stable_node.hlist = nxt
        else:
            prev.hnext = nxt
        if nxt is not None:
            nxt.hprev = prev
        rmap_item.hnext = rmap_item.hprev = None

    def remove_trailing_rmap_items(self, link: RmapLink) -> None:
        """Remove and free every item after ``link``: remove_trailing_rmap_items()."""
        while link.rmap_list is not None:
            rmap_item = link.rmap_list
            link.rmap_list = rmap_item.rmap_list
            self.remove_rmap_item_from_tree(rmap_item)
            self.free_rmap_item(rmap_item)

    # -- stable node chains (max_page_sharing, 4.13+) ----------------------------------------------
    def is_page_sharing_candidate(self, stable_node: StableNode, offset: int = 0) -> bool:
        """Tell whether a node still has a mapping and room for ``offset`` + 1 more:
        __is_page_sharing_candidate()."""
        n = stable_node.rmap_hlist_len
        return n > 0 and n + offset < self.ksm_max_page_sharing

    def stable_node_chain_add_dup(self, dup: StableNode, chain: StableNode) -> None:
        """Put a node at the head of a chain's dups: stable_node_chain_add_dup()."""
        dup.is_dup = True
        dup.chain = chain
        first = chain.dups
        dup.dup_prev = None
        dup.dup_next = first
        if first is not None:
            first.dup_prev = dup
        chain.dups = dup
        self.ksm_stable_node_dups += 1

    def __stable_node_dup_del(self, dup: StableNode) -> None:
        """Unlink a dup from its chain: __stable_node_dup_del()."""
        chain = dup.chain
        assert chain is not None
        if dup.dup_prev is None:
            chain.dups = dup.dup_next
        else:
            dup.dup_prev.dup_next = dup.dup_next
        if dup.dup_next is not None:
            dup.dup_next.dup_prev = dup.dup_prev
        dup.dup_next = dup.dup_prev = None
        dup.is_dup = False
        dup.chain = None
        self.ksm_stable_node_dups -= 1

    def alloc_stable_node_chain(self, dup: StableNode) -> StableNode:
        """Replace a regular node in the tree by a chain holding it as its first dup:
        alloc_stable_node_chain()."""
        chain = StableNode(None)
        chain.rmap_hlist_len = STABLE_NODE_CHAIN
        chain.chain_prune_time = self.jiffies()
        self.ksm_stable_node_chains += 1
        rb_replace_node(dup, chain, self.root_stable_tree)
        self.stable_node_chain_add_dup(dup, chain)
        return chain

    def free_stable_node_chain(self, chain: StableNode) -> None:
        """Erase an empty chain from the tree: free_stable_node_chain()."""
        self._rb_erase(chain, self.root_stable_tree)
        self.ksm_stable_node_chains -= 1

    def stable_node_dup(
        self, chain: StableNode, prune: bool
    ) -> tuple[Page | None, StableNode | None, StableNode | None]:
        """Pick a chain's best dup to share, pruning stale dups: stable_node_dup() (6.x).

        Returns (its page with a reference, the dup, the node now at the chain's place in the
        tree): a chain left with one dup collapses into it; a chain left with none is freed.
        """
        jiffies = self.jiffies()
        prune_after = _msecs_to_jiffies(
            self.ksm_stable_node_chains_prune_millisecs, self.machine.config.hz
        )
        if not prune or jiffies < chain.chain_prune_time + prune_after:
            prune = False
        else:
            chain.chain_prune_time = jiffies
        zone = self.machine.zone
        found: StableNode | None = None
        found_len = 0
        tree_page: Page | None = None
        skip = self._dup_skip if self._shortcuts_allowed() else None
        dup = chain.dups
        while dup is not None:
            if skip is not None:
                # Shortcut dup_skip: pass over the dups whose get_ksm_page() succeeds, choosing
                # as below; then hold a reference on the chosen dup's page alone, as below.
                chosen = found
                dup, found, found_len, broke = skip(
                    dup,
                    found,
                    found_len,
                    self.ksm_max_page_sharing,
                    prune,
                    self.profile.stable_node_pins_page,
                )
                if found is not chosen:
                    assert found is not None and found.page is not None
                    if tree_page is not None:
                        zone.put_page(tree_page)
                    tree_page = found.page
                    get_page(tree_page)
                if broke or dup is None:
                    break
            nxt = dup.dup_next
            page = self._get_ksm_page(dup)
            if page is not None:
                if found is None or (
                    self.is_page_sharing_candidate(dup)
                    and (
                        not self.is_page_sharing_candidate(found) or dup.rmap_hlist_len > found_len
                    )
                ):
                    if tree_page is not None:
                        zone.put_page(tree_page)
                    found = dup
                    found_len = dup.rmap_hlist_len
                    tree_page = page
                    if not prune and self.is_page_sharing_candidate(found):
                        break
                else:
                    zone.put_page(page)
            dup = nxt
        if found is None:
            self.free_stable_node_chain(chain)
            return None, None, None
        if chain.dups is found and found.dup_next is None:
            # Only one dup left, below the limit: the chain is dropped.
            rb_replace_node(chain, found, self.root_stable_tree)
            found.is_dup = False
            found.chain = None
            chain.dups = None
            self.ksm_stable_node_chains -= 1
            self.ksm_stable_node_dups -= 1
            return tree_page, found, found
        if chain.dups is not found and self.is_page_sharing_candidate(found, 1):
            # Move it to the head so the next search finds it first.
            self.__stable_node_dup_del(found)
            self.stable_node_chain_add_dup(found, chain)
        return tree_page, found, chain

    def __stable_node_chain(
        self, stable_node: StableNode, prune: bool
    ) -> tuple[Page | None, StableNode | None, StableNode | None]:
        """Return (page, dup, node in the tree) for a tree node, chain or not:
        __stable_node_chain() (6.x)."""
        if stable_node.rmap_hlist_len != STABLE_NODE_CHAIN:
            page = self._get_ksm_page(stable_node)
            return page, stable_node, stable_node
        return self.stable_node_dup(stable_node, prune)

    # -- stable tree search, insert and append -----------------------------------------------------
    def stable_tree_search(self, page: Page) -> Page | _Busy | None:
        """Find the KSM page equal to ``page``, with a reference on it: stable_tree_search().

        At 4035c07a a stale node met on the way ends the search; with the profile's
        ``stale_node_restarts_walk`` the walk starts again from the root. With chains, a match
        whose every dup is full is no match (the page goes on to the unstable tree).
        """
        page_node = page_stable_node(page)
        if page_node is not None:  # ksm page forked
            get_page(page)
            return page
        data = page.data
        assert data is not None
        work = self.work
        zone = self.machine.zone
        root = self.root_stable_tree
        chains = self.profile.stable_node_chains
        skip = self._stable_skip if self._shortcuts_allowed() else None
        find = self._stable_find if skip is not None else None
        pinned = self.profile.stable_node_pins_page
        floor = 0
        if find is not None and chains and root.rb_node is not None:
            # No prune is due at a chain whose chain_prune_time is above this.
            hz = self.machine.config.hz
            floor = self.jiffies() - _msecs_to_jiffies(
                self.ksm_stable_node_chains_prune_millisecs, hz
            )
        while True:
            node = root.rb_node
            restart = False
            while node is not None:
                if find is not None:
                    # The C helper of the stable_skip shortcut: the walk below, and the node
                    # found taken at once as below (regular or a chain's first dup).
                    taken, node, skipped = find(
                        node, data, pinned, chains, self.ksm_max_page_sharing, floor
                    )
                    work.memcmps += skipped
                    if taken is not None:
                        found: Page = taken
                        return found
                    if node is None:
                        break
                elif skip is not None:
                    # Shortcut stable_skip: pass over the regular nodes whose get_ksm_page()
                    # succeeds and whose contents differ, counting their memcmps; for them
                    # the step below is exactly get, memcmp, put, descend.
                    node, _, _, skipped = skip(node, data, pinned)
                    work.memcmps += skipped
                    if node is None:
                        break
                if skip is not None:
                    # The node the walk stopped at, taken at once in the cases below (after
                    # the C walk, only in those it leaves here, e.g. a full regular node).
                    assert isinstance(node, StableNode)
                    hit = node.page
                    if (
                        node.rmap_hlist_len != STABLE_NODE_CHAIN
                        and hit is not None
                        and (
                            pinned
                            or (
                                hit.mapping is node
                                and hit.mapping_flags == PAGE_MAPPING_FLAGS
                                and hit.count
                            )
                        )
                        and not hit.flags & PG_locked
                        and hit.data == data
                    ):
                        # The node found, a regular one whose get_ksm_page() succeeds: the steps
                        # below take its page, memcmp it equal, and return it; with chains they
                        # put it back, test the node is a candidate and take the page again
                        # with get_ksm_page(TRYLOCK), which succeeds on an unlocked page, and
                        # unlock it. In all: one memcmp and one reference.
                        work.memcmps += 1
                        if chains and not self.is_page_sharing_candidate(node):
                            return None
                        hit.count += 1
                        return hit
                    if chains and node.rmap_hlist_len == STABLE_NODE_CHAIN:
                        head = node.dups
                        hit = head.page if head is not None else None
                        if (
                            hit is not None
                            and head is not None
                            and head.dup_next is not None
                            and 0 < head.rmap_hlist_len < self.ksm_max_page_sharing
                            and hit.mapping is head
                            and (pinned or hit.count)
                            and hit.mapping_flags == PAGE_MAPPING_FLAGS
                            and not hit.flags & PG_locked
                            and hit.data == data
                            and self.jiffies()
                            < node.chain_prune_time
                            + _msecs_to_jiffies(
                                self.ksm_stable_node_chains_prune_millisecs,
                                self.machine.config.hz,
                            )
                        ):
                            # A chain whose first dup takes the page, no prune due: the steps
                            # below (stable_node_dup() chooses that dup at once, its page is
                            # taken, compared equal and, as above, returned) come to one
                            # memcmp and one reference.
                            work.memcmps += 1
                            hit.count += 1
                            return hit
                assert isinstance(node, StableNode)
                if chains:
                    tree_page, dup, tree_node = self.__stable_node_chain(node, prune=True)
                else:
                    tree_page, dup, tree_node = self._get_ksm_page(node), node, node
                if tree_page is None:
                    if self.profile.stale_node_restarts_walk:
                        restart = True
                        break
                    return None
                assert tree_node is not None and dup is not None
                work.memcmps += 1
                tree_data = tree_page.data
                if data == tree_data:
                    if not chains:
                        return tree_page
                    if (
                        skip is not None
                        and self.is_page_sharing_candidate(dup)
                        and tree_page.mapping is dup
                        and tree_page.mapping_flags == PAGE_MAPPING_FLAGS
                        and not tree_page.flags & PG_locked
                    ):
                        # Shortcut stable_skip: the steps below drop the reference, take it
                        # again with get_ksm_page(TRYLOCK) (which succeeds: the keyhole still
                        # holds and the page is unlocked) and unlock the page: no change.
                        return tree_page
                    zone.put_page(tree_page)
                    if not self.is_page_sharing_candidate(dup):
                        return None
                    locked = self.get_ksm_page(dup, TRYLOCK)
                    if locked is BUSY:
                        return BUSY
                    if locked is None:
                        restart = True
                        break
                    assert isinstance(locked, Page)
                    unlock_page(locked)
                    return locked
                assert tree_data is not None
                zone.put_page(tree_page)
                node = tree_node.rb_left if data < tree_data else tree_node.rb_right
            if not restart:
                return None

    def stable_tree_insert(self, kpage: Page) -> StableNode | None:
        """Insert a new node for ``kpage``: stable_tree_insert().

        At 4035c07a a stale node met or an equal page found makes the insert fail; with the
        profile's features the walk restarts at stale nodes and an equal page gets the new node
        added as a dup to its chain.
        """
        root = self.root_stable_tree
        data = kpage.data
        assert data is not None
        zone = self.machine.zone
        chains = self.profile.stable_node_chains
        skip = self._stable_skip if self._shortcuts_allowed() else None
        pinned = self.profile.stable_node_pins_page
        while True:
            parent: StableNode | None = None
            left = False
            need_chain = False
            restart = False
            node = root.rb_node
            while node is not None:
                if skip is not None:
                    # Shortcut stable_skip, as in stable_tree_search().
                    node, skipped_parent, skipped_left, skipped = skip(node, data, pinned)
                    if skipped:
                        self.work.memcmps += skipped
                        parent, left = skipped_parent, skipped_left
                    if node is None:
                        break
                assert isinstance(node, StableNode)
                if chains:
                    tree_page, _dup, tree_node = self.__stable_node_chain(node, prune=False)
                else:
                    tree_page, tree_node = self._get_ksm_page(node), node
                if tree_page is None:
                    if self.profile.stale_node_restarts_walk:
                        restart = True
                        break
                    return None
                assert tree_node is not None
                self.work.memcmps += 1
                tree_data = tree_page.data
                zone.put_page(tree_page)
                assert tree_data is not None
                parent = tree_node
                if data == tree_data:
                    if not chains:
                        # Not a bug: our page was not write-protected when the search missed it.
                        return None
                    need_chain = True
                    break
                left = data < tree_data
                node = tree_node.rb_left if left else tree_node.rb_right
            if not restart:
                break
        stable_node = StableNode(kpage)
        if not need_chain:
            rb_link_node(stable_node, parent, left, root)
            self._rb_insert_color(stable_node, root)
        else:
            assert parent is not None
            chain = parent
            if not chain.is_chain:
                chain = self.alloc_stable_node_chain(parent)
            self.stable_node_chain_add_dup(stable_node, chain)
        if self.profile.stable_node_pins_page:
            get_page(kpage)
        set_page_stable_node(kpage, stable_node)
        return stable_node

    def insert_merged_fused(
        self, tree_rmap_item: RmapItem, rmap_item: RmapItem, kpage: Page
    ) -> bool:
        """Give ``kpage``, into which two pages found equal in the unstable tree were merged, its
        new stable node and both items, in one step, or return False having changed nothing
        (shortcut ``fused_insert``; the C twin is ``insert_fused`` of ksmsim._speedups).

        These are the steps of cmp_and_merge_page() after try_to_merge_two_pages() for the
        common case: the tree item already out of its tree (remove_rmap_item_from_tree() does
        nothing), ``kpage`` unlocked (lock_page() and unlock_page() leave its flags as they
        were) and stable_tree_insert()'s walk passing every node (no chain, no stale node, no
        equal page: the node is linked at the leaf where the walk ends).
        """
        skip = self._stable_skip
        data = kpage.data
        if (
            tree_rmap_item.address & (STABLE_FLAG | UNSTABLE_FLAG)
            or kpage.flags & PG_locked
            or skip is None
            or data is None
        ):
            return False
        root = self.root_stable_tree
        parent: Any = None
        left = False
        compares = 0
        node = root.rb_node
        if node is not None:
            stop, parent, left, compares = skip(node, data, False)
            if stop is not None:
                return False  # the exact walk has a step to take there
        self.work.memcmps += compares
        stable_node = StableNode(kpage)
        rb_link_node(stable_node, parent, left, root)
        self._rb_insert_color(stable_node, root)
        set_page_stable_node(kpage, stable_node)
        self.stable_tree_append(tree_rmap_item, stable_node)
        self.stable_tree_append(rmap_item, stable_node)
        return True

    def stable_tree_append(self, rmap_item: RmapItem, stable_node: StableNode) -> None:
        """Add an item at the head of a node's hlist and count it: stable_tree_append()."""
        stable_node.rmap_hlist_len += 1
        rmap_item.head = stable_node
        rmap_item.address |= STABLE_FLAG
        first = stable_node.hlist
        rmap_item.hnext = first
        rmap_item.hprev = None
        if first is not None:
            first.hprev = rmap_item
            self.ksm_pages_sharing += 1
        else:
            self.ksm_pages_shared += 1
        stable_node.hlist = rmap_item
        rmap_item.mm.ksm_merging_pages += 1

    def remove_stable_node(self, stable_node: StableNode) -> int:
        """Remove a node whose page is no longer mapped; -EBUSY if it still is:
        remove_stable_node() (6.x, for run=2 and the tunables that need an empty tree)."""
        page = self.get_ksm_page(stable_node, LOCK)
        if page is None:
            return 0
        assert isinstance(page, Page)
        err = -EBUSY
        if not page.mapcount:
            set_page_stable_node(page, None)
            self.remove_node_from_stable_tree(stable_node)
            err = 0
        unlock_page(page)
        self.machine.zone.put_page(page)
        return err

    def remove_all_stable_nodes(self) -> int:
        """Remove every stable node (and chain) whose page is unmapped: remove_all_stable_nodes()."""
        root = self.root_stable_tree
        err = 0
        while root.rb_node is not None:
            node = root.rb_node
            assert isinstance(node, StableNode)
            if node.is_chain:
                busy = False
                dup = node.dups
                while dup is not None:
                    nxt = dup.dup_next
                    if self.remove_stable_node(dup):
                        busy = True
                        break
                    dup = nxt
                if not busy:
                    self.free_stable_node_chain(node)
            else:
                busy = bool(self.remove_stable_node(node))
            if busy:
                err = -EBUSY
                break
        return err

    # -- merging -------------------------------------------------------------------------------
    def write_protect_page(self, vma: VmArea, page: Page) -> int:
        """Make the page's pte read-only if nobody else holds a reference, and return the pte
        (0 on failure): write_protect_page(). With ``write_protect_dirty_ptes`` (6.x) a dirty
        read-only pte is checked too, and the pte is left clean."""
        mm = vma.vm_mm
        addr = page_address_in_vma(page, vma)
        if addr == -1:
            return 0
        pte = page_check_address(page, mm, addr)
        if not pte:
            return 0
        six = self.profile.write_protect_dirty_ptes
        if pte_write(pte) or (six and pte_dirty(pte)):
            swapped = 1 if page.flags & PG_swapcache else 0
            # Clear the pte first so no get_user_pages_fast can take a reference meanwhile.
            mm.set_pte_at_by_ksmd(addr, 0)
            self._preempt("write_protect_page:pte_cleared")
            if page.mapcount + 1 + swapped != page.count:
                mm.set_pte_at_by_ksmd(addr, pte)
                return 0
            if six:
                if pte_dirty(pte):
                    page.flags |= PG_dirty
                pte = pte_mkclean(pte)
            pte = pte_wrprotect(pte)
            mm.set_pte_at_by_ksmd(addr, pte)
        return pte

    def replace_page(self, vma: VmArea, page: Page, kpage: Page, orig_pte: int) -> int:
        """Point the pte that maps ``page`` at ``kpage`` instead: replace_page().

        ``kpage`` may be the shared zero page (use_zero_pages): its pte is then special and
        marked dirty, and the mm's KSM zero pages are counted.
        """
        mm = vma.vm_mm
        machine = self.machine
        addr = page_address_in_vma(page, vma)
        if addr == -1:
            return -EFAULT
        if mm.pte_get(addr) != orig_pte:
            return -EFAULT
        if kpage is machine.zone.zero_page:
            mm.set_pte_at_by_ksmd(
                addr, (kpage.pfn << PAGE_SHIFT) | _KSM_ZERO_PTE_BITS | _PAGE_ACCESSED
            )
            self.ksm_zero_pages += 1
            mm.ksm_zero_pages += 1
            mm.anon_rss -= 1
        else:
            get_page(kpage)
            page_add_anon_rmap(kpage, vma, addr)
            # mk_pte(kpage, vma->vm_page_prot): a private mapping's protection is read-only.
            mm.set_pte_at_by_ksmd(addr, (kpage.pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED)
        page_remove_rmap(page, machine)
        machine.zone.put_page(page)
        self.work.merges += 1
        return 0

    def try_to_merge_one_page(self, vma: VmArea, page: Page, kpage: Page | None) -> int:
        """Write-protect ``page`` and map ``kpage`` in its place if they are still equal, or
        with ``kpage`` None upgrade ``page`` itself into a KSM page with no node yet:
        try_to_merge_one_page(). Returns 0 or -EFAULT."""
        if page is kpage:  # ksm page forked
            return 0
        if not self.profile.find_mergeable_vma and not vma.vm_flags & VM_MERGEABLE:
            return -EFAULT
        if not PageAnon(page):
            return -EFAULT
        # trylock rather than wait: ksmd would rather scan on and come back to this page.
        if not trylock_page(page):
            return -EFAULT
        err = -EFAULT
        orig_pte = self.write_protect_page(vma, page)
        if orig_pte:
            if kpage is None:
                # Upgrade in place while the page is locked; stable_tree_insert sets the node.
                set_page_stable_node(page, None)
                page.flags |= PG_referenced | PG_dirty
                self.work.merges += 1
                err = 0
            else:
                self.work.memcmps += 1
                if page.data == kpage.data:
                    err = self.replace_page(vma, page, kpage, orig_pte)
        if vma.vm_flags & VM_LOCKED and not err and kpage is not None:
            page.flags &= ~PG_mlocked
            kpage.flags |= PG_mlocked
        unlock_page(page)
        return err

    def try_to_merge_with_zero_page(self, rmap_item: RmapItem, page: Page) -> int:
        """Map the shared zero page in place of an empty page, when use_zero_pages is set:
        try_to_merge_with_zero_page() (6.x). Returns 0 when merged or no longer a candidate."""
        if not (self.ksm_use_zero_pages and rmap_item.oldchecksum == self.zero_checksum):
            return -EFAULT
        vma = self.find_mergeable_vma(rmap_item.mm, rmap_item.address & PAGE_MASK)
        if vma is None:
            return 0
        return self.try_to_merge_one_page(vma, page, self.machine.zone.zero_page)

    def try_to_merge_with_ksm_page(
        self, rmap_item: RmapItem, page: Page, kpage: Page | None
    ) -> int:
        """Merge the item's page into an existing KSM page (or, with None, upgrade it in
        place): try_to_merge_with_ksm_page()."""
        fused = self._fused_try
        if (
            fused is not None
            and self.machine.preempt is None
            and not self.mutations
            and fused(self, rmap_item, page, kpage)
        ):
            # Shortcut fused_merge: the steps below in one call for the common case (see
            # try_to_merge_with_ksm_page_fused()).
            return 0
        mm = rmap_item.mm
        addr = rmap_item.address & PAGE_MASK
        if self.profile.find_mergeable_vma:
            vma = self.find_mergeable_vma(mm, addr)
            if vma is None:
                return -EFAULT
        else:
            if mm.mm_users == 0:
                return -EFAULT
            found = mm.find_vma(addr)
            if found is None or found.vm_start > addr:
                return -EFAULT
            vma = found
        err = self.try_to_merge_one_page(vma, page, kpage)
        if err:
            return err
        if self.profile.find_mergeable_vma:
            # The unstable tree's data shares the anon_vma's place in the kernel: remove first.
            self.remove_rmap_item_from_tree(rmap_item)
        self.hold_anon_vma(rmap_item, vma.anon_vma)
        return 0

    def try_to_merge_with_ksm_page_fused(
        self, rmap_item: RmapItem, page: Page, kpage: Page | None
    ) -> bool:
        """Do what try_to_merge_with_ksm_page() does in the common case, in one step, or
        return False, having changed nothing (shortcut ``fused_merge``; the C twin is
        ``try_merge_fused`` of ksmsim._speedups).

        The conditions are merge_with_ksm_page_fused()'s, but for those on the item and on
        ``kpage`` beyond its being a KSM page other than the page (nothing here locks it or
        appends to its node), and with ``kpage`` None (the page upgraded in place) those on
        ``kpage`` and the contents. The steps of that case: write_protect_page()'s pte (and
        PG_dirty from a dirty pte, 6.x), the page made a KSM page with no node, marked
        referenced and dirty, a merge counted; otherwise replace_page()'s. Then, as the exact
        function does, the item taken out of its tree (3.x+) and the anon_vma held.
        """
        address = rmap_item.address
        if kpage is not None and (page is kpage or kpage.mapping_flags != PAGE_MAPPING_FLAGS):
            return False
        target = self._fused_target(rmap_item.mm, address & PAGE_MASK, page, kpage is not None)
        if target is None or (kpage is not None and page.data != kpage.data):
            return False
        anon_vma, table, idx, pte = target
        six = self.profile.write_protect_dirty_ptes
        dirty = six and pte & _PAGE_DIRTY
        if dirty:
            page.flags |= PG_dirty
        if kpage is None:
            # write_protect_page(), then the upgrade in place of try_to_merge_one_page().
            if pte & _PAGE_RW or dirty:
                table[idx] = (pte & ~_PAGE_DIRTY if six else pte) & ~_PAGE_RW
            page.mapping = None
            page.mapping_flags = PAGE_MAPPING_FLAGS
            page.flags |= PG_referenced | PG_dirty
            self.work.merges += 1
        else:
            self._replace_page_fused(page, kpage, table, idx)
        if self.profile.find_mergeable_vma and address & (STABLE_FLAG | UNSTABLE_FLAG):
            self.remove_rmap_item_from_tree(rmap_item)
        rmap_item.anon_vma = anon_vma
        anon_vma.ksm_refcount += 1
        return True

    def merge_with_ksm_page_fused(self, rmap_item: RmapItem, page: Page, kpage: Page) -> bool:
        """Merge the item's page into the KSM page the stable tree search found, as
        cmp_and_merge_page() does with try_to_merge_with_ksm_page(), stable_tree_append() and
        the put of ``kpage``, in one step; or return False, having changed nothing, when the
        common case's conditions do not hold (shortcut ``fused_merge``; the C twin is
        ``merge_fused`` of ksmsim._speedups).

        The conditions make every test of the exact steps come out the way that merges: the
        item in no tree (so remove_rmap_item_from_tree() does nothing), its mm alive and its
        area the mm's cached one (find_vma() then returns it without a lookup), mergeable,
        not mlocked, with an anon_vma; ``kpage`` a KSM page with a node, unlocked (so
        lock_page() does not wait) and not the page itself; the page anonymous for that
        anon_vma, unlocked, at the item's address by its index, with a reference besides
        the one dropped here, mapped there by a present pte; if the pte is writable (or
        dirty, with write_protect_dirty_ptes) the counts write_protect_page() requires; and
        equal contents. The exact steps then leave exactly what this does: a memcmp and a
        merge counted, PG_dirty from a dirty pte (6.x), the pte pointing read-only at
        ``kpage`` (the intermediate values set_pte_at() wrote are overwritten), the mappings
        and references moved, the anon_vma held and the item appended to the node; the
        page and ``kpage`` locks taken and released leave their flags as they were.
        """
        address = rmap_item.address
        node = kpage.mapping
        if (
            address & (STABLE_FLAG | UNSTABLE_FLAG)
            or page is kpage
            or kpage.mapping_flags != PAGE_MAPPING_FLAGS
            or node is None
            or kpage.flags & PG_locked
        ):
            return False
        target = self._fused_target(rmap_item.mm, address & PAGE_MASK, page, True)
        if target is None or page.data != kpage.data:
            return False
        anon_vma, table, idx, pte = target
        # write_protect_page(): a dirty pte's dirt passes to the page (6.x).
        if self.profile.write_protect_dirty_ptes and pte & _PAGE_DIRTY:
            page.flags |= PG_dirty
        self._replace_page_fused(page, kpage, table, idx)
        # try_to_merge_with_ksm_page(): hold_anon_vma().
        rmap_item.anon_vma = anon_vma
        anon_vma.ksm_refcount += 1
        # cmp_and_merge_page(): stable_tree_append() under the page lock, then put_page().
        self.stable_tree_append(rmap_item, node)
        kpage.count -= 1
        return True

    def _fused_target(
        self, mm: MmStruct, addr: int, page: Page, need_ref: bool
    ) -> tuple[AnonVma, array[int], int, int] | None:
        """Return the anon_vma, pte table, index and pte of ``page`` at ``addr`` when the fused
        merges' conditions on the mm, its area, the page and its pte hold, else None.

        The conditions (see merge_with_ksm_page_fused()): the mm alive, its cached area
        holding ``addr`` (find_vma() then returns it without a lookup), mergeable, not
        mlocked, with an anon_vma; the page anonymous for that anon_vma, unlocked, at
        ``addr`` by its index, with a reference besides the one a merge drops (``need_ref``);
        a present pte mapping it there; if that pte is writable (or dirty, with
        write_protect_dirty_ptes) the counts write_protect_page() requires.
        """
        if mm.mm_users == 0:
            return None
        vma = mm.mmap_cache
        if vma is None or not vma.vm_start <= addr < vma.vm_end:
            return None
        anon_vma = vma.anon_vma
        if vma.vm_flags & (VM_MERGEABLE | VM_LOCKED) != VM_MERGEABLE or anon_vma is None:
            return None
        if (
            page.mapping_flags != PAGE_MAPPING_ANON
            or page.mapping is not anon_vma
            or page.flags & PG_locked
            or (need_ref and page.count < 2)
            or vma.vm_start + ((page.index - vma.vm_pgoff) << PAGE_SHIFT) != addr
        ):
            return None
        vpn = addr >> PAGE_SHIFT
        table = mm.pgd.get(vpn >> 9)
        if table is None:
            return None
        idx = vpn & (PTRS_PER_PTE - 1)
        pte = table[idx]
        if pte & _ANON_PRESENT_MASK != _PAGE_PRESENT or pte >> PAGE_SHIFT != page.pfn:
            return None
        if pte & _PAGE_RW or (self.profile.write_protect_dirty_ptes and pte & _PAGE_DIRTY):
            swapped = 1 if page.flags & PG_swapcache else 0
            if page.mapcount + 1 + swapped != page.count:
                return None
        return anon_vma, table, idx, pte

    def _replace_page_fused(self, page: Page, kpage: Page, table: array[int], idx: int) -> None:
        """Do what replace_page() does once _fused_target() has said yes: a memcmp and a
        merge counted, the pte pointing read-only at ``kpage``, mappings and references
        moved."""
        work = self.work
        work.memcmps += 1
        kpage.count += 1
        kpage.mapcount += 1
        if kpage.mapcount == 1:
            self.machine.nr_anon_pages += 1
        table[idx] = (kpage.pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED
        page.mapcount -= 1
        if page.mapcount == 0:
            self.machine.nr_anon_pages -= 1
        page.count -= 1
        work.merges += 1

    def try_to_merge_two_pages(
        self, rmap_item: RmapItem, page: Page, tree_rmap_item: RmapItem, tree_page: Page
    ) -> Page | None:
        """Make two equal pages one KSM page mapped at both addresses, or undo:
        try_to_merge_two_pages(). At 4035c07a the contents are copied into a new KSM page;
        later kernels upgrade the scanned page in place."""
        if not self.profile.merge_allocates_kpage:
            err = self.try_to_merge_with_ksm_page(rmap_item, page, None)
            if not err:
                err = self.try_to_merge_with_ksm_page(tree_rmap_item, tree_page, page)
                if err:
                    self.break_cow(rmap_item)
            return None if err else page
        if self.ksm_max_kernel_pages and self.ksm_max_kernel_pages <= self.ksm_pages_shared:
            return None
        machine = self.machine
        kpage = machine.alloc_page()
        if kpage is None:
            return None
        mm = rmap_item.mm
        addr = rmap_item.address & PAGE_MASK
        err = -EFAULT
        if mm.mm_users:
            vma = mm.find_vma(addr)
            if vma is not None and vma.vm_start <= addr:
                copy_user_highpage(kpage, page)
                self.work.kpage_copies += 1
                kpage.flags |= PG_dirty | PG_uptodate | PG_swapbacked
                set_page_stable_node(kpage, None)
                machine.lru_cache_add_active(kpage)
                err = self.try_to_merge_one_page(vma, page, kpage)
                if not err:
                    self.hold_anon_vma(rmap_item, vma.anon_vma)
        if not err:
            err = self.try_to_merge_with_ksm_page(tree_rmap_item, tree_page, kpage)
            # A KSM page with only one pte pointing at it is no use: break it.
            if err:
                self.break_cow(rmap_item)
        if err:
            machine.zone.put_page(kpage)
            return None
        return kpage

    def unstable_tree_search_insert(
        self, rmap_item: RmapItem, page: Page
    ) -> tuple[RmapItem, Page] | None:
        """Find an unstable item whose page now equals ``page`` (returning it and its page, with
        a reference), or insert ``rmap_item``: unstable_tree_search_insert().

        Contents are read live at each comparison, so a tree whose pages changed is walked as
        the kernel walks it. A vanished page, or the very same page, ends the search unlinked.
        """
        root = self.root_unstable_tree
        data = page.data
        assert data is not None
        zone = self.machine.zone
        work = self.work
        parent: RbNode | None = None
        left = False
        node = root.rb_node
        skip = self._unstable_skip
        if skip is not None and (
            zone.map_generation != self._unstable_generation or not self._shortcuts_allowed()
        ):
            skip = None
        while node is not None:
            if skip is not None:
                # Shortcut unstable_skip: nothing has changed what any pte maps since the tree
                # was emptied, so get_mergeable_page() of each node returns the page it was
                # inserted with; pass over those whose live contents differ, counting memcmps.
                node, skipped_parent, skipped_left, skipped = skip(node, data)
                if skipped:
                    work.memcmps += skipped
                    parent, left = skipped_parent, skipped_left
                if node is None:
                    break
            assert isinstance(node, RmapItem)
            tree_page = self.get_mergeable_page(node)
            if tree_page is None:
                return None
            if tree_page is page:  # don't substitute a ksm page for a forked page
                zone.put_page(tree_page)
                return None
            work.memcmps += 1
            tree_data = tree_page.data
            if data == tree_data:
                return node, tree_page
            assert tree_data is not None
            zone.put_page(tree_page)
            parent = node
            left = data < tree_data
            node = node.rb_left if left else node.rb_right
        rmap_item.address |= UNSTABLE_FLAG | (self.ksm_scan.seqnr & SEQNR_MASK)
        if self._unstable_skip is not None:
            rmap_item.tree_page = page
        rb_link_node(rmap_item, parent, left, root)
        self._rb_insert_color(rmap_item, root)
        self.ksm_pages_unshared += 1
        return None

    def cmp_and_merge_page(self, page: Page, rmap_item: RmapItem) -> None:
        """Merge the scanned page into the stable tree, or via the unstable tree into a new KSM
        page, or leave it volatile: cmp_and_merge_page(), in the kernel's order.

        At 4035c07a the stable tree is searched first and the checksum only then; 6.11+
        (``checksum_before_stable_tree``) tests the checksum first, tries the zero page, and
        skips a KSM page already on its item's node here rather than in ksm_do_scan().
        """
        machine = self.machine
        zone = machine.zone
        if self._checksum_first:
            # page_stable_node() and the tests that make remove_rmap_item_from_tree() and
            # try_to_merge_with_zero_page() do nothing are inline: this runs for every page
            # scanned.
            stable_node = page.mapping if page.mapping_flags == PAGE_MAPPING_FLAGS else None
            if stable_node is not None:
                if rmap_item.head is stable_node:
                    return
            else:
                if rmap_item.address & (STABLE_FLAG | UNSTABLE_FLAG):
                    self.remove_rmap_item_from_tree(rmap_item)
                # A page whose checksum changed since the last visit is changing too often to
                # be worth searching for.
                checksum = self.calc_checksum(page)
                if rmap_item.oldchecksum != checksum:
                    rmap_item.oldchecksum = checksum
                    return
                if self.ksm_use_zero_pages and not self.try_to_merge_with_zero_page(
                    rmap_item, page
                ):
                    return
            found = self.stable_tree_search(page)
            if found is page and rmap_item.head is stable_node:
                zone.put_page(page)
                return
            if rmap_item.address & (STABLE_FLAG | UNSTABLE_FLAG):
                self.remove_rmap_item_from_tree(rmap_item)
        else:
            self.remove_rmap_item_from_tree(rmap_item)
            found = self.stable_tree_search(page)
        if found is BUSY:
            return
        if found is not None:
            assert isinstance(found, Page)
            kpage = found
            fused = self._fused_merge
            if (
                fused is not None
                and machine.preempt is None
                and not self.mutations
                and fused(self, rmap_item, page, kpage)
            ):
                # Shortcut fused_merge: the steps below, in one call, for the common case
                # (see merge_with_ksm_page_fused()).
                return
            err = self.try_to_merge_with_ksm_page(rmap_item, page, kpage)
            if not err:
                machine.lock_page(kpage)
                node = page_stable_node(kpage)
                assert isinstance(node, StableNode)
                self.stable_tree_append(rmap_item, node)
                unlock_page(kpage)
            zone.put_page(kpage)
            return
        if not self.profile.checksum_before_stable_tree:
            if self.profile.break_ksm_page_after_failed_search and PageKsm(page):
                # A KSM page reached by fork after its node went, or left by a failed break.
                self.break_cow(rmap_item, drop_anon_vma=False)
            checksum = self.calc_checksum(page)
            if rmap_item.oldchecksum != checksum:
                rmap_item.oldchecksum = checksum
                return

        match = self.unstable_tree_search_insert(rmap_item, page)
        if match is None:
            return
        tree_rmap_item, tree_page = match
        kpage_or_none = self.try_to_merge_two_pages(rmap_item, page, tree_rmap_item, tree_page)
        batch_free = self._batch_free
        if (
            batch_free is None
            or tree_page.count != 1
            or not batch_free[0](tree_page, *batch_free[1])
        ):
            # (Shortcut fused_free: the put_page() of the last reference to the tree's page,
            # which the merge unmapped, in one C call, as in ksm_do_scan().)
            zone.put_page(tree_page)
        if kpage_or_none is None:
            return
        kpage = kpage_or_none
        fused_insert = self._fused_insert
        if (
            fused_insert is not None
            and machine.preempt is None
            and not self.mutations
            and fused_insert(self, tree_rmap_item, rmap_item, kpage)
        ):
            # Shortcut fused_insert: the steps below in one call for the common case (see
            # insert_merged_fused()).
            return
        # The tree item moves from the unstable tree to the new stable node.
        self.remove_rmap_item_from_tree(tree_rmap_item)
        machine.lock_page(kpage)
        new_node = self.stable_tree_insert(kpage)
        if new_node is not None:
            self.stable_tree_append(tree_rmap_item, new_node)
            self.stable_tree_append(rmap_item, new_node)
        unlock_page(kpage)
        if self.profile.merge_allocates_kpage:
            zone.put_page(kpage)  # the allocation's reference
        if new_node is None:
            # Two ptes now map a KSM page that no tree knows of: undo both.
            self.break_cow(tree_rmap_item)
            self.break_cow(rmap_item)

    # -- the scan ------------------------------------------------------------------------------
    def get_next_rmap_item(self, mm_slot: MmSlot, link: RmapLink, addr: int) -> RmapItem:
        """Return the item for ``addr`` after ``link``, pruning items for skipped addresses and
        inserting a new item in address order if none exists: get_next_rmap_item()."""
        while True:
            rmap_item = link.rmap_list
            if rmap_item is None:
                break
            if rmap_item.address & PAGE_MASK == addr:
                return rmap_item
            if rmap_item.address > addr:
                break
            link.rmap_list = rmap_item.rmap_list
            self.remove_rmap_item_from_tree(rmap_item)
            self.free_rmap_item(rmap_item)
        mm = mm_slot.mm
        assert mm is not None
        rmap_item = self.alloc_rmap_item(mm, addr)
        rmap_item.rmap_list = link.rmap_list
        link.rmap_list = rmap_item
        return rmap_item

    def should_skip_rmap_item(self, page: Page, rmap_item: RmapItem) -> bool:
        """Tell whether smart scan skips this page in this pass, aging its item:
        should_skip_rmap_item() (6.7+)."""
        if not self.ksm_smart_scan or page.mapping_flags == PAGE_MAPPING_FLAGS:
            return False
        age = rmap_item.age
        if age != U8_MAX:
            rmap_item.age = age + 1
        if age < 3:
            return False
        if not rmap_item.remaining_skips:
            rmap_item.remaining_skips = skip_age(age)
            return False
        self.ksm_pages_skipped += 1
        rmap_item.remaining_skips -= 1
        self.remove_rmap_item_from_tree(rmap_item)
        return True

    def _remove_mm_slot(self, mm_slot: MmSlot) -> None:
        """Unlink and free a slot, clear the mm's flags and drop its mm_count reference."""
        mm = mm_slot.mm
        assert mm is not None
        del self.mm_slots[mm]
        mm_slot.mm_prev.mm_next = mm_slot.mm_next
        mm_slot.mm_next.mm_prev = mm_slot.mm_prev
        mm_slot.mm_next = mm_slot.mm_prev = mm_slot
        mm.flags &= ~MMF_VM_MERGEABLE
        if self.profile.merge_any:
            mm.flags &= ~MMF_VM_MERGE_ANY
        mm.mm_count -= 1

    def _scan_mm(self, mm: MmStruct, mm_slot: MmSlot) -> Iterator[tuple[RmapItem, Page]]:
        """Continue the cursor through the mm's mergeable areas to the next anonymous page,
        and yield it with its item; the generator ends at the end of the mm.

        This is the VMA loop of scan_get_next_rmap_item(), with follow_page() walked a pte
        table at a time: an absent table is skipped whole, as follow_page() would find nothing
        at any of its addresses. scan_get_next_rmap_item() takes the first page; resumed, the
        generator takes exactly the steps a fresh call from the cursor would, provided nothing
        it holds (the mm's areas, their flags, its users) has changed meanwhile (the
        ``scan_cursor`` shortcut of ksm_do_scan()).
        """
        if mm.mm_users == 0:
            return
        scan = self.ksm_scan
        address = scan.address
        vma = mm.find_vma(address)
        if vma is None:
            return
        pgd = mm.pgd
        vmas = mm.mmap
        nvmas = len(vmas)
        smart = self.profile.smart_scan
        # The C twin calls back into get_next_rmap_item(), whose preemption points the
        # interleaving explorer wants met from the pure-Python loop.
        scan_ptes = self._scan_ptes_fn if self._shortcuts_allowed() else Ksm._scan_ptes
        visited = 0
        i = mm.vma_index(vma)
        while i < nvmas:
            vma = vmas[i]
            i += 1
            if not vma.vm_flags & VM_MERGEABLE:
                continue
            if address < vma.vm_start:
                address = vma.vm_start
            if vma.anon_vma is None:
                address = vma.vm_end
            end = vma.vm_end
            while address < end:
                if mm.mm_users == 0:
                    break
                vpn = address >> PAGE_SHIFT
                key = vpn >> 9
                stop = min(end, (key + 1) << (9 + PAGE_SHIFT))
                table = pgd.get(key)
                if table is None:
                    visited += (stop - address) >> PAGE_SHIFT
                    address = stop
                    continue
                idx = vpn & (PTRS_PER_PTE - 1)
                while address < stop:
                    # Shortcut first_visit (C only): how many pages scan_ptes may take through
                    # their whole ksmd step; it may while nothing but a changed checksum's
                    # bookkeeping can happen to a page: with the checksum tested first, or
                    # an empty stable tree (whose search then does nothing).
                    until = self._visit_until
                    allow = -1
                    if until is not None:
                        allow = 0
                        if self._checksum_first or self.root_stable_tree.rb_node is None:
                            allow = until - self.ksm_pages_scanned
                    address, idx, seen, rmap_item, page = scan_ptes(
                        self, mm_slot, table, idx, address, stop, smart, allow
                    )
                    visited += seen
                    if page is None:
                        break
                    assert rmap_item is not None
                    scan.address = address
                    self.work.addresses += visited
                    yield rmap_item, page
                    visited = 0
        scan.address = address
        self.work.addresses += visited

    def _scan_ptes(
        self,
        mm_slot: MmSlot,
        table: array[int],
        idx: int,
        address: int,
        stop: int,
        smart: bool,
        allow: int = -1,
    ) -> tuple[int, int, int, RmapItem | None, Page | None]:
        """Walk the ptes of one table from ``address`` (entry ``idx``) to ``stop`` for the next
        anonymous page that smart scan does not skip; return (address and idx past it, entries
        visited, its item, the page with a reference), or (stop, idx, visited, None, None).

        The pte loop of _scan_mm(); ksm_shortcuts.py has its C twin (``c_helpers``). ``allow``
        is for the C twin's first_visit shortcut, whose own twin is the exact path (every page
        handed back to ksm_do_scan()); it is not used here.
        """
        scan = self.ksm_scan
        mem_map = self._mem_map
        visited = 0
        while address < stop:
            pte = table[idx]
            visited += 1
            if pte & _ANON_PRESENT_MASK == _PAGE_PRESENT:
                page = mem_map[pte >> PAGE_SHIFT]
                assert page is not None
                if page.mapping_flags & PAGE_MAPPING_ANON:
                    page.count += 1
                    # get_next_rmap_item(), whose common case (the next item) is inline.
                    link = scan.rmap_list
                    rmap_item = link.rmap_list
                    if rmap_item is None or rmap_item.address & PAGE_MASK != address:
                        rmap_item = self.get_next_rmap_item(mm_slot, link, address)
                    scan.rmap_list = rmap_item
                    address += PAGE_SIZE
                    idx += 1
                    if (
                        smart
                        and self.ksm_smart_scan
                        and page.mapping_flags != PAGE_MAPPING_FLAGS
                        and self.should_skip_rmap_item(page, rmap_item)
                    ):
                        page.count -= 1
                        continue
                    return address, idx, visited, rmap_item, page
            address += PAGE_SIZE
            idx += 1
        return address, idx, visited, None, None

    def scan_get_next_rmap_item(self) -> tuple[RmapItem, Page] | None:
        """Advance ksmd's cursor to the next anonymous page of a mergeable area and return its
        item and the page (with a reference), or None at the end of a pass or with no mm:
        scan_get_next_rmap_item()."""
        head = self.ksm_mm_head
        if head.mm_next is head:
            return None
        scan = self.ksm_scan
        slot = scan.mm_slot
        if slot is head:
            if self.profile.advisor:
                self.advisor.advisor_start_scan()
            if self.profile.lru_add_drain_each_pass:
                # Pages held in per-CPU LRU buffers have a raised count that would stop
                # write_protect_page() merging them: drain them first.
                self.machine.lru_add_drain_all()
            self.root_unstable_tree.rb_node = None
            self._unstable_generation = self.machine.zone.map_generation
            if self.machine.preempt is not None:
                self.machine.preempt("scan_get_next_rmap_item:ksm_mmlist_lock")
            slot = head.mm_next
            scan.mm_slot = slot
            if slot is head and self.profile.scan_rechecks_empty_list:
                # A racing __ksm_exit of the last mm may have emptied the list since the test.
                return None
            scan.address = 0
            scan.rmap_list = slot
        machine = self.machine
        while True:
            mm = slot.mm
            assert mm is not None, "NULL pointer dereference: slot->mm of ksm_mm_head"
            if machine.preempt is not None:
                machine.preempt("scan_get_next_rmap_item:mmap_sem")
            pages = self._scan_mm(mm, slot)
            found = next(pages, None)
            if found is not None:
                if self.shortcuts.scan_cursor:
                    self._scan_cursor = pages
                return found
            if mm.mm_users == 0:
                scan.address = 0
                scan.rmap_list = slot
            # Items past the cursor were for addresses no mergeable area has now.
            self.remove_trailing_rmap_items(scan.rmap_list)
            scan.mm_slot = slot.mm_next
            if scan.address == 0:
                # A whole pass over this mm found no mergeable area (or it is exiting).
                self._remove_mm_slot(slot)
            slot = scan.mm_slot
            if slot is head:
                break
            scan.address = 0
            scan.rmap_list = slot
        if self.profile.advisor:
            self.advisor.advisor_stop_scan()
        scan.seqnr += 1
        return None

    def ksm_do_scan(self, scan_npages: int) -> None:
        """Scan up to ``scan_npages`` pages, ending early at the end of a pass: ksm_do_scan().

        At 4035c07a a KSM page whose item is already stable is skipped here; 6.x leaves that
        test to cmp_and_merge_page(). Every page handed over counts in pages_scanned.
        """
        machine = self.machine
        zone = machine.zone
        work = self.work
        scan_get_next_rmap_item = self.scan_get_next_rmap_item
        cmp_and_merge_page = self.cmp_and_merge_page
        skip_here = not self.profile.checksum_before_stable_tree
        use_cursor = self.shortcuts.scan_cursor and self._shortcuts_allowed()
        cursor: Iterator[tuple[RmapItem, Page]] | None = None
        generation = 0
        visit = use_cursor and self._first_visit
        # Shortcut fused_free: the put_page() that frees a page at the end of its step, with
        # free_hot_cold_page() and the machine's hook (see free_scanned of ksmsim._speedups;
        # it declines, changing nothing, unless the hook would only take the page off the LRU).
        free_scanned = self._fused_free
        free_args: tuple[Any, ...] = ()
        if free_scanned is not None:
            if zone.on_free == machine._page_freed and self._shortcuts_allowed():
                lru = machine.lru
                free_args = (
                    zone._free.append,
                    zone,
                    lru.active,
                    lru.inactive,
                    machine.ksm_unmapped_at,
                    machine._released,
                    PG_lru,
                    PG_active,
                    PG_reserved,
                )
            else:
                free_scanned = None
        end = self.ksm_pages_scanned + scan_npages
        if visit:
            # Shortcut first_visit: the pte loop may take pages through their whole step below,
            # counting each in ksm_pages_scanned as the step does, leaving room for the page it
            # hands back; the batch ends when that count shows scan_npages pages.
            self._visit_until = end - 1
            if (
                self._checksum_first
                and self._stable_find is not None
                and self._fused_merge is not None
                and self._fused_merge is not Ksm.merge_with_ksm_page_fused
            ):
                # With the checksum tested first, also the pages that merge into the KSM
                # page the stable tree search takes at once, through the fused merge (the
                # clock, and so the chains' prune test, stands still during a batch), and,
                # while the unstable_skip shortcut holds, those the stable tree search does
                # not find that go into the unstable tree.
                hz = machine.config.hz
                floor = self.jiffies() - _msecs_to_jiffies(
                    self.ksm_stable_node_chains_prune_millisecs, hz
                )
                self._visit_merge = (
                    self.profile.stable_node_chains,
                    self.profile.stable_node_pins_page,
                    self.ksm_max_page_sharing,
                    floor,
                    self.zero_checksum if self.ksm_use_zero_pages else None,
                    free_args,
                    zone,
                    free_scanned,
                    self._unstable_skip is not None,
                )
        if free_scanned is not None:
            self._batch_free = (free_scanned, free_args)
        try:
            for _ in range(scan_npages):
                if visit and self.ksm_pages_scanned >= end:
                    break
                if machine.preempt is not None:
                    machine.preempt("ksm_do_scan:cond_resched")
                found = None
                if cursor is not None and zone.map_generation == generation:
                    # Shortcut scan_cursor: resume the VMA loop that found the last page. No
                    # area, area flag or mm user has changed since (that moves map_generation),
                    # so it takes the steps a fresh scan_get_next_rmap_item() would take from
                    # the cursor.
                    found = next(cursor, None)
                if found is None:
                    cursor = None
                    found = scan_get_next_rmap_item()
                    if found is None:
                        return
                    if use_cursor:
                        cursor, self._scan_cursor = self._scan_cursor, None
                        generation = zone.map_generation
                rmap_item, page = found
                work.scanned += 1
                if page.mapping_flags != PAGE_MAPPING_FLAGS:
                    cmp_and_merge_page(page, rmap_item)
                elif skip_here:
                    if not rmap_item.address & STABLE_FLAG:
                        cmp_and_merge_page(page, rmap_item)
                elif page.mapping is None or rmap_item.head is not page.mapping:
                    # Else cmp_and_merge_page() would return at once: a KSM page on its item's
                    # node.
                    cmp_and_merge_page(page, rmap_item)
                if page.count > 1:
                    page.count -= 1
                elif free_scanned is None or not free_scanned(page, *free_args):
                    zone.put_page(page)
                self.ksm_pages_scanned += 1
        finally:
            self._visit_until = None
            self._visit_merge = None
            self._batch_free = None

    def ksmd_should_run(self) -> bool:
        """Tell whether ksmd has work: run has the merge bit and some mm is registered."""
        head = self.ksm_mm_head
        return bool(self.ksm_run & KSM_RUN_MERGE) and head.mm_next is not head

    # -- run=2 ---------------------------------------------------------------------------------
    def unmerge_ksm_pages(self, vma: VmArea, start: int, end: int) -> int:
        """Break every KSM page in ``[start, end)`` of ``vma``: unmerge_ksm_pages()."""
        mm = vma.vm_mm
        err = 0
        addr = start
        while addr < end and not err:
            if mm.mm_users == 0:
                break
            err = self.break_ksm(vma, addr)
            addr += PAGE_SIZE
        return err

    def unmerge_and_remove_all_rmap_items(self) -> int:
        """Unmerge every mergeable area and free every rmap_item (``run=2``):
        unmerge_and_remove_all_rmap_items(). Registered mms stay registered; 6.x then removes
        every stable node whose page is no longer mapped."""
        head = self.ksm_mm_head
        scan = self.ksm_scan
        scan.mm_slot = head.mm_next
        while scan.mm_slot is not head:
            mm_slot = scan.mm_slot
            mm = mm_slot.mm
            assert mm is not None
            for vma in list(mm.mmap):
                if mm.mm_users == 0:
                    break
                if not vma.vm_flags & VM_MERGEABLE or vma.anon_vma is None:
                    continue
                err = self.unmerge_ksm_pages(vma, vma.vm_start, vma.vm_end)
                if err:
                    scan.mm_slot = head
                    return err
            self.remove_trailing_rmap_items(mm_slot)
            scan.mm_slot = mm_slot.mm_next
            if mm.mm_users == 0:
                self._remove_mm_slot(mm_slot)
        if self.profile.remove_stable_nodes_on_unmerge:
            self.remove_all_stable_nodes()
        scan.seqnr = 0
        return 0

    # -- registration ----------------------------------------------------------------------------
    def __ksm_enter(self, mm: MmStruct) -> int:
        """Register an mm just behind the cursor, so it is scanned late: __ksm_enter()."""
        head = self.ksm_mm_head
        needs_wakeup = head.mm_next is head
        mm_slot = MmSlot(mm)
        self.mm_slots[mm] = mm_slot
        # list_add_tail relative to the cursor's slot: insert just before it (or, while run=2
        # unmerges, before the head: at the tail, so that no KSM page of a new mm is missed).
        if self.profile.enter_at_tail_when_unmerging and self.ksm_run & KSM_RUN_UNMERGE:
            cursor = head
        else:
            cursor = self.ksm_scan.mm_slot
        mm_slot.mm_next = cursor
        mm_slot.mm_prev = cursor.mm_prev
        cursor.mm_prev.mm_next = mm_slot
        cursor.mm_prev = mm_slot
        mm.flags |= MMF_VM_MERGEABLE
        mm.mm_count += 1
        if needs_wakeup:
            self.ksmd_wakeups += 1
        return 0

    def __ksm_exit(self, mm: MmStruct) -> None:
        """Free an exiting mm's slot at once if that is easy, else move it just after the cursor
        for ksmd to clean up: __ksm_exit()."""
        mm_slot = self.mm_slots.get(mm)
        cursor = self.ksm_scan.mm_slot
        if mm_slot is None or mm_slot is cursor:
            if mm_slot is not None:
                self._preempt("__ksm_exit:mmap_sem_write")
            return
        if mm_slot.rmap_list is None:
            self._remove_mm_slot(mm_slot)
            return
        # list_move: unlink, then insert right after the cursor.
        mm_slot.mm_prev.mm_next = mm_slot.mm_next
        mm_slot.mm_next.mm_prev = mm_slot.mm_prev
        mm_slot.mm_prev = cursor
        mm_slot.mm_next = cursor.mm_next
        cursor.mm_next.mm_prev = mm_slot
        cursor.mm_next = mm_slot
        self._preempt("__ksm_exit:mmap_sem_write")

    def vma_ksm_compatible(self, vm_flags: int) -> bool:
        """Tell whether KSM may merge in an area with these flags: vma_ksm_compatible()."""
        return not vm_flags & self.refused_vm_flags

    def ksm_madvise(
        self, vma: VmArea, start: int, end: int, advice: int, vm_flags: int
    ) -> tuple[int, int]:
        """Apply MADV_MERGEABLE or MADV_UNMERGEABLE; return (error, new vm_flags): ksm_madvise()."""
        mm = vma.vm_mm
        self.machine.zone.map_generation += 1  # the caller changes the area's flags
        if advice == MADV_MERGEABLE:
            if vm_flags & VM_MERGEABLE or not self.vma_ksm_compatible(vm_flags):
                return 0, vm_flags  # just ignore the advice
            if not mm.flags & MMF_VM_MERGEABLE:
                err = self.__ksm_enter(mm)
                if err:
                    return err, vm_flags
            return 0, vm_flags | VM_MERGEABLE
        if advice == MADV_UNMERGEABLE:
            if not vm_flags & VM_MERGEABLE:
                return 0, vm_flags
            if vma.anon_vma is not None:
                err = self.unmerge_ksm_pages(vma, start, end)
                if err:
                    return err, vm_flags
            return 0, vm_flags & ~VM_MERGEABLE
        return 0, vm_flags

    def ksm_vma_flags(self, mm: MmStruct, vm_flags: int) -> int:
        """Return a new VMA's flags, mergeable if the process asked for merge-any: ksm_add_vma()."""
        if mm.flags & MMF_VM_MERGE_ANY and self.vma_ksm_compatible(vm_flags):
            return vm_flags | VM_MERGEABLE
        return vm_flags

    def ksm_enable_merge_any(self, mm: MmStruct) -> int:
        """Make every compatible area of the process mergeable, now and later:
        ksm_enable_merge_any() (prctl PR_SET_MEMORY_MERGE 1)."""
        if mm.flags & MMF_VM_MERGE_ANY:
            return 0
        if not mm.flags & MMF_VM_MERGEABLE:
            err = self.__ksm_enter(mm)
            if err:
                return err
        mm.flags |= MMF_VM_MERGE_ANY
        self.machine.zone.map_generation += 1
        for vma in mm.mmap:
            if not vma.vm_flags & VM_MERGEABLE and self.vma_ksm_compatible(vma.vm_flags):
                vma.vm_flags |= VM_MERGEABLE
        return 0

    def ksm_disable_merge_any(self, mm: MmStruct) -> int:
        """Unmerge and unmark every area of a merge-any process: ksm_disable_merge_any()."""
        if not mm.flags & MMF_VM_MERGE_ANY:
            return 0
        self.machine.zone.map_generation += 1
        for vma in mm.mmap:
            if not vma.vm_flags & VM_MERGEABLE:
                continue
            if vma.anon_vma is not None:
                err = self.unmerge_ksm_pages(vma, vma.vm_start, vma.vm_end)
                if err:
                    self.ksm_enable_merge_any(mm)
                    return err
            vma.vm_flags &= ~VM_MERGEABLE
        mm.flags &= ~MMF_VM_MERGE_ANY
        return 0

    def ksm_fork(self, mm: MmStruct, oldmm: MmStruct) -> None:
        """Register a fork child of a registered mm (its rmap_items are not copied): ksm_fork().

        6.x starts the child's per-mm counts from zero, except its inherited KSM zero pages,
        which it adds to the global count.
        """
        if oldmm.flags & MMF_VM_MERGEABLE:
            mm.ksm_merging_pages = 0
            mm.ksm_rmap_items = 0
            self.ksm_zero_pages += mm.ksm_zero_pages
            self.__ksm_enter(mm)

    def ksm_exit(self, mm: MmStruct) -> None:
        """Tell KSM an mm is being torn down: ksm_exit()."""
        if mm.flags & MMF_VM_MERGEABLE:
            self.__ksm_exit(mm)

    # -- reverse maps for reclaim and migration ---------------------------------------------------
    def page_stable_node_of(self, page: Page) -> StableNode | None:
        """Return the stable node a KSM page's mapping carries (None for a NULL node)."""
        node = page_stable_node(page)
        assert node is None or isinstance(node, StableNode)
        return node

    def rmap_walk_ksm(self, page: Page) -> Iterator[tuple[VmArea, int]]:
        """Yield (vma, address) for each pte mapping a KSM page, found through its stable node:
        rmap_walk_ksm() / try_to_unmap_ksm() / page_referenced_ksm().

        For each item on the node, the VMAs of its anon_vma that cover its address: first those
        of the item's own mm, then, in a second round, those of other mms (children forked
        since ksmd passed, which map the page without an item of their own).
        """
        node = self.page_stable_node_of(page)
        if node is None:
            return
        # A fork child sharing its parent's anon_vma can be reached from its own item and again
        # from the parent's second round; the kernel's callbacks re-check the pte, so each pte
        # is handed out once here.
        seen: set[tuple[int, int]] = set()
        for search_new_forks in (False, True):
            for item in list(node.items()):
                anon_vma = item.anon_vma
                if anon_vma is None:
                    continue
                addr = item.address & PAGE_MASK
                for vma in list(anon_vma.head):
                    if addr < vma.vm_start or addr >= vma.vm_end:
                        continue
                    if (item.mm is vma.vm_mm) == search_new_forks:
                        continue
                    key = (id(vma.vm_mm), addr)
                    if key not in seen and page_check_address(page, vma.vm_mm, addr):
                        seen.add(key)
                        yield vma, addr

    def ksm_might_need_to_copy(self, page: Page, vma: VmArea, address: int) -> bool:
        """Tell whether a swapped-in page must be copied for this mapping rather than mapped:
        ksm_might_need_to_copy(). In 2.6.33 a page already anonymous for another anon_vma or
        index is copied, and a KSM page never (page_anon_vma() is NULL for it); 6.x copies a KSM
        page with no stable node, or while run=2 unmerges."""
        if self.profile.checksum_before_stable_tree and PageKsm(page):
            return page_stable_node(page) is None or bool(self.ksm_run & KSM_RUN_UNMERGE)
        anon_vma = page.mapping if page.mapping_flags == PAGE_MAPPING_ANON else None
        if anon_vma is None:
            return False
        return anon_vma is not vma.anon_vma or page.index != vma.linear_page_index(address)

    def ksm_migrate_page(self, newpage: Page, oldpage: Page) -> None:
        """Make a migrated KSM page's node point at its new frame: ksm_migrate_page() (2.6.33)."""
        node = self.page_stable_node_of(oldpage)
        if node is not None:
            node.page = newpage
            set_page_stable_node(newpage, node)
            set_page_stable_node(oldpage, None)

    # -- inspection ------------------------------------------------------------------------------
    def slots(self) -> Iterator[MmSlot]:
        """Yield the registered slots in ksmd's scan order."""
        slot = self.ksm_mm_head.mm_next
        while slot is not self.ksm_mm_head:
            yield slot
            slot = slot.mm_next

    def rmap_items(self, mm_slot: MmSlot) -> Iterator[RmapItem]:
        """Yield a slot's rmap_items in address order."""
        item = mm_slot.rmap_list
        while item is not None:
            yield item
            item = item.rmap_list

    def stable_nodes(self) -> Iterator[StableNode]:
        """Yield every node that holds a KSM page (regular nodes and dups), in tree order."""
        for node in rb_iter(self.root_stable_tree):
            assert isinstance(node, StableNode)
            if node.is_chain:
                yield from node.dup_nodes()
            else:
                yield node


def _msecs_to_jiffies(msecs: int, hz: int) -> int:
    return (msecs * hz + 999) // 1000


def _calc_checksum_xxhash(data: bytes) -> int:
    """Return the low 32 bits of XXH64 with seed 0, as 6.x calc_checksum() stores in a u32."""
    return int(xxhash.xxh64_intdigest(data)) & 0xFFFFFFFF


__all__ = [
    "KSM_RUN_MERGE",
    "KSM_RUN_STOP",
    "KSM_RUN_UNMERGE",
    "STABLE_FLAG",
    "UNSTABLE_FLAG",
    "Ksm",
    "MmSlot",
    "RmapItem",
    "StableNode",
]
