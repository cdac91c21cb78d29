"""Tests for page migration (mm/migrate.c): moving an anonymous page's contents, mappings and
swap-cache slot to another frame, the refusals, Host.migrate and the scenario action."""

from __future__ import annotations

import errno

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.machine import Machine, MachineConfig
from ksmsim.kernel.memory import read_user_byte, write_user_bytes
from ksmsim.kernel.migrate import migrate_page, migrate_range
from ksmsim.kernel.mm import is_swap_pte, pte_write
from ksmsim.kernel.page import (
    PageKsm,
    PG_active,
    PG_locked,
    PG_lru,
    PG_swapcache,
    page_anon_vma,
)
from ksmsim.kernel.profile import KEYHOLE
from ksmsim.kernel.vmscan import page_referenced, shrink_page_list
from ksmsim.workload.host import Host
from ksmsim.workload.runner import run_scenario
from ksmsim.workload.scenario import parse_scenario
from tests.helpers import (
    P,
    filled,
    mapped_page,
    process_with_pages,
    reclaim_one,
    small_machine,
)

# -- ordinary anonymous pages ------------------------------------------------------------------


def test_migrate_keeps_contents_mapping_counts_and_lru() -> None:
    m = small_machine()
    mm, a = process_with_pages(m, "a", [0x11, 0x22])
    old = mapped_page(mm, a)
    anon_vma, index = page_anon_vma(old), old.index
    assert migrate_page(m, old) == 0
    new = mapped_page(mm, a)
    assert new is not old and new.pfn != old.pfn
    assert new.data == filled(0x11)
    assert pte_write(mm.pte_get(a))
    assert (new.count, new.mapcount, new.index) == (1, 1, index)
    assert page_anon_vma(new) is anon_vma
    # The new frame takes the old one's place on the LRU (active stays active).
    assert new.flags & (PG_lru | PG_active) == PG_lru | PG_active
    assert new in m.lru.active and old not in m.lru.active
    assert m.zone.is_free(old)
    assert m.vmstat["pgmigrate_success"] == 1
    assert mapped_page(mm, a + P).data == filled(0x22)
    # The page behaves as before: a write is in place (it is the only mapping).
    write_user_bytes(mm, a, b"\x99")
    assert mapped_page(mm, a) is new
    check_all(m)


def test_migrate_moves_every_mapping_of_a_fork_shared_page() -> None:
    m = small_machine()
    mm, a = process_with_pages(m, "parent", [0x11])
    c1 = m.fork(mm, "c1")
    c2 = m.fork(mm, "c2")
    old = mapped_page(mm, a)
    assert (old.count, old.mapcount) == (3, 3)
    assert migrate_page(m, old) == 0
    new = mapped_page(mm, a)
    assert mapped_page(c1, a) is new and mapped_page(c2, a) is new
    assert (new.count, new.mapcount) == (3, 3)
    for who in (mm, c1, c2):
        assert not pte_write(who.pte_get(a))  # still copy-on-write
    assert m.zone.is_free(old)
    # COW still works on the moved page: c1 copies, the others keep sharing it.
    write_user_bytes(c1, a, b"\x01")
    assert mapped_page(c1, a) is not new and (new.count, new.mapcount) == (2, 2)
    check_all(m)


def test_migrate_inactive_page_stays_inactive() -> None:
    m = small_machine()
    mm, a = process_with_pages(m, "a", [0x11])
    old = mapped_page(mm, a)
    m.lru.remove(old)
    m.lru.add(old, active=False)
    assert migrate_page(m, old) == 0
    new = mapped_page(mm, a)
    assert new.flags & (PG_lru | PG_active) == PG_lru
    assert list(m.lru.inactive) == [new]
    check_all(m)


def test_migrate_swap_cache_page_moves_the_cache_entry() -> None:
    m = small_machine()
    mm, a = process_with_pages(m, "a", [0x11])
    assert reclaim_one(m, mapped_page(mm, a)) == 1
    read_user_byte(mm, a)  # back from swap, and still in the swap cache
    old = mapped_page(mm, a)
    slot = old.private
    assert m.swap_cache == {slot: old} and (old.count, old.mapcount) == (2, 1)
    assert migrate_page(m, old) == 0
    new = mapped_page(mm, a)
    assert m.swap_cache == {slot: new}
    assert new.flags & PG_swapcache and new.private == slot
    assert (new.count, new.mapcount) == (2, 1)
    assert not pte_write(mm.pte_get(a))
    assert m.zone.is_free(old) and not old.flags & PG_swapcache
    assert m.swap is not None and m.swap.has_cache[slot] == 1
    # The moved cache page is found by the slot: a write reuses it and frees the slot.
    write_user_bytes(mm, a, b"\x02")
    assert mapped_page(mm, a) is new and m.swap_cache == {} and m.swap.inuse_pages == 0
    check_all(m)


# -- refusals ----------------------------------------------------------------------------------


def test_migrate_refuses_locked_page() -> None:
    m = small_machine()
    mm, a = process_with_pages(m, "a", [0x11])
    page = mapped_page(mm, a)
    page.flags |= PG_locked
    free = m.zone.nr_free
    assert migrate_page(m, page) == -errno.EAGAIN
    assert page.flags & PG_locked  # still the other holder's
    page.flags &= ~PG_locked
    assert mapped_page(mm, a) is page and (page.count, page.mapcount) == (1, 1)
    assert m.zone.nr_free == free
    check_all(m)


def test_migrate_refuses_page_with_extra_reference() -> None:
    m = small_machine()
    mm, a = process_with_pages(m, "a", [0x11])
    page = mapped_page(mm, a)
    page.count += 1  # a get_user_pages() pin, say
    assert migrate_page(m, page) == -errno.EAGAIN
    assert not page.flags & PG_locked
    page.count -= 1
    assert mapped_page(mm, a) is page
    check_all(m)


def test_migrate_refuses_page_held_by_lru_pagevec() -> None:
    host = Host("v2.6.33", ram_pages=200, check=True, lru_pagevec=True)
    host.spawn("a")
    host.mmap("a", "r", 2)
    host.fill("a", "r", "unique")
    assert host.migrate("a", "r") == {"EAGAIN": 2}
    host.machine.lru_add_drain_all()
    assert host.migrate("a", "r") == {"ok": 2}


def test_migrate_without_free_frame_gives_enomem() -> None:
    m = Machine(KEYHOLE, MachineConfig(ram_pages=64))
    mm, a = process_with_pages(m, "a", list(range(64)))
    assert m.zone.nr_free == 0
    page = mapped_page(mm, a)
    assert migrate_page(m, page) == -errno.ENOMEM
    assert not page.flags & PG_locked and (page.count, page.mapcount) == (1, 1)
    assert mapped_page(mm, a) is page and page.data == filled(0)
    assert m.vmstat["pgmigrate_success"] == 0
    check_all(m)


def test_migrate_refuses_non_anonymous_and_free_pages() -> None:
    m = small_machine()
    assert migrate_page(m, m.zone.zero_page) == -errno.EINVAL
    mm, a = process_with_pages(m, "a", [1])
    page = mapped_page(mm, a)
    m.exit(mm)
    assert migrate_page(m, page) == -errno.EINVAL


def test_migrate_range_counts_outcomes() -> None:
    m = small_machine()
    mm, a = process_with_pages(m, "a", [1, 2, 3])
    pages = [mapped_page(mm, a + i * P) for i in range(3)]
    pages[1].count += 1
    assert migrate_range(m, pages) == {"ok": 2, "EAGAIN": 1}
    assert (m.vmstat["pgmigrate_success"], m.vmstat["pgmigrate_fail"]) == (2, 1)
    pages[1].count -= 1
    check_all(m)


# -- Host.migrate and the scenario action ------------------------------------------------------


def test_host_migrate_moves_present_pages_of_the_range() -> None:
    host = Host("keyhole", ram_pages=200, swap_pages=16, check=True)
    host.spawn("a")
    host.mmap("a", "r", 6)
    host.fill("a", "r", "unique", count=3)
    host.read("a", "r", start=3, count=1)  # the zero page: not a frame to move
    digest = host.digest("a", "r")
    # Pages 0-2 present, 3 the zero page, 4-5 untouched.
    assert host.migrate("a", "r") == {"ok": 3}
    assert host.migrate("a", "r", start=1, count=1) == {"ok": 1}
    assert host.migrate("a", "r", start=3) == {}
    assert host.digest("a", "r") == digest


def test_host_migrate_with_ksm_and_swapped_pages() -> None:
    host = Host("keyhole", ram_pages=200, swap_pages=16, check=True)
    for name in "ab":
        host.spawn(name)
        host.mmap(name, "r", 3)
        host.fill(name, "r", "unique")
        host.fill(name, "r", 0x5A, count=1)
    host.scan(2)
    assert host.counters()["pages_sharing"] == 1
    m = host.machine
    mm = host.proc("a").mm
    last = mapped_page(mm, host.region("a", "r").page_address(2))
    page_referenced(m, last)
    m.lru.remove(last)
    last.count += 1
    shrink_page_list(m, [last])
    assert is_swap_pte(mm.pte_get(host.region("a", "r").page_address(2)))
    # The KSM page is refused (keyhole), the swapped-out page is not present: not counted.
    assert host.migrate("a", "r") == {"EBUSY": 1, "ok": 1}
    assert PageKsm(mapped_page(mm, host.region("a", "r").address))


def test_scenario_migrate_action_records_outcomes() -> None:
    scenario = parse_scenario(
        {
            "kernel": "keyhole",
            "machine": {"ram_pages": 400},
            "processes": [
                {"name": "a", "regions": [{"name": "r", "pages": 4, "fill": 7}]},
                {"name": "b", "regions": [{"name": "r", "pages": 4, "fill": "unique"}]},
            ],
            "timeline": [
                {"op": "migrate", "proc": ["b"], "region": ["r"], "start": 1, "count": 2},
                {"op": "scan", "full_scans": 2},
                {"op": "migrate"},
                {"op": "digest"},
            ],
        },
        "migrations",
    )
    result = run_scenario(scenario)
    assert result["ok"]
    assert result["migrations"] == [
        {"after_op": 0, "proc": "b", "region": "r", "ok": 2},
        {"after_op": 2, "proc": "a", "region": "r", "EBUSY": 4},
        {"after_op": 2, "proc": "b", "region": "r", "ok": 4},
    ]


# -- a KSM page mapped twice through one anon_vma ----------------------------------------------


@pytest.mark.parametrize(("kernel", "offlining"), [("v2.6.33", True), ("v6.18", False)])
def test_migrate_ksm_page_shared_with_forked_child(kernel: str, offlining: bool) -> None:
    host = Host(kernel, ram_pages=200, check=True)
    for name in "pq":
        host.spawn(name)
        host.mmap(name, "r", 1)
        host.fill(name, "r", 0x5A)
    host.scan(2)
    host.fork("p", "c")
    host.scan(1)  # c's visit appends its own item to the node
    assert host.counters()["pages_sharing"] == 2
    addr = host.region("p", "r").address
    kpage = mapped_page(host.proc("p").mm, addr)
    assert PageKsm(kpage) and kpage.mapcount == 3
    assert migrate_page(host.machine, kpage, offlining=offlining) == 0
    new = mapped_page(host.proc("c").mm, addr)
    assert (new.mapcount, new.count) == (3, 3)
    check_all(host.machine)
