"""Faults, copy-on-write, page-table walks and zapping for anonymous memory (mm/memory.c, 2.6.33).

Every user access goes through ``handle_mm_fault`` exactly when the kernel would take a fault:
a read of an untouched page maps the shared zero page; a write allocates a zeroed frame (or
copies from the zero page); a write to a read-only copy-on-write page copies it, or reuses it in
place when it is an exclusively mapped ordinary anonymous page, and never when it is a KSM page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ksmsim.kernel.contents import write_bytes
from ksmsim.kernel.mm import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    VM_LOCKED,
    VM_MAYWRITE,
    VM_SHARED,
    VM_WRITE,
    MmStruct,
    VmArea,
    is_swap_pte,
    mk_pte,
    pte_mkold,
    pte_pfn,
    pte_present,
    pte_special,
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
    PG_swapbacked,
    PG_uptodate,
    get_page,
    trylock_page,
    unlock_page,
)
from ksmsim.kernel.rmap import (
    anon_vma_prepare,
    page_add_anon_rmap,
    page_add_new_anon_rmap,
    page_dup_rmap,
    page_remove_rmap,
)

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine

VM_FAULT_OOM: Final = 0x0001
VM_FAULT_SIGBUS: Final = 0x0002
VM_FAULT_MAJOR: Final = 0x0004
VM_FAULT_WRITE: Final = 0x0008
VM_FAULT_SIGSEGV: Final = 0x0040
VM_FAULT_ERROR: Final = VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV

# A read fault maps the zero page through a special, read-only, clean pte.
_PAGE_ZERO: Final = _PAGE_PRESENT | _PAGE_SPECIAL | _PAGE_ACCESSED


class FaultError(Exception):
    """A user access that the kernel would answer with a signal (SIGSEGV, SIGBUS) or OOM."""


def is_cow_mapping(flags: int) -> bool:
    """Tell whether a mapping is private and writable, so writes copy: is_cow_mapping()."""
    return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE


def copy_user_highpage(dst: Page, src: Page) -> None:
    """Copy a frame's contents (sharing the immutable bytes) and its cached checksum."""
    dst.data = src.data
    if src.csum_of is src.data:
        dst.csum = src.csum
        dst.csum_of = src.csum_of


def vm_normal_page(vma: VmArea, address: int, pte: int) -> Page | None:
    """Return the frame a present pte maps, or None for the zero page: vm_normal_page()."""
    if pte_special(pte):
        return None
    return vma.vm_mm.machine.zone.pfn_to_page(pte_pfn(pte))


def follow_page(vma: VmArea, address: int, foll_get: bool = True) -> Page | None:
    """Return the page mapped at ``address`` (the zero page included), with a reference
    if ``foll_get``: follow_page() (2.6.33). Non-present entries give None."""
    mm = vma.vm_mm
    pte = mm.pte_get(address)
    if not pte & 1:
        return None
    zone = mm.machine.zone
    page = zone.zero_page if pte_special(pte) else zone.pfn_to_page(pte >> PAGE_SHIFT)
    if foll_get:
        page.count += 1
    return page


def _alloc_zeroed_user_page(machine: Machine) -> Page | None:
    page = machine.alloc_page()
    if page is None:
        return None
    page.data = machine.zone.zero_page.data
    page.flags |= PG_swapbacked | PG_uptodate
    return page


def do_anonymous_page(vma: VmArea, address: int, write: bool) -> int:
    """Handle a fault on a pte that was never set: do_anonymous_page() (2.6.33)."""
    mm = vma.vm_mm
    machine = mm.machine
    if not write:
        mm.set_pte_at(address, (machine.zone.zero_page.pfn << PAGE_SHIFT) | _PAGE_ZERO)
        return 0
    anon_vma_prepare(vma)
    page = _alloc_zeroed_user_page(machine)
    if page is None:
        return VM_FAULT_OOM
    page_add_new_anon_rmap(page, vma, address)
    machine.lru_cache_add_active(page)
    mm.anon_rss += 1
    mm.set_pte_at(address, mk_pte(page.pfn, writable=bool(vma.vm_flags & VM_WRITE)))
    return VM_FAULT_WRITE


def do_wp_page(vma: VmArea, address: int, pte: int, unshare: bool = False) -> int:
    """Handle a write to a read-only present pte: reuse or copy: do_wp_page() (2.6.33).

    With ``unshare`` (6.x FAULT_FLAG_UNSHARE, as break_ksm uses) a shared page is replaced by
    a private copy mapped read-only and clean, exactly as wp_page_copy() maps it.
    """
    mm = vma.vm_mm
    machine = mm.machine
    old_page = vm_normal_page(vma, address, pte)
    if old_page is not None and PageAnon(old_page) and not PageKsm(old_page):
        if trylock_page(old_page):
            reuse = machine.reuse_swap_page(old_page)
            unlock_page(old_page)
        else:
            # The kernel sleeps on the lock and then decides; the outcome is the same test.
            reuse = machine.reuse_swap_page(old_page)
        if reuse:
            if unshare:
                return 0  # already exclusive: nothing to unshare
            mm.set_pte_at(address, pte | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED)
            return VM_FAULT_WRITE
    anon_vma_prepare(vma)
    if old_page is not None:
        get_page(old_page)
    new_page = machine.alloc_page()
    if new_page is None:
        if old_page is not None:
            machine.zone.put_page(old_page)
        return VM_FAULT_OOM
    new_page.flags |= PG_swapbacked | PG_uptodate
    if old_page is None:
        new_page.data = machine.zone.zero_page.data
    else:
        copy_user_highpage(new_page, old_page)
    # The pte may have changed while we allocated (in the kernel, with the lock dropped).
    if mm.pte_get(address) != pte:
        machine.zone.put_page(new_page)
        if old_page is not None:
            machine.zone.put_page(old_page)
        return 0
    page_add_new_anon_rmap(new_page, vma, address)
    machine.lru_cache_add_active(new_page)
    if unshare:
        mm.set_pte_at(address, mk_pte(new_page.pfn, writable=False, dirty=False))
    else:
        mm.set_pte_at(address, mk_pte(new_page.pfn, writable=True))
    if old_page is None:
        mm.anon_rss += 1
        machine.ksm_might_unmap_zero_page(mm, pte)
    else:
        if PageKsm(old_page):
            machine.vmstat["cow_ksm"] += 1
        page_remove_rmap(old_page, machine)
        machine.zone.put_page(old_page)  # the pte's reference
        machine.zone.put_page(old_page)  # ours
    return VM_FAULT_WRITE


def handle_mm_fault(vma: VmArea, address: int, write: bool, unshare: bool = False) -> int:
    """Resolve a user fault at ``address``: handle_mm_fault() and handle_pte_fault() (2.6.33);
    ``unshare`` is 6.x's FAULT_FLAG_UNSHARE (break a shared page without writing)."""
    address &= PAGE_MASK
    mm = vma.vm_mm
    if mm.machine.preempt is not None:
        mm.machine.preempt("handle_mm_fault")
    pte = mm.pte_get(address)
    if not pte_present(pte):
        if pte == 0:
            return do_anonymous_page(vma, address, write)
        if is_swap_pte(pte):
            return mm.machine.do_swap_page(vma, address, pte, write)
        return mm.machine.wait_migration_entry(vma, address, pte)
    if (write or unshare) and not pte_write(pte):
        return do_wp_page(vma, address, pte, unshare=unshare and not write)
    mm.set_pte_at(address, pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0))
    return 0


def _user_vma(mm: MmStruct, address: int) -> VmArea:
    vma = mm.find_vma(address)
    if vma is None or vma.vm_start > address:
        raise FaultError(f"SIGSEGV: no mapping at {address:#x} in {mm.name}")
    return vma


def fault_in_page(mm: MmStruct, address: int, write: bool) -> int:
    """Fault a page in until its pte allows the access, as a user access would; return the pte."""
    vma = _user_vma(mm, address)
    if write and not vma.vm_flags & VM_WRITE:
        raise FaultError(f"SIGSEGV: write to read-only mapping at {address:#x} in {mm.name}")
    for _ in range(8):
        pte = mm.pte_get(address)
        if pte_present(pte) and (not write or pte_write(pte)):
            mm.set_pte_at(address, pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0))
            return pte
        ret = handle_mm_fault(vma, address, write)
        if ret & VM_FAULT_ERROR:
            if ret & VM_FAULT_OOM:
                mm.machine.oom_event(mm, address)
            raise FaultError(f"fault error {ret:#x} at {address:#x} in {mm.name}")
    raise AssertionError(f"fault at {address:#x} in {mm.name} did not resolve")


def write_user_bytes(mm: MmStruct, address: int, payload: bytes) -> None:
    """Store ``payload`` at a virtual address (within one page), faulting as needed."""
    page_addr = address & PAGE_MASK
    offset = address - page_addr
    if offset + len(payload) > PAGE_SIZE:
        raise ValueError("a write must stay within one page")
    pte = fault_in_page(mm, page_addr, write=True)
    page = mm.machine.zone.pfn_to_page(pte_pfn(pte))
    assert page.data is not None
    if len(payload) == PAGE_SIZE:
        page.data = payload
    else:
        page.data = write_bytes(page.data, offset, payload)


def read_user_byte(mm: MmStruct, address: int) -> int:
    """Load one byte from a virtual address, faulting as needed."""
    page_addr = address & PAGE_MASK
    pte = fault_in_page(mm, page_addr, write=False)
    zone = mm.machine.zone
    page = zone.zero_page if pte_special(pte) else zone.pfn_to_page(pte_pfn(pte))
    assert page.data is not None
    return page.data[address - page_addr]


def zap_page_range(vma: VmArea, start: int, end: int) -> None:
    """Unmap and release every page in ``[start, end)`` of ``vma``: zap_page_range() (2.6.33)."""
    mm = vma.vm_mm
    machine = mm.machine
    zone = machine.zone
    for address, pte in list(mm.ptes(start, end)):
        if pte_present(pte):
            if pte_special(pte):
                machine.ksm_might_unmap_zero_page(mm, pte)
            else:
                page = zone.pfn_to_page(pte_pfn(pte))
                page_remove_rmap(page, machine)
                mm.anon_rss -= 1
                zone.put_page(page)
        elif is_swap_pte(pte):
            machine.free_swap_and_cache(pte)
        else:
            machine.zap_migration_entry(mm, address, pte)
        mm.set_pte_at(address, 0)


def copy_page_range(dst: VmArea, src: VmArea) -> None:
    """Copy a VMA's ptes into a fork child, write-protecting COW pages: copy_page_range()."""
    src_mm = src.vm_mm
    dst_mm = dst.vm_mm
    machine = src_mm.machine
    cow = is_cow_mapping(src.vm_flags)
    for address, pte in list(src_mm.ptes(src.vm_start, src.vm_end)):
        if not pte_present(pte):
            if is_swap_pte(pte):
                machine.swap_duplicate(pte)
            dst_mm.set_pte_at(address, pte)
            continue
        if not pte_special(pte):
            page = machine.zone.pfn_to_page(pte_pfn(pte))
            get_page(page)
            page_dup_rmap(page)
            dst_mm.anon_rss += 1
            if cow and pte_write(pte):
                pte = pte_wrprotect(pte)
                src_mm.set_pte_at(address, pte)
        dst_mm.set_pte_at(address, pte_mkold(pte))


def peek_user_page(mm: MmStruct, address: int) -> bytes | None:
    """Return the contents a process would read at a page without faulting anything in.

    An untouched page reads as zeros; None means no VMA covers the address. For checkers and
    digests: it changes no state (access_process_vm() without the fault).
    """
    page_addr = address & PAGE_MASK
    vma = mm.find_vma(page_addr)
    if vma is None or vma.vm_start > page_addr:
        return None
    pte = mm.pte_get(page_addr)
    zone = mm.machine.zone
    if pte == 0:
        return zone.zero_page.data
    if not pte_present(pte):
        return mm.machine.swap_peek(pte)
    page = zone.zero_page if pte_special(pte) else zone.pfn_to_page(pte_pfn(pte))
    return page.data


def do_swap_page(vma: VmArea, address: int, pte: int, write: bool) -> int:
    """Fault a swapped-out page back in: do_swap_page() (2.6.33).

    The slot's page is found in the swap cache or read back into it. KSM decides whether this
    mapping may have that very page (``ksm_might_need_to_copy``): the first mapping to fault
    after a KSM page was freed from the swap cache gets it as an ordinary anonymous page, other
    mappings get private copies. A write takes the page over if nothing else needs it, else
    copies it (``reuse_swap_page`` refuses KSM pages); if that copy fails, only the error is
    returned, as the kernel masks it (VM_FAULT_MAJOR dropped).
    """
    from ksmsim.kernel.swap_state import lookup_swap_cache, read_swap_cache_async
    from ksmsim.kernel.swapfile import try_to_free_swap

    mm = vma.vm_mm
    machine = mm.machine
    slot = pte >> PAGE_SHIFT
    ret = 0
    page = lookup_swap_cache(machine, slot)
    if page is None:
        page = read_swap_cache_async(machine, slot)
        if page is None:
            return VM_FAULT_OOM
        ret = VM_FAULT_MAJOR
        machine.vmstat["pgmajfault"] += 1
    machine.lock_page(page)
    if machine.ksm is not None and machine.ksm.ksm_might_need_to_copy(page, vma, address):
        unlock_page(page)
        new_page = machine.alloc_page()
        machine.zone.put_page(page)  # the swap cache keeps the page for the other ptes
        if new_page is None:
            return VM_FAULT_OOM
        copy_user_highpage(new_page, page)
        new_page.flags |= PG_swapbacked | PG_uptodate
        machine.lru_cache_add_active(new_page)
        machine.vmstat["ksm_swpin_copy"] += 1
        page = new_page
        machine.lock_page(page)
    mm.anon_rss += 1
    new_pte = mk_pte(page.pfn, writable=False, dirty=False)
    if write and machine.reuse_swap_page(page):
        new_pte = mk_pte(page.pfn, writable=bool(vma.vm_flags & VM_WRITE))
        write = False
    mm.set_pte_at(address, new_pte)
    page_add_anon_rmap(page, vma, address)
    assert machine.swap is not None
    machine.swap.swap_free(slot)
    if machine.swap.vm_swap_full() or vma.vm_flags & VM_LOCKED:
        try_to_free_swap(machine, page)
    unlock_page(page)
    if write:
        ret |= do_wp_page(vma, address, new_pte)
        if ret & VM_FAULT_ERROR:
            # An error is all the caller hears of: not that the page came from swap.
            ret &= VM_FAULT_ERROR
    return ret
