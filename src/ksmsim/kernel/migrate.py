"""Page migration: moving a page's contents and mappings to another frame (mm/migrate.c).

As compaction does it: the old page's ptes are replaced by migration entries (try_to_unmap
with TTU_MIGRATION), its contents, flags, swap-cache slot and mapping move to the new frame,
and the migration entries are replaced by ptes of the new page (remove_migration_ptes). A KSM
page moves only where the profile allows it, and then its stable node follows it
(ksm_migrate_page: stable_node->kpfn). In a sequential run no fault can meet a migration entry.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ksmsim.kernel.mm import VmArea, migration_entry_to_pte, mk_pte, pte_write
from ksmsim.kernel.page import (
    Page,
    PageAnon,
    PageKsm,
    PG_active,
    PG_dirty,
    PG_lru,
    PG_mlocked,
    PG_referenced,
    PG_swapbacked,
    PG_swapcache,
    PG_uptodate,
    page_stable_node,
    trylock_page,
    unlock_page,
)
from ksmsim.kernel.rmap import page_add_anon_rmap, page_remove_rmap, rmap_walk_anon

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine

_MOVED_FLAGS = PG_dirty | PG_referenced | PG_uptodate | PG_swapbacked | PG_mlocked | PG_active


def _mappings(machine: Machine, page: Page) -> list[tuple[VmArea, int]]:
    if PageKsm(page):
        assert machine.ksm is not None
        return list(machine.ksm.rmap_walk_ksm(page))
    return list(rmap_walk_anon(page))


def migrate_page(machine: Machine, page: Page, *, offlining: bool = False) -> int:
    """Move an anonymous (or KSM) page to a newly allocated frame; return 0 or -errno:
    unmap_and_move() and move_to_new_page() (2.6.33).

    Refused: a KSM page where the profile cannot move one (-EBUSY; 2.6.33 moves KSM pages only
    when memory is going offline), a locked page (-EAGAIN), a page with references besides its
    mappings and the swap cache (-EAGAIN, as migrate_page_move_mapping() finds), no free frame
    (-ENOMEM).
    """
    ksm = machine.ksm
    if not PageAnon(page) or page.count == 0:
        return -errno.EINVAL
    if PageKsm(page):
        profile = machine.profile
        if not profile.migrate_ksm_pages or not (offlining or profile.migrate_ksm_pages_compaction):
            return -errno.EBUSY
        if page_stable_node(page) is None:
            return -errno.EBUSY
    expected = page.mapcount + (1 if page.flags & PG_swapcache else 0)
    if page.count != expected:
        return -errno.EAGAIN
    if not trylock_page(page):
        return -errno.EAGAIN
    # Isolate from the LRU first (isolate_lru_page()), so that reclaim run by the allocation
    # below cannot age the page being moved.
    was_lru = bool(page.flags & PG_lru)
    was_active = bool(page.flags & PG_active)
    if was_lru:
        machine.lru.remove(page)
    page.count += 1  # isolation, held until the end
    zone = machine.zone
    new = machine.alloc_page()
    if new is None:
        page.count -= 1
        if was_lru:
            machine.lru.add(page, active=was_active)
        unlock_page(page)
        return -errno.ENOMEM
    # try_to_unmap(TTU_MIGRATION): each pte becomes a migration entry.
    moved: list[tuple[VmArea, int, bool]] = []
    for vma, address in _mappings(machine, page):
        mm = vma.vm_mm
        pte = mm.pte_get(address)
        moved.append((vma, address, pte_write(pte)))
        mm.set_pte_at(address, migration_entry_to_pte(page.pfn, pte_write(pte)))
        page_remove_rmap(page, machine)
        zone.put_page(page)
    if machine.preempt is not None:
        machine.preempt("migrate_page:unmapped")
    # move_to_new_page(): contents, flags, the swap-cache slot and the mapping.
    new.data = page.data
    new.csum, new.csum_of = page.csum, page.csum_of
    new.flags |= page.flags & _MOVED_FLAGS
    new.index = page.index
    new.mapping = page.mapping
    new.mapping_flags = page.mapping_flags
    if page.flags & PG_swapcache:
        slot = page.private
        machine.swap_cache[slot] = new
        new.flags |= PG_swapcache
        new.private = slot
        new.count += 1
        page.flags &= ~PG_swapcache
        page.private = 0
        page.count -= 1
    if PageKsm(page):
        node = page_stable_node(page)
        assert ksm is not None and node is not None
        ksm.ksm_migrate_page(new, page)
    # remove_migration_ptes(): the entries become ptes of the new page.
    for vma, address, writable in moved:
        mm = vma.vm_mm
        new.count += 1
        page_add_anon_rmap(new, vma, address)
        mm.set_pte_at(address, mk_pte(new.pfn, writable=writable))
    new.count -= 1  # the allocation's reference: the ptes (and cache) hold it now
    machine.lru.add(new, active=was_active)
    page.flags &= ~_MOVED_FLAGS
    unlock_page(page)
    zone.put_page(page)  # the isolation reference: the old frame is free
    machine.vmstat["pgmigrate_success"] += 1
    return 0


def migrate_range(
    machine: Machine, pages: list[Page], *, offlining: bool = False
) -> dict[str, int]:
    """Migrate each page and count the outcomes by errno name ("ok" for success)."""
    out: dict[str, int] = {}
    for page in pages:
        err = migrate_page(machine, page, offlining=offlining)
        key = "ok" if err == 0 else errno.errorcode[-err]
        out[key] = out.get(key, 0) + 1
        if err:
            machine.vmstat["pgmigrate_fail"] += 1
    return out
