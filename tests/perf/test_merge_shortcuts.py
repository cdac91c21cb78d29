"""The fused_merge, first_visit and fused_free shortcuts against the exact path, case by case.

``fused_merge``: a page of a third process, equal to a KSM page two others share, is merged into
it by the C step, by its pure-Python twin and by the exact steps of cmp_and_merge_page()
(try_to_merge_with_ksm_page(), stable_tree_append(), put_page()), on three machines built
alike, for every kernel profile and with one condition at a time broken (a lock held, a count
off, a read-only or dirty pte, an mlocked or unmergeable area, a cache miss, other contents, ...).
The C step and the twin must agree; when they merge, the machine must be exactly as the exact
steps leave it, and when they decline, exactly as it was.

``first_visit`` and ``fused_free``: whole runs with the shortcut on and off (everything else
on), compared after every batch, with batches cut at every size, volatile pages, items pruned
after an munmap, smart scan, and each kernel profile (the keyhole kernels search the stable
tree before the checksum, so the shortcut takes pages only while that tree is empty).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ksmsim.kernel import ksm_shortcuts as ks
from ksmsim.kernel.ksm import UNSTABLE_FLAG, Ksm, RmapItem
from ksmsim.kernel.mm import _PAGE_DIRTY, _PAGE_RW, VM_LOCKED, VM_MERGEABLE
from ksmsim.kernel.page import (
    PAGE_SHIFT,
    Page,
    PG_active,
    PG_locked,
    PG_lru,
    PG_mlocked,
    PG_reserved,
    PG_swapcache,
    page_stable_node,
    unlock_page,
)
from ksmsim.kernel.profile import PROFILES
from ksmsim.workload.host import Host

from .state import first_difference, machine_state

ks._setup_c()
needs_c = pytest.mark.skipif(ks.merge_fused_c is None, reason="ksmsim._speedups not built")
KERNELS = sorted(PROFILES)


def _pte_mutator(set_bits: int, clear_bits: int) -> Callable[[Host, Any], None]:
    def mutate(host: Host, case: Any) -> None:
        mm, addr = case[0].mm, case[0].address
        pte = mm.pte_get(addr)
        mm.set_pte_at_by_ksmd(addr, (pte | set_bits) & ~clear_bits)

    return mutate


def _item_unstable(host: Host, case: Any) -> None:
    case[0].address |= UNSTABLE_FLAG


def _cache_miss(host: Host, case: Any) -> None:
    case[0].mm.mmap_cache = None


def _vm_flags(set_bits: int, clear_bits: int) -> Callable[[Host, Any], None]:
    def mutate(host: Host, case: Any) -> None:
        vma = case[0].mm.find_vma(case[0].address)
        vma.vm_flags = (vma.vm_flags | set_bits) & ~clear_bits

    return mutate


def _page_field(name: str, fn: Callable[[Any], Any], which: int = 1) -> Callable[[Host, Any], None]:
    def mutate(host: Host, case: Any) -> None:
        page = case[which]
        setattr(page, name, fn(getattr(page, name)))

    return mutate


def _other_contents(host: Host, case: Any) -> None:
    case[1].data = b"\x01" * 4096


def _mm_exiting(host: Host, case: Any) -> None:
    case[0].mm.mm_users = 0


# name -> (mutation, whether the fused step still merges)
MUTATIONS: dict[str, tuple[Callable[[Host, Any], None] | None, bool]] = {
    "none": (None, True),
    "read_only_pte": (_pte_mutator(0, _PAGE_RW | _PAGE_DIRTY), True),
    "read_only_pte_extra_ref": (
        lambda h, c: (
            _pte_mutator(0, _PAGE_RW | _PAGE_DIRTY)(h, c),
            _page_field("count", lambda v: v + 1)(h, c),
        ),
        True,
    ),
    "page_locked": (_page_field("flags", lambda v: v | PG_locked), False),
    "kpage_locked": (_page_field("flags", lambda v: v | PG_locked, which=2), False),
    "swapcache": (_page_field("flags", lambda v: v | PG_swapcache), False),
    "extra_ref": (_page_field("count", lambda v: v + 1), False),
    "last_ref": (_page_field("count", lambda v: v - 1), False),
    "index_moved": (_page_field("index", lambda v: v + 1), False),
    "kpage_without_node": (_page_field("mapping", lambda v: None, which=2), False),
    "kpage_not_ksm": (_page_field("mapping_flags", lambda v: 1, which=2), False),
    "page_not_anon": (_page_field("mapping_flags", lambda v: 0), False),
    "other_contents": (_other_contents, False),
    "vm_locked": (_vm_flags(VM_LOCKED, 0), False),
    "not_mergeable": (_vm_flags(0, VM_MERGEABLE), False),
    "cache_miss": (_cache_miss, False),
    "item_in_tree": (_item_unstable, False),
    "mm_exiting": (_mm_exiting, False),
}


def _case(kernel: str, mutation: str) -> tuple[Host, tuple[RmapItem, Page, Page]]:
    """Build the machine and the (item, page, kpage) of the module docstring."""
    host = Host(kernel, ram_pages=2048)
    for name in ("a", "b"):
        host.spawn(name)
        host.mmap(name, "r", 8)
        host.fill(name, "r", "x")
    host.scan(3)
    host.spawn("c")
    r = host.mmap("c", "r", 8)
    host.fill("c", "r", "x")
    ksm = host.ksm
    mm = host.proc("c").mm
    addr = r.page_address(3)
    slot = ksm.mm_slots[mm]
    item = ksm.get_next_rmap_item(slot, slot, addr)
    mm.find_vma(addr)
    page = ksm._mem_map[mm.pte_get(addr) >> PAGE_SHIFT]
    assert page is not None
    page.count += 1  # ksmd's scan reference
    kpage = next(ksm.stable_nodes()).page
    assert kpage is not None and kpage.data == page.data
    kpage.count += 1  # the stable tree search's reference
    case = (item, page, kpage)
    fn = MUTATIONS[mutation][0]
    if fn is not None:
        fn(host, case)
    return host, case


def _exact(ksm: Ksm, item: RmapItem, page: Page, kpage: Page) -> None:
    """The steps of cmp_and_merge_page() the fused step stands for."""
    err = ksm.try_to_merge_with_ksm_page(item, page, kpage)
    if not err:
        ksm.machine.lock_page(kpage)
        node = page_stable_node(kpage)
        ksm.stable_tree_append(item, node)
        unlock_page(kpage)
    ksm.machine.zone.put_page(kpage)


def _dump(host: Host, item: RmapItem) -> Any:
    return (
        machine_state(host.machine),
        item.address,
        item.anon_vma is not None,
        item.head is not None,
    )


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_fused_merge_c_twin_and_exact(kernel: str, mutation: str) -> None:
    assert ks.merge_fused_c is not None
    h_c, (i_c, p_c, k_c) = _case(kernel, mutation)
    h_py, (i_py, p_py, k_py) = _case(kernel, mutation)
    before = _dump(h_py, i_py)
    got_c = ks.merge_fused_c(h_c.ksm, i_c, p_c, k_c)
    got_py = Ksm.merge_with_ksm_page_fused(h_py.ksm, i_py, p_py, k_py)
    assert got_c is got_py
    assert got_py is MUTATIONS[mutation][1]
    after_c, after_py = _dump(h_c, i_c), _dump(h_py, i_py)
    assert first_difference(after_c, after_py) is None
    if not got_py:
        assert first_difference(after_py, before) is None
        return
    h_x, (i_x, p_x, k_x) = _case(kernel, mutation)
    _exact(h_x.ksm, i_x, p_x, k_x)
    assert first_difference(after_py, _dump(h_x, i_x)) is None


# -- first_visit and fused_free over whole runs ----------------------------------------------------
def _run(kernel: str, shortcuts: ks.Shortcuts, batch: int, smart: bool) -> list[Any]:
    """Run a mixed workload in batches of ``batch`` pages and dump the state after each
    (with smart scan off, chains of at most 3 and zero pages merged on 6.x)."""
    with ks.using_shortcuts(shortcuts):
        host = Host(kernel, ram_pages=4096)
    if host.profile.smart_scan:
        host.set_tunable("smart_scan", int(smart))
        if not smart:
            host.set_tunable("max_page_sharing", 3)
            host.set_tunable("use_zero_pages", 1)
    host.set_tunable("pages_to_scan", batch)
    for name in ("a", "b", "c"):
        host.spawn(name)
        host.mmap(name, "dup", 24)
        host.fill(name, "dup", "repeat:6")
        host.mmap(name, "own", 24)
        host.fill(name, "own", "unique")
        host.mmap(name, "same", 8)
        host.fill(name, "same", "x")
        host.mmap(name, "zero", 4)
        host.fill(name, "zero", "zero")
    states = []
    ksmd = host.ksmd
    host.sysfs.write("run", 1)
    for step in range(60):
        ksmd.batch()
        states.append(machine_state(host.machine))
        if step % 7 == 3:
            # Volatile pages: a checksum that keeps changing.
            host.write("a", "own", 0x40 + step, offset=0, start=step % 24, count=2)
        if step == 20:
            host.munmap("b", "own", start=4, count=8)
        if step == 33:
            host.write("c", "dup", 0x33, offset=9, start=0, count=5)
    return states


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("batch", [1, 2, 7, 33, 1000])
@pytest.mark.parametrize("name", ["first_visit", "fused_free"])
def test_scan_shortcut_equals_exact(kernel: str, batch: int, name: str) -> None:
    smart = batch != 7
    on = ks.Shortcuts.all_on()
    off = ks.Shortcuts(**{name: False})
    a = _run(kernel, on, batch, smart)
    b = _run(kernel, off, batch, smart)
    for n, (x, y) in enumerate(zip(a, b, strict=True)):
        assert first_difference(x, y, f"batch{n}") is None


def test_first_visit_takes_pages() -> None:
    """The shortcut does take pages (the C loop counts them in pages_scanned itself)."""
    if not ks.first_visit_enabled(ks.Shortcuts.all_on()):
        pytest.skip("needs the C helpers and the C frame base")
    with ks.using_shortcuts(ks.Shortcuts.all_on()):
        host = Host("v6.18", ram_pages=4096)
    host.spawn("a")
    host.mmap("a", "r", 64)
    host.fill("a", "r", "unique")
    ksm = host.ksm
    calls = [0]
    original = ksm.cmp_and_merge_page

    def counted(page: Page, item: RmapItem) -> None:
        calls[0] += 1
        original(page, item)

    ksm.cmp_and_merge_page = counted  # type: ignore[method-assign]
    host.scan(1)
    assert ksm.ksm_pages_scanned == 64 and calls[0] == 0


@pytest.mark.parametrize(
    "mutation",
    [
        "page_locked",
        "extra_ref",
        "last_ref",
        "swapcache",
        "other_contents",
        "not_mergeable",
        "mm_exiting",
        "index_moved",
    ],
)
def test_fused_merge_conditions_matter(mutation: str) -> None:
    """Where the fused step declines, the exact steps do not merge (or do more than merge),
    so a fused step ignoring the condition would go wrong."""
    host, (item, page, kpage) = _case("v6.18", mutation)
    assert host.ksm.try_to_merge_with_ksm_page(item, page, kpage) != 0


def test_fused_merge_mlock_and_lock_conditions_matter() -> None:
    host, (item, page, kpage) = _case("v6.18", "vm_locked")
    assert host.ksm.try_to_merge_with_ksm_page(item, page, kpage) == 0
    assert kpage.flags & PG_mlocked  # the exact steps move the mlock, the fused one would not
    host, (item, page, kpage) = _case("v6.18", "kpage_locked")
    with pytest.raises(AssertionError):
        _exact(host.ksm, item, page, kpage)  # lock_page() would wait for the holder


def _free_case(active: bool) -> tuple[Host, Page, tuple[Any, ...]]:
    host = Host("v6.18", ram_pages=256)
    host.spawn("a")
    r = host.mmap("a", "r", 4)
    host.fill("a", "r", "unique")
    mm = host.proc("a").mm
    addr = r.page_address(1)
    page = host.ksm._mem_map[mm.pte_get(addr) >> PAGE_SHIFT]
    assert page is not None and page.flags & PG_lru
    # As a merge leaves it: unmapped, the scan's reference the last.
    mm.set_pte_at(addr, 0)
    page.mapcount = 0
    host.machine.nr_anon_pages -= 1
    if not active:
        host.machine.lru.remove(page)
        host.machine.lru.add(page, active=False)
    m = host.machine
    args = (
        m.zone._free.append,
        m.zone,
        m.lru.active,
        m.lru.inactive,
        m.ksm_unmapped_at,
        m._released,
        PG_lru,
        PG_active,
        PG_reserved,
    )
    return host, page, args


@needs_c
@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("block", ["none", "unmapped_at", "mapped", "count"])
def test_free_scanned_equals_put_page(active: bool, block: str) -> None:
    assert ks.free_scanned_c is not None
    hosts = [_free_case(active) for _ in range(2)]
    for host, page, _ in hosts:
        if block == "unmapped_at":
            host.machine.ksm_unmapped_at[page] = 0
        elif block == "mapped":
            page.mapcount = 1
        elif block == "count":
            page.count = 2
    (h_c, p_c, a_c), (h_x, p_x, _) = hosts
    before = machine_state(h_c.machine)
    freed = ks.free_scanned_c(p_c, *a_c)
    assert freed is (block == "none")
    if not freed:
        assert first_difference(machine_state(h_c.machine), before) is None
        return
    h_x.machine.zone.put_page(p_x)
    assert first_difference(machine_state(h_c.machine), machine_state(h_x.machine)) is None
    assert p_c.data is None and p_c.count == 0 and p_c not in h_c.machine.lru.active


@pytest.mark.parametrize("c_helpers", [True, False])
def test_fused_merge_runs(c_helpers: bool) -> None:
    """Merges into the stable tree's pages go through the fused step (C or twin)."""
    # (With first_visit the C pte loop makes these merges itself: see below.)
    with ks.using_shortcuts(ks.Shortcuts(c_helpers=c_helpers, first_visit=False)):
        host = Host("v6.18", ram_pages=4096)
    host.set_tunable("smart_scan", 0)
    ksm = host.ksm
    fused = ksm._fused_merge
    assert fused is not None
    merged = [0]

    def counted(*args: Any) -> bool:
        done = fused(*args)
        merged[0] += done
        return done

    ksm._fused_merge = counted
    for name in ("a", "b", "c"):
        host.spawn(name)
        host.mmap(name, "r", 32)
        host.fill(name, "r", "x")
    host.scan(3)
    assert merged[0] > 50


def test_first_visit_merges() -> None:
    """With the checksum first, the C pte loop also makes the merges into the stable tree."""
    if not ks.first_visit_enabled(ks.Shortcuts.all_on()):
        pytest.skip("needs the C helpers and the C frame base")
    with ks.using_shortcuts(ks.Shortcuts.all_on()):
        host = Host("v6.18", ram_pages=4096)
    host.set_tunable("smart_scan", 0)
    for name in ("a", "b", "c"):
        host.spawn(name)
        host.mmap(name, "r", 32)
        host.fill(name, "r", "x")
    ksm = host.ksm
    calls = [0]
    original = ksm.cmp_and_merge_page

    def counted(page: Page, item: RmapItem) -> None:
        calls[0] += 1
        original(page, item)

    ksm.cmp_and_merge_page = counted  # type: ignore[method-assign]
    host.scan(2)
    assert host.counters()["pages_sharing"] == 95
    assert calls[0] < 10


# -- try_to_merge_with_ksm_page() fused ---------------------------------------------------------
TRY_MODES = ("ksm", "upgrade", "upgrade_unstable")


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", TRY_MODES)
@pytest.mark.parametrize("mutation", sorted(set(MUTATIONS) - {"item_in_tree"}))
def test_try_merge_fused_c_twin_and_exact(kernel: str, mode: str, mutation: str) -> None:
    """try_to_merge_with_ksm_page()'s fused step: into a KSM page, or the page upgraded in
    place (with its item in the unstable tree, which the exact function then takes it out
    of on 3.x+ kernels)."""
    assert ks.try_merge_fused_c is not None

    def build() -> tuple[Host, RmapItem, Page, Page | None]:
        host, (item, page, kpage) = _case(kernel, mutation)
        if mode == "upgrade_unstable" and not item.address & 0x300:
            assert host.ksm.unstable_tree_search_insert(item, page) is None
        return host, item, page, kpage if mode == "ksm" else None

    h_c, i_c, p_c, k_c = build()
    h_py, i_py, p_py, k_py = build()
    before = _dump(h_py, i_py)
    got_c = ks.try_merge_fused_c(h_c.ksm, i_c, p_c, k_c)
    got_py = Ksm.try_to_merge_with_ksm_page_fused(h_py.ksm, i_py, p_py, k_py)
    assert got_c is got_py
    if mutation == "none":
        assert got_py
    after_c, after_py = _dump(h_c, i_c), _dump(h_py, i_py)
    assert first_difference(after_c, after_py) is None
    if not got_py:
        assert first_difference(after_py, before) is None
        return
    h_x, i_x, p_x, k_x = build()
    h_x.ksm._fused_try = None
    assert h_x.ksm.try_to_merge_with_ksm_page(i_x, p_x, k_x) == 0
    assert first_difference(after_py, _dump(h_x, i_x)) is None


def test_first_visit_unstable_tree() -> None:
    """Unique pages: the first pass notes checksums, the later ones insert the pages into the
    unstable tree (after taking last pass's items out of it), all in the C pte loop."""
    if not ks.first_visit_enabled(ks.Shortcuts.all_on()):
        pytest.skip("needs the C helpers and the C frame base")
    with ks.using_shortcuts(ks.Shortcuts.all_on()):
        host = Host("v6.18", ram_pages=4096)
    host.set_tunable("smart_scan", 0)
    for name in ("a", "b"):
        host.spawn(name)
        host.mmap(name, "r", 40)
        host.fill(name, "r", "unique")
    ksm = host.ksm
    calls = [0]
    original = ksm.cmp_and_merge_page

    def counted(page: Page, item: RmapItem) -> None:
        calls[0] += 1
        original(page, item)

    ksm.cmp_and_merge_page = counted  # type: ignore[method-assign]
    host.scan(3)
    assert host.counters()["pages_unshared"] == 80
    assert ksm.ksm_pages_scanned == 240 and calls[0] == 0
