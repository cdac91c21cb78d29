"""The v6.18 profile's features: checksum-first order, restarting walks, in-place merges, stable
node chains, KSM zero pages, smart scan, the advisor, merge-any and 6.x sysfs parsing."""

from __future__ import annotations

import errno

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.ksm_sysfs import SysfsError
from ksmsim.workload.host import Host, HostError


def host(**tunables: int) -> Host:
    h = Host("v6.18", ram_pages=8192, check=True)
    h.set_tunable("pages_to_scan", 100000)
    for name, value in tunables.items():
        h.set_tunable(name, value)
    return h


def counts(h: Host) -> tuple[int, int, int, int]:
    c = h.counters()
    return c["pages_shared"], c["pages_sharing"], c["pages_unshared"], c["pages_volatile"]


def proc(h: Host, name: str, pages: int, fill: int | str, region: str = "r") -> None:
    if name not in h.procs:
        h.spawn(name)
    h.mmap(name, region, pages)
    h.fill(name, region, fill)


def test_t1_needs_two_passes_and_merges_in_place() -> None:
    h = host()
    proc(h, "A", 1, ord("X"))
    proc(h, "B", 1, ord("X"))
    free_before = h.memory()["free_pages"]
    h.scan(1)
    assert counts(h) == (0, 0, 0, 2)
    h.scan(1)
    assert counts(h) == (1, 1, 0, 0)
    # The scanned page became the KSM page: no frame was allocated, one was freed.
    assert h.memory()["free_pages"] == free_before + 1
    assert h.memory()["ksm_pages"] == 1


def test_late_registrant_needs_two_visits_checksum_first() -> None:
    h = host()
    proc(h, "P", 10, ord("X"))
    h.scan(2)
    assert counts(h) == (1, 9, 0, 0)
    proc(h, "C", 1, ord("X"))
    h.scan(1)
    assert counts(h) == (1, 9, 0, 1), "6.11+: even a page equal to a KSM page waits a pass"
    h.scan(1)
    assert counts(h) == (1, 10, 0, 0)


def test_t5_stale_node_restarts_the_walk() -> None:
    h = host()
    proc(h, "P1", 2, ord("X"), "x")
    proc(h, "P2", 2, ord("W"), "w")
    h.scan(2)
    assert counts(h) == (2, 2, 0, 0)
    proc(h, "P1", 1, ord("W"), "n")  # mapped lower: scanned before P1's x pages
    h.scan(1)  # its first visit only records the checksum
    assert counts(h) == (2, 2, 0, 1)
    h.fill("P1", "x", ord("Y"))  # every mapper of X copies: X's page is freed
    h.scan(1)
    # The W page's search met stale X at the root, pruned it, restarted and found W
    # (keyhole gives up instead); then the Y pages' checksums are new: volatile.
    assert counts(h) == (1, 2, 0, 2)
    h.scan(1)
    assert counts(h) == (2, 3, 0, 0)


def test_chains_of_dups_at_max_page_sharing() -> None:
    h = host(max_page_sharing=4)
    proc(h, "a", 7, ord("q"))
    proc(h, "b", 7, ord("q"))
    h.scan(3)
    c = h.counters()
    # 14 mappings, at most 4 per KSM page: four dups (4+4+4+2) under one chain.
    assert (c["pages_shared"], c["pages_sharing"]) == (4, 10)
    assert (c["stable_node_chains"], c["stable_node_dups"]) == (1, 4)
    assert all(n.rmap_hlist_len <= 4 for n in h.ksm.stable_nodes())


def test_chain_collapses_when_one_dup_is_left() -> None:
    h = host(max_page_sharing=2)
    proc(h, "a", 2, ord("q"))
    proc(h, "b", 2, ord("q"))
    h.scan(2)
    c = h.counters()
    assert (c["pages_shared"], c["pages_sharing"], c["stable_node_dups"]) == (2, 2, 2)
    h.exit("b")
    h.write("a", "r", 1, start=0, count=1)
    h.scan(3)
    c = h.counters()
    assert c["stable_node_chains"] == 0 and c["stable_node_dups"] == 0


def test_max_page_sharing_needs_an_empty_stable_tree() -> None:
    h = host()
    proc(h, "a", 4, ord("q"))
    h.scan(2)
    with pytest.raises(SysfsError) as err:
        h.set_tunable("max_page_sharing", 8)
    assert err.value.errno == errno.EBUSY
    h.unmerge_all()
    h.set_tunable("max_page_sharing", 8)
    assert h.sysfs.read_int("max_page_sharing") == 8


def test_zero_pages_merge_with_the_zero_page() -> None:
    h = host(use_zero_pages=1)
    proc(h, "a", 10, "zero")
    h.scan(2)
    c = h.counters()
    assert c["ksm_zero_pages"] == 10
    assert (c["pages_shared"], c["pages_sharing"]) == (0, 0)
    assert c["general_profit"] == 10 * 4096 - 10 * 64
    stat = h.proc_counters()["a"]
    assert stat["ksm_zero_pages"] == 10 and stat["ksm_process_profit"] == 10 * 4096 - 10 * 64
    h.scan(1)  # the zero-page ptes are not anonymous: their items are pruned
    assert h.counters()["pages_volatile"] == 0 and h.proc_counters()["a"]["ksm_rmap_items"] == 0
    h.write("a", "r", 1, count=3)  # a write copies: three KSM zero pages fewer
    assert h.counters()["ksm_zero_pages"] == 7
    h.fork("a", "child")  # the child's inherited KSM zero pages are counted too
    assert h.counters()["ksm_zero_pages"] == 14
    h.madvise("child", "r", "unmergeable")
    assert h.counters()["ksm_zero_pages"] == 7
    h.exit("a")
    assert h.counters()["ksm_zero_pages"] == 0
    check_all(h.machine)


def test_smart_scan_skip_pattern() -> None:
    """Notes 13.4: scan visits 1-4, skip 5, scan 6, skip 7-8, scan 9, skip 10-13, scan 14, ..."""
    h = host()
    proc(h, "a", 1, "unique")
    seen = []
    scanned = 0
    for _ in range(24):
        h.scan(1)
        now = h.counters()["pages_scanned"]
        seen.append("S" if now > scanned else "k")
        scanned = now
    assert "".join(seen) == "SSSSkSkkSkkkkSkkkkkkkkSk"
    assert h.counters()["pages_skipped"] == seen.count("k")


def test_smart_scan_off_scans_every_pass() -> None:
    h = host(smart_scan=0)
    proc(h, "a", 3, "unique")
    h.scan(10)
    c = h.counters()
    assert (c["pages_scanned"], c["pages_skipped"]) == (30, 0)


def test_per_process_ksm_stat() -> None:
    h = host()
    proc(h, "a", 4, ord("q"))
    proc(h, "b", 4, ord("q"))
    h.spawn("idle")
    h.scan(2)
    st = h.proc_counters()
    assert st["a"]["ksm_merging_pages"] == 4 and st["b"]["ksm_merging_pages"] == 4
    assert st["a"]["ksm_rmap_items"] == 4
    assert st["a"]["ksm_process_profit"] == 4 * 4096 - 4 * 64
    assert st["a"]["ksm_mergeable"] == "yes" and st["idle"]["ksm_mergeable"] == "no"
    assert st["a"]["ksm_merge_any"] == "no"


def test_prctl_memory_merge() -> None:
    h = host()
    h.spawn("a")
    h.mmap("a", "r", 4, mergeable=False)
    h.fill("a", "r", ord("q"))
    h.prctl_memory_merge("a", True)
    h.mmap("a", "later", 4, mergeable=False)
    h.fill("a", "later", ord("q"))
    assert h.proc_counters()["a"]["ksm_merge_any"] == "yes"
    h.scan(2)
    assert h.counters()["pages_sharing"] == 7
    h.prctl_memory_merge("a", False)
    assert h.proc_counters()["a"]["ksm_mergeable"] == "no"
    assert h.memory()["ksm_pages"] == 0
    with pytest.raises(HostError):
        Host("keyhole").prctl_memory_merge("x", True)


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("pages_to_scan", "+5", 5),
        ("pages_to_scan", "7\n", 7),
        ("smart_scan", "off", 0),
        ("smart_scan", "on", 1),
        ("smart_scan", "Yes", 1),
        ("smart_scan", "nope", 0),
        ("use_zero_pages", "1", 1),
        ("stable_node_chains_prune_millisecs", "0", 0),
        ("merge_across_nodes", "1", 1),
    ],
)
def test_kstrtox_accepts(name: str, text: str, value: int) -> None:
    h = host()
    h.sysfs.write(name, text)
    assert h.sysfs.read_int(name) == value


@pytest.mark.parametrize(
    ("name", "text", "err"),
    [
        ("pages_to_scan", "4294967296", errno.EINVAL),
        ("pages_to_scan", " 5", errno.EINVAL),
        ("pages_to_scan", "5 ", errno.EINVAL),
        ("pages_to_scan", "-1", errno.EINVAL),
        ("max_page_sharing", "1", errno.EINVAL),
        ("max_page_sharing", "-3", errno.EINVAL),
        ("max_page_sharing", "2147483648", errno.ERANGE),
        ("max_page_sharing", "x", errno.EINVAL),
        ("merge_across_nodes", "2", errno.EINVAL),
        ("smart_scan", "maybe", errno.EINVAL),
        ("use_zero_pages", "", errno.EINVAL),
        ("run", "3", errno.EINVAL),
        ("advisor_mode", "fast", errno.EINVAL),
        ("advisor_target_scan_time", "0", errno.EINVAL),
        ("pages_scanned", "1", errno.EACCES),
    ],
)
def test_kstrtox_refuses(name: str, text: str, err: int) -> None:
    h = host()
    with pytest.raises(SysfsError) as exc:
        h.sysfs.write(name, text)
    assert exc.value.errno == err


def test_keyhole_sysfs_has_no_plus_sign() -> None:
    h = Host("keyhole")
    with pytest.raises(SysfsError):
        h.sysfs.write("pages_to_scan", "+5")
    assert "pages_scanned" not in h.sysfs.files()


def test_v618_sysfs_files() -> None:
    h = host()
    assert set(h.sysfs.files()) == {
        "advisor_max_cpu", "advisor_max_pages_to_scan", "advisor_min_pages_to_scan",
        "advisor_mode", "advisor_target_scan_time", "full_scans", "general_profit",
        "ksm_zero_pages", "max_page_sharing", "merge_across_nodes", "pages_scanned",
        "pages_shared", "pages_sharing", "pages_skipped", "pages_to_scan", "pages_unshared",
        "pages_volatile", "run", "sleep_millisecs", "smart_scan", "stable_node_chains",
        "stable_node_chains_prune_millisecs", "stable_node_dups", "use_zero_pages",
    }  # fmt: skip
    assert h.sysfs.read("advisor_mode") == "[none] scan-time\n"


def test_advisor_scan_time() -> None:
    h = host()
    proc(h, "a", 64, "unique")
    h.sysfs.write("advisor_mode", "scan-time")
    assert h.sysfs.read("advisor_mode") == "none [scan-time]\n"
    assert h.sysfs.read_int("pages_to_scan") == 500
    with pytest.raises(SysfsError):
        h.sysfs.write("pages_to_scan", "100")
    h.scan(2)
    pages = h.sysfs.read_int("pages_to_scan")
    assert 1 <= pages <= 30000
    h.sysfs.write("advisor_mode", "none")
    assert h.sysfs.read_int("pages_to_scan") == 100
