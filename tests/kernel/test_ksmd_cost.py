"""KsmdCost's calibrated defaults: the table, its source, and what it charges for known work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ksmsim.kernel.ksm import KsmWork
from ksmsim.kernel.ksm_shortcuts import Shortcuts, using_shortcuts
from ksmsim.kernel.ksmd import KsmdCost
from ksmsim.workload.host import Host

RESULT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "ksmd_cost.json"

CALIBRATED = {
    "address": 150,
    "scanned": 110,
    "checksum_jhash2": 2300,
    "checksum_xxhash": 860,
    "memcmp": 140,
    "merge": 1100,
    "kpage_copy": 700,
    "item_alloc": 0,
    "break_cow": 2000,
    "batch": 26000,
}
"""The table of benchmarks/results/ksmd_cost.json (nanoseconds per unit)."""


def known_work() -> KsmWork:
    """Return a batch of work with a different count of every kind."""
    work = KsmWork()
    work.addresses = 1000
    work.scanned = 900
    work.checksums = 300
    work.memcmps = 5000
    work.merges = 200
    work.kpage_copies = 3
    work.items_allocated = 100
    work.break_cows = 2
    return work


ZERO = KsmWork().as_dict()


def test_defaults_are_the_calibrated_table() -> None:
    assert KsmdCost().as_dict() == CALIBRATED


def test_defaults_are_the_table_the_recorded_calibration_fitted() -> None:
    recorded = json.loads(RESULT.read_text())
    assert recorded["benchmark"] == "calibrate_ksmd_cost"
    assert recorded["fit"]["table"] == KsmdCost().as_dict()


def test_charge_of_a_known_batch_on_xxhash() -> None:
    # 26000 + 1000*150 + 900*110 + 300*860 + 5000*140 + 200*1100 + 3*700 + 100*0 + 2*2000
    assert KsmdCost().charge(ZERO, known_work(), "xxhash") == 1_459_100


def test_charge_of_a_known_batch_on_jhash2() -> None:
    # The same batch with its 300 checksums at 2300 ns in place of 860.
    assert KsmdCost().charge(ZERO, known_work(), "jhash2") == 1_459_100 + 300 * (2300 - 860)


def test_charge_counts_only_the_work_since_the_snapshot() -> None:
    before = known_work().as_dict()
    work = known_work()
    work.scanned += 10
    work.memcmps += 7
    assert KsmdCost().charge(before, work, "xxhash") == 26000 + 10 * 110 + 7 * 140


@pytest.mark.parametrize("shortcuts", ["all", "none"])
@pytest.mark.parametrize("kernel", ["v6.18", "keyhole"])
def test_every_checksum_the_kernel_computes_is_counted(kernel: str, shortcuts: str) -> None:
    # The kernel computes a checksum of every page that is not a KSM page at every visit; the
    # model keeps a frame's checksum for its contents, but the work counts each visit's.
    with using_shortcuts(Shortcuts.parse(shortcuts)):
        host = Host(kernel, ram_pages=4096)
        host.set_tunable("pages_to_scan", 1000)
        host.spawn("P")
        host.mmap("P", "r", 64)
        host.fill("P", "r", "unique")
        assert host.scan(3)
        assert host.ksm.work.checksums == 3 * 64
        assert host.counters()["pages_unshared"] == 64
