"""Kernel Samepage Merging: ksmd, the stable and unstable trees, merging and unmerging (mm/ksm.c).

This follows mm/ksm.c at commit 4035c07a ("ksm: take keyhole reference to page"): a stable
node points at its KSM page without holding a reference, and ``get_ksm_page`` checks through
``page->mapping`` that the page is still the one the node knew. Where another profile behaves
differently the code asks the profile for a named feature.

The kernel's globals (ksm_run, the counters, the mm list, the cursor) are the attributes of one
``Ksm`` object per machine, and each kernel function is a method of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import xxhash

from ksmsim.kernel.jhash import calc_checksum_jhash2
from ksmsim.kernel.memory import (
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
    VM_FAULT_WRITE,
    copy_user_highpage,
    follow_page,
    handle_mm_fault,
)
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_PRESENT,
    _PAGE_SPECIAL,
    MMF_VM_MERGEABLE,
    PTRS_PER_PTE,
    VM_DONTEXPAND,
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
    pte_write,
    pte_wrprotect,
)
from ksmsim.kernel.page import (
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    Page,
    PageAnon,
    PageKsm,
    PG_dirty,
    PG_mlocked,
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
from ksmsim.kernel.rbtree import RbNode, RbRoot, rb_erase, rb_insert_color, rb_link_node
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

# Areas KSM leaves alone: ksm_madvise() ignores MADV_MERGEABLE on them (4035c07a).
VM_KSM_REFUSED: Final = (
    VM_MERGEABLE
    | VM_SHARED
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

_ANON_PRESENT_MASK: Final = _PAGE_PRESENT | _PAGE_SPECIAL


class StableNode(RbNode):
    """A node of the stable tree: one KSM page and the rmap_items mapping it (struct stable_node).

    ``page`` is the keyhole pointer (no reference held, unless the profile pins it); ``hlist``
    is the first rmap_item of the node's hlist, linked through ``hnext``/``hprev``.
    """

    __slots__ = ("hlist", "hlist_len", "page")

    def __init__(self, page: Page) -> None:
        super().__init__()
        self.page: Page | None = page
        self.hlist: RmapItem | None = None
        self.hlist_len = 0

    def items(self) -> Iterator[RmapItem]:
        """Yield the rmap_items on this node's hlist, head first."""
        item = self.hlist
        while item is not None:
            yield item
            item = item.hnext


class RmapItem(RbNode):
    """One (mm, virtual address) at which ksmd found an anonymous page (struct rmap_item).

    ``address`` carries the kernel's flag bits: the seqnr byte, UNSTABLE_FLAG, STABLE_FLAG.
    ``rmap_list`` is the next item of the mm's address-sorted list. While in the unstable tree
    the item is itself the red-black node; while stable, ``head`` is its stable node.
    """

    __slots__ = ("address", "anon_vma", "head", "hnext", "hprev", "mm", "oldchecksum", "rmap_list")

    def __init__(self, mm: MmStruct, address: int) -> None:
        super().__init__()
        self.mm: MmStruct = mm
        self.address = address
        self.oldchecksum = 0
        self.rmap_list: RmapItem | None = None
        self.anon_vma: AnonVma | None = None
        self.head: StableNode | None = None
        self.hnext: RmapItem | None = None
        self.hprev: RmapItem | None = None

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
        self.ksm_run = KSM_RUN_STOP
        self.ksm_thread_pages_to_scan = 100
        self.ksm_thread_sleep_millisecs = 20
        # ksm_init(): a quarter of RAM, where the profile still has the limit.
        self.ksm_max_kernel_pages = (
            machine.zone.present_pages // 4 if profile.has_max_kernel_pages else 0
        )
        self.work = KsmWork()
        self.ksmd_wakeups = 0
        self._calc: Callable[[bytes], int] = (
            calc_checksum_jhash2 if profile.checksum == "jhash2" else _calc_checksum_xxhash
        )

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

    # -- small helpers ---------------------------------------------------------------------------
    def calc_checksum(self, page: Page) -> int:
        """Return the checksum of a page's contents: calc_checksum() (jhash2 or xxhash by profile).

        The value is cached on the frame for its current contents object.
        """
        data = page.data
        if page.csum_of is data:
            return page.csum
        assert data is not None
        self.work.checksums += 1
        csum = self._calc(data)
        page.csum = csum
        page.csum_of = data
        return csum

    def hold_anon_vma(self, rmap_item: RmapItem, anon_vma: AnonVma | None) -> None:
        """Pin the anon_vma a stable item was merged in: hold_anon_vma()."""
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

    # -- unmerging -------------------------------------------------------------------------------
    def break_ksm(self, vma: VmArea, addr: int) -> int:
        """Write-fault a KSM page at ``addr`` until it is private again: break_ksm() (4035c07a).

        Returns 0, or -ENOMEM when the fault ran out of memory.
        """
        zone = self.machine.zone
        while True:
            page = follow_page(vma, addr, foll_get=True)
            if page is None:
                return 0
            ret = handle_mm_fault(vma, addr, write=True) if PageKsm(page) else VM_FAULT_WRITE
            zone.put_page(page)
            if ret & (VM_FAULT_WRITE | VM_FAULT_SIGBUS | VM_FAULT_OOM):
                return -ENOMEM if ret & VM_FAULT_OOM else 0

    def break_cow(self, rmap_item: RmapItem) -> None:
        """Undo a merge at the item's address, dropping its anon_vma pin first: break_cow()."""
        self.work.break_cows += 1
        self.drop_anon_vma(rmap_item)
        mm = rmap_item.mm
        addr = rmap_item.address & PAGE_MASK
        if mm.mm_users == 0:
            return
        vma = mm.find_vma(addr)
        if vma is None or vma.vm_start > addr:
            return
        if not vma.vm_flags & VM_MERGEABLE or vma.anon_vma is None:
            return
        self.break_ksm(vma, addr)

    def get_mergeable_page(self, rmap_item: RmapItem) -> Page | None:
        """Return, with a reference, the anonymous page now at the item's address: get_mergeable_page()."""
        mm = rmap_item.mm
        addr = rmap_item.address & PAGE_MASK
        if mm.mm_users == 0:
            return None
        vma = mm.find_vma(addr)
        if vma is None or vma.vm_start > addr:
            return None
        if not vma.vm_flags & VM_MERGEABLE or vma.anon_vma is None:
            return None
        page = follow_page(vma, addr, foll_get=True)
        if page is None:
            return None
        if PageAnon(page):
            return page
        self.machine.zone.put_page(page)
        return None

    # -- the stable tree and the keyhole ------------------------------------------------------------
    def remove_node_from_stable_tree(self, stable_node: StableNode) -> None:
        """Take a node whose page is gone out of the tree, uncounting all its items:
        remove_node_from_stable_tree() (4035c07a). The items stay on their mm's list, flagless."""
        item = stable_node.hlist
        while item is not None:
            if item.hnext is not None:
                self.ksm_pages_sharing -= 1
            else:
                self.ksm_pages_shared -= 1
            item.mm.ksm_merging_pages -= 1
            self.drop_anon_vma(item)
            item.address &= PAGE_MASK
            item = item.hnext
        rb_erase(stable_node, self.root_stable_tree)
        stable_node.hlist = None
        stable_node.hlist_len = 0
        stable_node.page = None

    def get_ksm_page(self, stable_node: StableNode) -> Page | None:
        """Return the node's page with a reference if it still carries the node's key, else
        remove the stale node and return None: get_ksm_page() (4035c07a, the keyhole).

        With a profile whose stable nodes pin their page, the page is always the node's.
        """
        page = stable_node.page
        assert page is not None
        if self.profile.stable_node_pins_page:
            get_page(page)
            return page
        self._preempt("get_ksm_page:read_page")
        # rcu_read_lock(): the struct page stays a struct page, whatever happens to it.
        if page.mapping is stable_node and page.mapping_flags == 3:
            self._preempt("get_ksm_page:before_get_page_unless_zero")
            if get_page_unless_zero(page):
                if page.mapping is stable_node and page.mapping_flags == 3:
                    return page
                self.machine.zone.put_page(page)
        self.remove_node_from_stable_tree(stable_node)
        return None

    def remove_rmap_item_from_tree(self, rmap_item: RmapItem) -> None:
        """Take an item out of whichever tree holds it and uncount it: remove_rmap_item_from_tree().

        A stable item leaves its node's hlist (the node stays in the tree, even empty, while its
        page lives); an unstable item is rb_erased only if it belongs to the current pass.
        """
        address = rmap_item.address
        if address & STABLE_FLAG:
            stable_node = rmap_item.head
            assert stable_node is not None
            page = self.get_ksm_page(stable_node)
            if page is None:
                return
            self.machine.lock_page(page)
            self._hlist_del(rmap_item, stable_node)
            unlock_page(page)
            self.machine.zone.put_page(page)
            if stable_node.hlist is not None:
                self.ksm_pages_sharing -= 1
            else:
                self.ksm_pages_shared -= 1
            rmap_item.mm.ksm_merging_pages -= 1
            self.drop_anon_vma(rmap_item)
            rmap_item.address = address & PAGE_MASK
        elif address & UNSTABLE_FLAG:
            age = (self.ksm_scan.seqnr - address) & 0xFF
            if age > 1:
                raise AssertionError(f"BUG: unstable rmap_item of age {age}: {rmap_item!r}")
            if age == 0:
                rb_erase(rmap_item, self.root_unstable_tree)
            self.ksm_pages_unshared -= 1
            rmap_item.address = address & PAGE_MASK

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
        stable_node.hlist_len -= 1

    def remove_trailing_rmap_items(self, link: RmapLink) -> None:
        """Remove and free every item after ``link``: remove_trailing_rmap_items()."""
        while link.rmap_list is not None:
            rmap_item = link.rmap_list
            link.rmap_list = rmap_item.rmap_list
            self.remove_rmap_item_from_tree(rmap_item)
            self.free_rmap_item(rmap_item)

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
        unmerge_and_remove_all_rmap_items() (4035c07a). Registered mms stay registered."""
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
        scan.seqnr = 0
        return 0

    # -- merging -------------------------------------------------------------------------------
    def write_protect_page(self, vma: VmArea, page: Page) -> int:
        """Make the page's pte read-only if nobody else holds a reference, and return the pte
        (0 on failure): write_protect_page() (4035c07a)."""
        mm = vma.vm_mm
        addr = page_address_in_vma(page, vma)
        if addr == -1:
            return 0
        pte = page_check_address(page, mm, addr)
        if not pte:
            return 0
        if pte_write(pte):
            swapped = 1 if page.flags & PG_swapcache else 0
            # Clear the pte first so no get_user_pages_fast can take a reference meanwhile.
            mm.set_pte_at(addr, 0)
            self._preempt("write_protect_page:pte_cleared")
            if page.mapcount + 1 + swapped != page.count:
                mm.set_pte_at(addr, pte)
                return 0
            pte = pte_wrprotect(pte)
            mm.set_pte_at(addr, pte)
        return pte

    def replace_page(self, vma: VmArea, page: Page, kpage: Page, orig_pte: int) -> int:
        """Point the pte that maps ``page`` at ``kpage`` instead: replace_page() (4035c07a)."""
        mm = vma.vm_mm
        addr = page_address_in_vma(page, vma)
        if addr == -1:
            return -EFAULT
        if mm.pte_get(addr) != orig_pte:
            return -EFAULT
        get_page(kpage)
        page_add_anon_rmap(kpage, vma, addr)
        # mk_pte(kpage, vma->vm_page_prot): a private mapping's protection is read-only.
        mm.set_pte_at(addr, (kpage.pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED)
        machine = self.machine
        page_remove_rmap(page, machine)
        machine.zone.put_page(page)
        self.work.merges += 1
        return 0

    def try_to_merge_one_page(self, vma: VmArea, page: Page, kpage: Page) -> int:
        """Write-protect ``page`` and, if it still equals ``kpage``, map ``kpage`` in its place:
        try_to_merge_one_page() (4035c07a). Returns 0 or -EFAULT."""
        if page is kpage:  # ksm page forked
            return 0
        if not vma.vm_flags & VM_MERGEABLE:
            return -EFAULT
        if not PageAnon(page):
            return -EFAULT
        # trylock rather than wait: ksmd would rather scan on and come back to this page.
        if not trylock_page(page):
            return -EFAULT
        err = -EFAULT
        orig_pte = self.write_protect_page(vma, page)
        if orig_pte:
            self.work.memcmps += 1
            if page.data == kpage.data:
                err = self.replace_page(vma, page, kpage, orig_pte)
        if vma.vm_flags & VM_LOCKED and not err:
            page.flags &= ~PG_mlocked
            kpage.flags |= PG_mlocked
        unlock_page(page)
        return err

    def try_to_merge_with_ksm_page(self, rmap_item: RmapItem, page: Page, kpage: Page) -> int:
        """Merge the item's page into an existing KSM page: try_to_merge_with_ksm_page()."""
        mm = rmap_item.mm
        addr = rmap_item.address & PAGE_MASK
        if mm.mm_users == 0:
            return -EFAULT
        vma = mm.find_vma(addr)
        if vma is None or vma.vm_start > addr:
            return -EFAULT
        err = self.try_to_merge_one_page(vma, page, kpage)
        if err:
            return err
        self.hold_anon_vma(rmap_item, vma.anon_vma)
        return 0

    def try_to_merge_two_pages(
        self, rmap_item: RmapItem, page: Page, tree_rmap_item: RmapItem, tree_page: Page
    ) -> Page | None:
        """Copy ``page`` into a new KSM page and map it at both addresses, or undo:
        try_to_merge_two_pages() (4035c07a, which still allocates the KSM page)."""
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

    def stable_tree_search(self, page: Page) -> StableNode | None:
        """Find the stable node whose page equals ``page``, taking a reference on that page:
        stable_tree_search() (4035c07a). A stale node met on the way ends the search."""
        stable_node = page_stable_node(page)
        if stable_node is not None:  # ksm page forked
            get_page(page)
            return stable_node  # type: ignore[no-any-return]
        data = page.data
        work = self.work
        zone = self.machine.zone
        node = self.root_stable_tree.rb_node
        while node is not None:
            assert isinstance(node, StableNode)
            tree_page = self.get_ksm_page(node)
            if tree_page is None:
                return None
            work.memcmps += 1
            tree_data = tree_page.data
            if data == tree_data:
                return node
            assert data is not None and tree_data is not None
            zone.put_page(tree_page)
            node = node.rb_left if data < tree_data else node.rb_right
        return None

    def stable_tree_insert(self, kpage: Page) -> StableNode | None:
        """Insert a new node for ``kpage``, or return None on meeting a stale node or an equal
        page: stable_tree_insert() (4035c07a)."""
        root = self.root_stable_tree
        data = kpage.data
        assert data is not None
        zone = self.machine.zone
        parent: RbNode | None = None
        left = False
        node = root.rb_node
        while node is not None:
            assert isinstance(node, StableNode)
            tree_page = self.get_ksm_page(node)
            if tree_page is None:
                return None
            self.work.memcmps += 1
            tree_data = tree_page.data
            zone.put_page(tree_page)
            assert tree_data is not None
            if data == tree_data:
                # Not a bug: our page was not write-protected when the search missed this.
                return None
            parent = node
            left = data < tree_data
            node = node.rb_left if left else node.rb_right
        stable_node = StableNode(kpage)
        rb_link_node(stable_node, parent, left, root)
        rb_insert_color(stable_node, root)
        if self.profile.stable_node_pins_page:
            get_page(kpage)
        set_page_stable_node(kpage, stable_node)
        return stable_node

    def unstable_tree_search_insert(
        self, rmap_item: RmapItem, page: Page
    ) -> tuple[RmapItem, Page] | None:
        """Find an unstable item whose page now equals ``page`` (returning it and its page, with
        a reference), or insert ``rmap_item``: unstable_tree_search_insert() (4035c07a).

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
        while node is not None:
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
        rb_link_node(rmap_item, parent, left, root)
        rb_insert_color(rmap_item, root)
        self.ksm_pages_unshared += 1
        return None

    def stable_tree_append(self, rmap_item: RmapItem, stable_node: StableNode) -> None:
        """Add an item at the head of a node's hlist and count it: stable_tree_append()."""
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
        stable_node.hlist_len += 1
        rmap_item.mm.ksm_merging_pages += 1

    def cmp_and_merge_page(self, page: Page, rmap_item: RmapItem) -> None:
        """Merge the scanned page into the stable tree, or via the unstable tree into a new KSM
        page, or leave it volatile: cmp_and_merge_page() (4035c07a), in the kernel's order."""
        machine = self.machine
        zone = machine.zone
        self.remove_rmap_item_from_tree(rmap_item)

        stable_node = self.stable_tree_search(page)
        if stable_node is not None:
            kpage = stable_node.page
            assert kpage is not None
            err = self.try_to_merge_with_ksm_page(rmap_item, page, kpage)
            if not err:
                machine.lock_page(kpage)
                self.stable_tree_append(rmap_item, stable_node)
                unlock_page(kpage)
            zone.put_page(kpage)
            return
        if self.profile.break_ksm_page_after_failed_search and PageKsm(page):
            self.break_cow(rmap_item)
            return

        # A page whose checksum changed since the last visit is changing too often to be
        # worth a place in the unstable tree.
        checksum = self.calc_checksum(page)
        if rmap_item.oldchecksum != checksum:
            rmap_item.oldchecksum = checksum
            return

        found = self.unstable_tree_search_insert(rmap_item, page)
        if found is None:
            return
        tree_rmap_item, tree_page = found
        kpage_or_none = self.try_to_merge_two_pages(rmap_item, page, tree_rmap_item, tree_page)
        zone.put_page(tree_page)
        if kpage_or_none is None:
            return
        kpage = kpage_or_none
        # The tree item moves from the unstable tree to the new stable node.
        self.remove_rmap_item_from_tree(tree_rmap_item)
        machine.lock_page(kpage)
        new_node = self.stable_tree_insert(kpage)
        if new_node is not None:
            self.stable_tree_append(tree_rmap_item, new_node)
            self.stable_tree_append(rmap_item, new_node)
        unlock_page(kpage)
        zone.put_page(kpage)
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

    def _remove_mm_slot(self, mm_slot: MmSlot) -> None:
        """Unlink and free a slot, clear the mm's flag and drop its mm_count reference."""
        mm = mm_slot.mm
        assert mm is not None
        del self.mm_slots[mm]
        mm_slot.mm_prev.mm_next = mm_slot.mm_next
        mm_slot.mm_next.mm_prev = mm_slot.mm_prev
        mm_slot.mm_next = mm_slot.mm_prev = mm_slot
        mm.flags &= ~MMF_VM_MERGEABLE
        mm.mm_count -= 1

    def _scan_mm(self, mm: MmStruct, mm_slot: MmSlot) -> tuple[RmapItem, Page] | None:
        """Continue the cursor through the mm's mergeable areas to the next anonymous page."""
        scan = self.ksm_scan
        work = self.work
        if mm.mm_users == 0:
            return None
        vma = mm.find_vma(scan.address)
        if vma is None:
            return None
        zone = self.machine.zone
        mem_map = zone.mem_map
        pgd = mm.pgd
        vmas = mm.mmap
        for i in range(vmas.index(vma), len(vmas)):
            vma = vmas[i]
            if not vma.vm_flags & VM_MERGEABLE:
                continue
            if scan.address < vma.vm_start:
                scan.address = vma.vm_start
            if vma.anon_vma is None:
                scan.address = vma.vm_end
            end = vma.vm_end
            while scan.address < end:
                if mm.mm_users == 0:
                    break
                # follow_page(), walked a pte table at a time; absent tables cost nothing.
                vpn = scan.address >> PAGE_SHIFT
                table = pgd.get(vpn >> 9)
                if table is None:
                    nxt = ((vpn >> 9) + 1) << (9 + PAGE_SHIFT)
                    work.addresses += (min(nxt, end) - scan.address) >> PAGE_SHIFT
                    scan.address = min(nxt, end)
                    continue
                work.addresses += 1
                pte = table[vpn & (PTRS_PER_PTE - 1)]
                if pte & _ANON_PRESENT_MASK == _PAGE_PRESENT:
                    page = mem_map[pte >> PAGE_SHIFT]
                    assert page is not None
                    if page.mapping_flags & 1:
                        page.count += 1
                        rmap_item = self.get_next_rmap_item(mm_slot, scan.rmap_list, scan.address)
                        scan.rmap_list = rmap_item
                        scan.address += PAGE_SIZE
                        return rmap_item, page
                scan.address += PAGE_SIZE
        return None

    def scan_get_next_rmap_item(self) -> tuple[RmapItem, Page] | None:
        """Advance ksmd's cursor to the next anonymous page of a mergeable area and return its
        item and the page (with a reference), or None at the end of a pass or with no mm:
        scan_get_next_rmap_item() (4035c07a)."""
        head = self.ksm_mm_head
        if head.mm_next is head:
            return None
        scan = self.ksm_scan
        slot = scan.mm_slot
        if slot is head:
            self.root_unstable_tree.rb_node = None
            slot = head.mm_next
            scan.mm_slot = slot
            scan.address = 0
            scan.rmap_list = slot
        while True:
            mm = slot.mm
            assert mm is not None
            self._preempt("scan_get_next_rmap_item:mmap_sem")
            found = self._scan_mm(mm, slot)
            if found is not None:
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
        scan.seqnr += 1
        return None

    def ksm_do_scan(self, scan_npages: int) -> None:
        """Scan up to ``scan_npages`` pages, ending early at the end of a pass: ksm_do_scan()."""
        zone = self.machine.zone
        work = self.work
        for _ in range(scan_npages):
            self._preempt("ksm_do_scan:cond_resched")
            found = self.scan_get_next_rmap_item()
            if found is None:
                return
            rmap_item, page = found
            work.scanned += 1
            if page.mapping_flags != 3 or not rmap_item.address & STABLE_FLAG:
                self.cmp_and_merge_page(page, rmap_item)
            zone.put_page(page)

    def ksmd_should_run(self) -> bool:
        """Tell whether ksmd has work: run has the merge bit and some mm is registered."""
        return (
            bool(self.ksm_run & KSM_RUN_MERGE) and self.ksm_mm_head.mm_next is not self.ksm_mm_head
        )

    # -- registration ----------------------------------------------------------------------------
    def __ksm_enter(self, mm: MmStruct) -> int:
        """Register an mm just behind the cursor, so it is scanned late: __ksm_enter()."""
        head = self.ksm_mm_head
        needs_wakeup = head.mm_next is head
        mm_slot = MmSlot(mm)
        self.mm_slots[mm] = mm_slot
        # list_add_tail relative to the cursor's slot: insert just before it.
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
        for ksmd to clean up: __ksm_exit() (4035c07a)."""
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

    def ksm_madvise(
        self, vma: VmArea, start: int, end: int, advice: int, vm_flags: int
    ) -> tuple[int, int]:
        """Apply MADV_MERGEABLE or MADV_UNMERGEABLE; return (error, new vm_flags): ksm_madvise()."""
        mm = vma.vm_mm
        if advice == MADV_MERGEABLE:
            if vm_flags & VM_KSM_REFUSED:
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

    def ksm_fork(self, mm: MmStruct, oldmm: MmStruct) -> None:
        """Register a fork child of a registered mm (its rmap_items are not copied): ksm_fork()."""
        if oldmm.flags & MMF_VM_MERGEABLE:
            self.__ksm_enter(mm)

    def ksm_exit(self, mm: MmStruct) -> None:
        """Tell KSM an mm is being torn down: ksm_exit()."""
        if mm.flags & MMF_VM_MERGEABLE:
            self.__ksm_exit(mm)

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
