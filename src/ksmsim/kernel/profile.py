"""Kernel profiles: which KSM design and release the engine behaves as.

Behaviour that differs between kernels is a named feature here; the code asks for the
feature, never for a version. Profiles are looked up by name with ``get_profile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal


@dataclass(frozen=True, slots=True)
class Profile:
    """The features that distinguish one modelled kernel from another."""

    name: str
    description: str
    checksum: Literal["jhash2", "xxhash"]
    """calc_checksum(): jhash2 (lookup2, initval 17) until 3.x; low 32 bits of XXH64 in 6.x."""
    stable_node_pins_page: bool = False
    """The pinned design (db114b83): stable_node->page holds a page reference."""
    merge_allocates_kpage: bool = False
    """try_to_merge_two_pages() copies into a newly allocated KSM page (until 2.6.33), rather
    than upgrading the scanned page in place."""
    break_ksm_page_after_failed_search: bool = False
    """Pinned cmp_and_merge_page(): a KSM page not found in the stable tree is COW-broken."""
    has_max_kernel_pages: bool = False
    """The max_kernel_pages tunable and its limit on new KSM pages."""
    checksum_before_stable_tree: bool = False
    """6.11+ cmp_and_merge_page(): the volatility checksum runs before the stable tree search,
    and a KSM page already on its item's node is skipped inside cmp_and_merge_page."""
    stale_node_restarts_walk: bool = False
    """A stale stable node met by a tree walk restarts the walk from the root (3.x+), where
    the 2.6.33-era walks give up."""
    stable_node_chains: bool = False
    """max_page_sharing: a KSM page is shared at most that many times; equal pages beyond it
    become dups chained under one stable-tree node (4.13+)."""
    zero_pages: bool = False
    """use_zero_pages: empty pages are merged with the shared zero page (ksm_zero_pages)."""
    smart_scan: bool = False
    """smart_scan: pages that keep failing to merge are skipped for a few passes (6.7+)."""
    scan_statistics: bool = False
    """pages_scanned, general_profit, the per-process /proc/PID/ksm_stat and the cow_ksm
    event of /proc/vmstat (6.x)."""
    unshare_fault: bool = False
    """break_ksm() touches only KSM pages and unshares with FAULT_FLAG_UNSHARE (6.x): the copy
    is mapped read-only and clean."""
    write_protect_dirty_ptes: bool = False
    """write_protect_page() also checks counts for read-only dirty ptes and cleans them (6.x)."""
    enter_at_tail_when_unmerging: bool = False
    """__ksm_enter() appends at the list's tail while run=2 is set (6.x)."""
    remove_stable_nodes_on_unmerge: bool = False
    """run=2 ends by removing every stable node whose page is no longer mapped (6.x)."""
    merge_across_nodes: bool = False
    """The merge_across_nodes tunable (one NUMA node is modelled, so only its checks)."""
    merge_any: bool = False
    """prctl(PR_SET_MEMORY_MERGE): every compatible VMA of the process is mergeable (6.4+)."""
    advisor: bool = False
    """The scan-time advisor that retunes pages_to_scan after each pass (6.8+)."""
    scan_rechecks_empty_list: bool = False
    """scan_get_next_rmap_item() re-checks, once it has taken the first slot under
    ksm_mmlist_lock, that a racing __ksm_exit did not empty the list (v3.0, 2b472611a32a7
    "ksm: fix NULL pointer dereference in scan_get_next_rmap_item()", CVE-2011-2183)."""
    find_mergeable_vma: bool = False
    """Merge paths look the VMA up with find_mergeable_vma() (mergeable, with an anon_vma) and
    take an item out of its tree only once its page is merged (3.x+)."""
    lru_add_drain_each_pass: bool = False
    """lru_add_drain_all() at the start of every pass (3.x+), so per-CPU LRU buffers never hold
    back a merge."""
    migrate_ksm_pages: bool = False
    """KSM pages can be migrated (stable_node->kpfn follows them: ksm_migrate_page()); 2.6.33
    allows it only for memory hot-remove, 6.x for compaction too."""
    migrate_ksm_pages_compaction: bool = False
    """Compaction may move KSM pages (6.x); otherwise migrate_pages() refuses them with EBUSY
    unless memory is going offline."""
    sysfs_kstrtox: bool = False
    """sysfs stores parse with kstrtouint()/kstrtoint()/kstrtobool() rather than 2.6.33's
    strict_strtoul() (a leading '+' is accepted, out-of-range values give ERANGE)."""
    vma_compat_6x: bool = False
    """ksm_madvise() refuses 6.x's set of VMA flags (vma_ksm_compatible()) rather than 2009's."""


KEYHOLE: Final = Profile(
    name="keyhole",
    description='mm/ksm.c at 4035c07a "ksm: take keyhole reference to page" (Dec 2009)',
    checksum="jhash2",
    merge_allocates_kpage=True,
    has_max_kernel_pages=True,
)

PINNED: Final = Profile(
    name="pinned",
    description='mm/ksm.c at db114b83 "ksm: hold anon_vma in rmap_item": stable nodes pin pages',
    checksum="jhash2",
    stable_node_pins_page=True,
    merge_allocates_kpage=True,
    break_ksm_page_after_failed_search=True,
    has_max_kernel_pages=True,
)

V6_18: Final = Profile(
    name="v6.18",
    description="mm/ksm.c of Linux 6.18 (folios, chains, zero pages, smart scan, advisor)",
    checksum="xxhash",
    checksum_before_stable_tree=True,
    stale_node_restarts_walk=True,
    stable_node_chains=True,
    zero_pages=True,
    smart_scan=True,
    scan_statistics=True,
    unshare_fault=True,
    write_protect_dirty_ptes=True,
    enter_at_tail_when_unmerging=True,
    remove_stable_nodes_on_unmerge=True,
    merge_across_nodes=True,
    merge_any=True,
    advisor=True,
    find_mergeable_vma=True,
    scan_rechecks_empty_list=True,
    vma_compat_6x=True,
    sysfs_kstrtox=True,
    migrate_ksm_pages=True,
    migrate_ksm_pages_compaction=True,
    lru_add_drain_each_pass=True,
)

V2_6_33: Final = Profile(
    name="v2.6.33",
    description="mm/ksm.c of the 2.6.33 release: the scanned page upgraded in place, no "
    "max_kernel_pages, stable_node->kpfn and KSM page migration",
    checksum="jhash2",
    migrate_ksm_pages=True,
)

PROFILES: Final = {p.name: p for p in (KEYHOLE, PINNED, V2_6_33, V6_18)}

PLANNED_PROFILES: Final[dict[str, str]] = {}


class UnknownProfile(ValueError):
    """A profile name that the engine does not (yet) model."""


def get_profile(name: str) -> Profile:
    """Return the profile called ``name``, or raise UnknownProfile saying why not."""
    try:
        return PROFILES[name]
    except KeyError:
        if name in PLANNED_PROFILES:
            raise UnknownProfile(PLANNED_PROFILES[name]) from None
        known = ", ".join(sorted(PROFILES))
        raise UnknownProfile(f"unknown kernel profile {name!r} (known: {known})") from None
