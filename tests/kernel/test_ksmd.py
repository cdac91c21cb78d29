"""Tests of ksmsim.kernel.ksmd: ksm_scan_thread() on the simulated clock and its cost model."""

from __future__ import annotations

from dataclasses import fields

import pytest

from ksmsim.kernel.ksmd import KsmdCost, msecs_to_jiffies
from ksmsim.workload.host import Host

NSEC_PER_MSEC = 1_000_000

# Only the fixed per-batch charge: a batch then costs exactly 1000 ns.
FLAT = KsmdCost(**{f.name: 0 for f in fields(KsmdCost)} | {"batch": 1000})


def make_host(*, hz: int = 250, cost: KsmdCost | None = None, pages: int = 10) -> Host:
    host = Host("keyhole", ram_pages=4096, hz=hz, cost=cost, check=True)
    if pages:
        host.spawn("P")
        host.mmap("P", "r", pages)
        host.fill("P", "r", "unique")
    return host


# -- msecs_to_jiffies ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hz", "msecs", "jiffies"),
    [
        # HZ=250: 4 ms per jiffy, rounded up.
        (250, 0, 0),
        (250, 1, 1),
        (250, 3, 1),
        (250, 4, 1),
        (250, 5, 2),
        (250, 8, 2),
        (250, 9, 3),
        (250, 20, 5),
        (250, 21, 6),
        (250, 1000, 250),
        # HZ=100: 10 ms per jiffy.
        (100, 0, 0),
        (100, 1, 1),
        (100, 10, 1),
        (100, 11, 2),
        (100, 20, 2),
        (100, 21, 3),
        (100, 999, 100),
        (100, 1000, 100),
        # HZ=1000: one jiffy per millisecond.
        (1000, 0, 0),
        (1000, 1, 1),
        (1000, 20, 20),
        (1000, 12345, 12345),
    ],
)
def test_msecs_to_jiffies_rounds_up(hz: int, msecs: int, jiffies: int) -> None:
    assert msecs_to_jiffies(msecs, hz) == jiffies


@pytest.mark.parametrize("hz", [100, 250, 1000])
def test_msecs_to_jiffies_matches_the_kernel_formula_for_divisor_hz(hz: int) -> None:
    per = 1000 // hz  # HZ <= MSEC_PER_SEC and MSEC_PER_SEC % HZ == 0
    for m in range(0, 3000, 7):
        assert msecs_to_jiffies(m, hz) == (m + per - 1) // per


@pytest.mark.parametrize(
    ("hz", "sleep_ms", "slept_ns"),
    [(250, 20, 20), (250, 21, 24), (100, 21, 30), (1000, 21, 21), (250, 0, 0)],
)
def test_sleep_advances_the_clock_by_whole_jiffies(hz: int, sleep_ms: int, slept_ns: int) -> None:
    host = make_host(hz=hz, pages=0)
    host.set_tunable("sleep_millisecs", sleep_ms)
    host.ksmd.sleep()
    assert host.machine.clock_ns == slept_ns * NSEC_PER_MSEC


# -- batches and the clock --------------------------------------------------------------------
def test_batch_advances_the_clock_by_its_cost() -> None:
    host = make_host(cost=FLAT)
    host.sysfs.write("run", 1)
    assert host.ksmd.batch() == 1000
    assert host.machine.clock_ns == 1000
    assert host.ksmd.cpu_ns == 1000 and host.ksmd.batches == 1


def test_batch_does_nothing_when_ksmd_should_not_run() -> None:
    host = make_host(cost=FLAT)
    assert host.ksmd.batch() == 0  # run=0
    host2 = make_host(cost=FLAT, pages=0)
    host2.sysfs.write("run", 1)
    assert host2.ksmd.batch() == 0  # nothing registered
    for h in (host, host2):
        assert h.machine.clock_ns == 0 and h.ksmd.batches == 0 and h.ksmd.cpu_ns == 0
        assert h.ksm.work.scanned == 0


def test_full_scans_advance_the_clock_by_batches_plus_sleeps() -> None:
    host = make_host(cost=FLAT, pages=10)
    host.set_tunable("pages_to_scan", 3)
    host.set_tunable("sleep_millisecs", 20)
    assert host.scan(1)
    # 3 + 3 + 3 + (1 and the end of the pass): four batches and three sleeps in between.
    assert host.ksmd.batches == 4
    assert host.machine.clock_ns == 4 * 1000 + 3 * 20 * NSEC_PER_MSEC
    assert host.counters()["full_scans"] == 1
    # The second pass starts after a sleep: 10 pages + the end of pass = 4 batches again.
    assert host.scan(1)
    assert host.ksmd.batches == 8
    assert host.machine.clock_ns == 8 * 1000 + 6 * 20 * NSEC_PER_MSEC


def test_full_scans_with_a_big_batch_take_one_batch_each() -> None:
    host = make_host(cost=FLAT, hz=100, pages=10)
    host.set_tunable("pages_to_scan", 1000)
    host.set_tunable("sleep_millisecs", 15)  # 2 jiffies at HZ=100: 20 ms
    assert host.scan(3)
    assert host.ksmd.batches == 3
    assert host.machine.clock_ns == 3 * 1000 + 2 * 20 * NSEC_PER_MSEC


def test_run_full_scans_false_without_a_registered_mm() -> None:
    host = make_host(cost=FLAT, pages=0)
    assert host.scan(1) is False
    host.sysfs.write("run", 1)
    assert host.ksmd.run_full_scans(2) is False
    assert host.machine.clock_ns == 0
    assert host.counters()["full_scans"] == 0


def test_run_full_scans_false_when_stopped() -> None:
    host = make_host(cost=FLAT)
    assert host.ksmd.run_full_scans(1) is False  # run=0
    assert host.machine.clock_ns == 0


def test_run_full_scans_false_when_the_last_mm_leaves_midway() -> None:
    host = make_host(cost=FLAT, pages=4)
    host.set_tunable("pages_to_scan", 1000)
    assert host.scan(1)
    host.munmap("P", "r")
    # The next pass finds no mergeable area and drops P; the one after has nothing to scan.
    assert host.scan(3) is False
    assert host.counters()["full_scans"] == 2
    assert list(host.ksm.slots()) == []


def test_run_full_scans_zero_is_true_and_free() -> None:
    host = make_host(cost=FLAT, pages=0)
    host.sysfs.write("run", 1)
    assert host.ksmd.run_full_scans(0) is True
    assert host.machine.clock_ns == 0


def test_run_for_without_work_ticks_the_clock_exactly() -> None:
    for hz in (100, 250, 1000):
        host = make_host(cost=FLAT, hz=hz, pages=0)
        host.run(1.0)
        assert host.machine.clock_ns == 1_000_000_000
        assert host.sim_time_s == 1.0
        assert host.ksmd.batches == 0
        assert host.counters()["run"] == 0


def test_run_for_runs_batches_and_sleeps_until_the_time_is_up() -> None:
    host = make_host(cost=FLAT, pages=10)
    host.set_tunable("pages_to_scan", 5)
    host.set_tunable("sleep_millisecs", 20)
    host.run(0.1)
    # Each round is one batch (1000 ns) and one 20 ms sleep; the loop stops at >= 100 ms.
    assert host.ksmd.batches == 5
    assert host.machine.clock_ns == 5 * (1000 + 20 * NSEC_PER_MSEC)
    # 10 pages at 5 per batch plus the end-of-pass batch: passes complete every 3 batches.
    assert host.counters()["full_scans"] == 1
    host.run(0.1)
    assert host.machine.clock_ns >= 200 * NSEC_PER_MSEC
    assert host.ksmd.batches == 10
    assert host.counters()["full_scans"] == 3


# -- the cost model ---------------------------------------------------------------------------
def test_batch_cost_is_the_charge_of_the_work_done() -> None:
    cost = KsmdCost()
    host = make_host(cost=cost, pages=10)
    host.sysfs.write("run", 1)
    before = host.ksm.work.as_dict()
    spent = host.ksmd.batch()  # pass 1 of ten unique pages, in one batch
    after = host.ksm.work.as_dict()
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {
        "addresses": 10,
        "scanned": 10,
        "checksums": 10,
        "memcmps": 0,
        "merges": 0,
        "kpage_copies": 0,
        "items_allocated": 10,
        "break_cows": 0,
    }
    assert spent == (
        cost.batch
        + 10 * cost.address
        + 10 * cost.scanned
        + 10 * cost.checksum_jhash2
        + 10 * cost.item_alloc
    )
    assert host.machine.clock_ns == spent == host.ksmd.cpu_ns


def test_charge_weights_every_kind_of_work() -> None:
    cost = KsmdCost(
        address=1,
        scanned=10,
        checksum_jhash2=100,
        checksum_xxhash=7,
        memcmp=1_000,
        merge=10_000,
        kpage_copy=100_000,
        item_alloc=1_000_000,
        break_cow=10_000_000,
        batch=100_000_000,
    )
    host = make_host(cost=cost, pages=0)
    work = host.ksm.work
    before = work.as_dict()
    for name in before:
        setattr(work, name, getattr(work, name) + 1)
    assert cost.charge(before, work, "jhash2") == 111_111_111
    assert cost.charge(before, work, "xxhash") == 111_111_111 - 100 + 7
    assert cost.as_dict()["batch"] == 100_000_000


def run_workload(cost: KsmdCost | None = None) -> tuple[int, int, int, dict[str, int]]:
    host = Host("keyhole", ram_pages=4096, cost=cost)
    host.set_tunable("pages_to_scan", 7)
    for name in ("A", "B", "C"):
        host.spawn(name)
        host.mmap(name, "r", 12)
        host.fill(name, "r", "repeat:3")
        host.mmap(name, "u", 3)
        host.fill(name, "u", "unique")
    assert host.scan(2)
    host.write("A", "r", 9, stride=2)
    host.run(0.5)
    return host.machine.clock_ns, host.ksmd.cpu_ns, host.ksmd.batches, host.counters()


def test_cost_of_a_run_is_deterministic() -> None:
    first = run_workload()
    assert first == run_workload()
    assert first[1] > 0 and first[2] > 0
    assert first[3]["pages_sharing"] > 0


def test_cpu_time_is_the_sum_of_batch_costs() -> None:
    host = make_host(pages=10)
    host.set_tunable("pages_to_scan", 4)
    host.sysfs.write("run", 1)
    total = sum(host.ksmd.batch() for _ in range(9))
    assert host.ksmd.cpu_ns == total
    assert host.machine.clock_ns == total
    assert host.ksmd.batches == 9


# -- edge cases once wrong in the model --------------------------------------------------------------
MAX_JIFFY_OFFSET = ((2**63 - 1) >> 1) - 1  # include/linux/jiffies.h on 64-bit


@pytest.mark.parametrize("hz", [100, 250, 1000])
def test_msecs_to_jiffies_of_a_negative_int_is_max_jiffy_offset(hz: int) -> None:
    assert msecs_to_jiffies(2**31, hz) == MAX_JIFFY_OFFSET


@pytest.mark.timeout(3, method="signal")
def test_run_full_scans_gives_up_when_no_pass_can_complete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = make_host(cost=FLAT, pages=2)
    host.set_tunable("pages_to_scan", 0)
    sleeps = 0
    real_sleep = host.ksmd.sleep

    def bounded_sleep() -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps > 1000:
            raise RuntimeError("1000 batches of pages_to_scan=0 and still scanning")
        real_sleep()

    monkeypatch.setattr(host.ksmd, "sleep", bounded_sleep)
    assert host.scan(1) is False
