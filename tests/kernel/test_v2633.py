"""Tests for the v2.6.33 release profile: the notes' section 12 delta from the keyhole commit.

The scanned page is upgraded in place (no new frame), max_kernel_pages is gone, stale stable
nodes still abort tree walks (T5 of section 14 behaves as at the keyhole), and KSM pages can be
migrated only for memory offlining, with their stable node following them (stable_node->kpfn).
v6.18 migrates them for compaction too; the keyhole and pinned designs never do.
"""

from __future__ import annotations

import errno

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.ksm import StableNode
from ksmsim.kernel.migrate import migrate_page
from ksmsim.kernel.mm import pte_write
from ksmsim.kernel.page import (
    PAGE_SIZE,
    Page,
    PageKsm,
    PG_dirty,
    PG_referenced,
    page_stable_node,
)
from ksmsim.workload.host import Host, HostError
from tests.helpers import add_process, ksm_counts, merged_host, region_page, stable_node

X = 0xB0
W = 0x10  # W < X in memcmp order


def _count_allocations(host: Host) -> list[int]:
    """Make the machine count its frame allocations (KSM's included) in the returned cell."""
    m = host.machine
    calls = [0]
    alloc = m.alloc_page

    def counting() -> Page | None:
        calls[0] += 1
        return alloc()

    m.alloc_page = counting  # type: ignore[method-assign]
    return calls


def _merged(kernel: str) -> Host:
    return merged_host(kernel, "pq", X, swap=0)


# -- the in-place upgrade ----------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["v2.6.33", "keyhole"])
def test_two_page_merge_allocates_no_frame_in_v2633(kernel: str) -> None:
    host = Host(kernel, ram_pages=200, check=True)
    add_process(host, "p", X)
    add_process(host, "q", X)
    p_page, q_page = region_page(host, "p"), region_page(host, "q")
    allocations = _count_allocations(host)
    free_before = host.machine.zone.nr_free
    host.scan(2)
    kpage = region_page(host, "p")
    assert region_page(host, "q") is kpage and PageKsm(kpage)
    assert (kpage.mapcount, kpage.count) == (2, 2)
    assert host.machine.zone.nr_free == free_before + 1
    if kernel == "v2.6.33":
        # q's page (the one being scanned) became the KSM page; p's pte was pointed at it.
        assert allocations == [0]
        assert kpage is q_page
        assert host.machine.zone.is_free(p_page)
        assert kpage.flags & (PG_referenced | PG_dirty) == PG_referenced | PG_dirty
    else:
        # The keyhole copied the contents into a newly allocated page; both originals went.
        assert allocations == [1]
        assert kpage is not p_page and kpage is not q_page
        assert host.machine.zone.is_free(p_page) and host.machine.zone.is_free(q_page)
    assert stable_node(kpage).page is kpage
    assert [i.mm.name for i in stable_node(kpage).items()] == ["q", "p"]


def test_upgrade_in_place_makes_a_fork_child_map_the_ksm_page() -> None:
    # Section 12, 1: a page COW-shared with a fork child is upgraded under the child too; the
    # child's visit then counts it through the "ksm page forked" path.
    host = Host("v2.6.33", ram_pages=200, check=True)
    add_process(host, "p", X)
    add_process(host, "q", X)
    host.scan(1)
    host.fork("q", "c")
    q_page = region_page(host, "q")
    assert region_page(host, "c") is q_page
    host.scan(1)
    # c was registered behind the cursor's head, at the tail: visited after q's upgrade.
    assert PageKsm(q_page) and region_page(host, "c") is q_page and region_page(host, "p") is q_page
    assert ksm_counts(host) == (1, 2, 0, 0)
    assert [i.mm.name for i in stable_node(q_page).items()] == ["c", "q", "p"]


# -- max_kernel_pages is gone ------------------------------------------------------------------


def test_no_max_kernel_pages_file() -> None:
    files = set(Host("v2.6.33").sysfs.files())
    assert files == {
        "full_scans",
        "pages_shared",
        "pages_sharing",
        "pages_to_scan",
        "pages_unshared",
        "pages_volatile",
        "run",
        "sleep_millisecs",
    }
    assert "max_kernel_pages" in Host("keyhole").sysfs.files()
    with pytest.raises(HostError, match="no tunable 'max_kernel_pages'"):
        Host("v2.6.33").set_tunable("max_kernel_pages", 1)


@pytest.mark.parametrize(("kernel", "shared"), [("keyhole", 1), ("v2.6.33", 2)])
def test_no_limit_on_ksm_pages(kernel: str, shared: int) -> None:
    host = Host(kernel, ram_pages=200, check=True)
    if kernel == "keyhole":
        host.set_tunable("max_kernel_pages", 1)
    for name, byte in (("a", X), ("b", X), ("c", W), ("d", W)):
        add_process(host, name, byte)
    host.scan(2)
    assert ksm_counts(host)[:2] == (shared, shared)


# -- stale nodes still abort tree walks (T5) ---------------------------------------------------


def _t5_tree(kernel: str, n_fill: int | None) -> Host:
    """n registers first; a1, a2 share X (the root), b1, b2 share W (its left child)."""
    host = Host(kernel, ram_pages=200, check=True)
    add_process(host, "n", n_fill)
    for name, byte in (("a1", X), ("a2", X), ("b1", W), ("b2", W)):
        add_process(host, name, byte)
    host.scan(2)
    assert ksm_counts(host) == (2, 2, 0, 0)
    root = host.ksm.root_stable_tree.rb_node
    assert isinstance(root, StableNode) and root.page is region_page(host, "a1")
    assert root.rb_left is stable_node(region_page(host, "b1"))
    return host


@pytest.mark.parametrize("kernel", ["keyhole", "v2.6.33", "pinned"])
def test_t5_stale_root_aborts_search(kernel: str) -> None:
    host = _t5_tree(kernel, None)
    w_page = region_page(host, "b1")
    host.write("a1", "r", 1)
    host.write("a2", "r", 2)
    host.fill("n", "r", W)
    host.scan(1)
    if kernel == "pinned":
        # The pinned X is still valid: the walk goes left past it and finds W at once.
        assert region_page(host, "n") is w_page
        assert ksm_counts(host) == (1, 2, 0, 2)
    else:
        # n's walk met the freed X first: X was pruned (a1 and a2 turned volatile) and the
        # search gave up, so n only had its checksum recorded, although W was in the tree.
        assert not PageKsm(region_page(host, "n"))
        assert host.ksm.root_stable_tree.rb_node is stable_node(w_page)
        assert ksm_counts(host) == (1, 1, 0, 3)
        host.scan(1)
        # Next pass the walk meets only W: n merges by the stable path.
        assert region_page(host, "n") is w_page
        assert ksm_counts(host) == (1, 2, 2, 0)


def test_t5_v618_restarts_the_walk_at_a_stale_node() -> None:
    # 6.x needs two visits before the stable search, so n holds W for a pass first (its first
    # visit only records the checksum); X goes stale between the passes, and n's search then
    # meets it first, restarts from the root and finds W.
    host = _t5_tree("v6.18", None)
    w_page = region_page(host, "b1")
    host.fill("n", "r", W)
    host.scan(1)
    assert not PageKsm(region_page(host, "n"))
    assert ksm_counts(host) == (2, 2, 0, 1)
    host.write("a1", "r", 1)
    host.write("a2", "r", 2)
    # One batch of one page: n's visit alone. Its walk pruned X (a1's and a2's items turned
    # volatile) and went on from the root to W.
    host.set_tunable("pages_to_scan", 1)
    host.sysfs.write("run", 1)
    host.ksmd.batch()
    host.sysfs.write("run", 0)
    assert region_page(host, "n") is w_page
    assert host.ksm.root_stable_tree.rb_node is stable_node(w_page)
    assert ksm_counts(host) == (1, 2, 0, 2)
    check_all(host.machine)


# -- KSM page migration ------------------------------------------------------------------------


def test_v2633_migrates_ksm_page_only_when_offlining() -> None:
    host = _merged("v2.6.33")
    m = host.machine
    kpage = region_page(host, "p")
    node = stable_node(kpage)
    assert migrate_page(m, kpage) == -errno.EBUSY
    assert region_page(host, "p") is kpage and m.vmstat["pgmigrate_success"] == 0
    assert migrate_page(m, kpage, offlining=True) == 0
    new = region_page(host, "p")
    assert new is not kpage and region_page(host, "q") is new
    # The stable node follows the page (stable_node->kpfn): the keyhole key is the new frame.
    assert node.page is new and page_stable_node(new) is node and PageKsm(new)
    assert (new.mapcount, new.count) == (2, 2)
    assert new.data == bytes([X]) * PAGE_SIZE
    assert m.zone.is_free(kpage)
    for name in "pq":
        assert not pte_write(host.proc(name).mm.pte_get(host.region(name, "r").address))
    assert m.vmstat["pgmigrate_success"] == 1
    check_all(m)
    # The node is valid at its new frame: ksmd skips the stable items, a new equal page merges.
    host.scan(1)
    assert ksm_counts(host) == (1, 1, 0, 0)
    add_process(host, "r", X)
    host.scan(1)
    assert region_page(host, "r") is new
    assert ksm_counts(host) == (1, 2, 0, 0)


def test_v618_migrates_ksm_page_for_compaction() -> None:
    host = _merged("v6.18")
    m = host.machine
    kpage = region_page(host, "p")
    node = stable_node(kpage)
    assert migrate_page(m, kpage) == 0
    new = region_page(host, "q")
    assert new is not kpage and node.page is new and page_stable_node(new) is node
    assert m.zone.is_free(kpage)
    check_all(m)
    assert host.migrate("p", "r") == {"ok": 1}
    assert node.page is region_page(host, "p") is region_page(host, "q")


@pytest.mark.parametrize("kernel", ["keyhole", "pinned"])
def test_keyhole_and_pinned_never_migrate_ksm_pages(kernel: str) -> None:
    host = _merged(kernel)
    m = host.machine
    kpage = region_page(host, "p")
    assert migrate_page(m, kpage) == -errno.EBUSY
    assert migrate_page(m, kpage, offlining=True) == -errno.EBUSY
    assert region_page(host, "p") is kpage and stable_node(kpage).page is kpage
    assert host.migrate("p", "r") == {"EBUSY": 1}
    assert m.vmstat["pgmigrate_fail"] == 1
    check_all(m)


def test_v2633_host_migrate_refuses_ksm_pages() -> None:
    host = _merged("v2.6.33")
    add_process(host, "o", 0x33)
    assert host.migrate("p", "r") == {"EBUSY": 1}
    assert host.migrate("o", "r") == {"ok": 1}
