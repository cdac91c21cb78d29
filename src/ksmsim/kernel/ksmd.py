"""ksmd on the simulated clock: ksm_scan_thread() and a cost model for its CPU time (mm/ksm.c).

ksmd runs a batch of ``pages_to_scan`` pages, then sleeps ``sleep_millisecs`` rounded up to
whole jiffies, as schedule_timeout(msecs_to_jiffies()) does. The batch itself takes the CPU
time the cost model charges for the work it did, so a run reports what ksmd would cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from ksmsim.kernel.ksm import Ksm, KsmWork
from ksmsim.kernel.ksm_shortcuts import pause_gc

if TYPE_CHECKING:
    from ksmsim.kernel.machine import Machine

MSEC_PER_SEC: Final = 1000


MAX_JIFFY_OFFSET: Final = ((1 << 63) - 1 >> 1) - 1
"""What msecs_to_jiffies() gives for a negative int: "sleep forever" on 64-bit."""


def msecs_to_jiffies(msecs: int, hz: int) -> int:
    """Convert milliseconds to jiffies, rounding up: msecs_to_jiffies(). A value that is
    negative as a C int (2**31 and above) means MAX_JIFFY_OFFSET."""
    if msecs & 0xFFFFFFFF >= 1 << 31:
        return MAX_JIFFY_OFFSET
    return (msecs * hz + MSEC_PER_SEC - 1) // MSEC_PER_SEC


@dataclass(frozen=True, slots=True)
class KsmdCost:
    """Nanoseconds of ksmd CPU time charged per unit of work, calibrated on Linux 6.18.

    Fitted on 2026-11-27 by ``benchmarks/calibrate_ksmd_cost.py`` against the ksmd of this
    project's machine (Linux 6.18.44, xxhash checksums, 2 vCPU x86_64, shared with other work;
    output in ``benchmarks/results/ksmd_cost.json``): 19 workloads, 68 passes, each run five
    times with ``ksmsim real``; the kernel's median ksmd runtime per pass fitted by non-negative
    least squares (relative error) to the model's work counts of the same pass, rounded to two
    significant figures. Per pass this table is off by a median of 10% and at worst 41%; per
    workload (all its passes) by at most 16%.

    ``item_alloc`` fitted to 0: an rmap_item's allocation is not separable from the first pass's
    checksum and page visit, which carry it. ``kpage_copy`` and ``break_cow`` are work ksmd does
    not do in any calibration workload on 6.18, so they keep their earlier estimates. There is
    no jhash2 kernel here: ``checksum_jhash2`` is the fitted xxhash cost (mostly reading a cold
    page, which jhash2 pays alike) plus what jhash2's arithmetic adds over XXH64 on a warm page,
    timed on this machine in C (about 1,500 ns). ``checksums`` counts every calc_checksum() call, as
    the kernel computes one at each, although the model keeps a frame's checksum for its
    contents and computes it only when they change.
    """

    address: int = 150
    scanned: int = 110
    checksum_jhash2: int = 2300
    checksum_xxhash: int = 860
    memcmp: int = 140
    merge: int = 1100
    kpage_copy: int = 700
    item_alloc: int = 0
    break_cow: int = 2000
    batch: int = 26000

    def charge(self, before: dict[str, int], after: KsmWork, checksum: str) -> int:
        """Return the CPU time of the work done between two snapshots of ksmd's counts."""
        per_csum = self.checksum_jhash2 if checksum == "jhash2" else self.checksum_xxhash
        # The differences read straight off ``after`` (ksmd charges this every batch).
        return (
            self.batch
            + (after.addresses - before["addresses"]) * self.address
            + (after.scanned - before["scanned"]) * self.scanned
            + (after.checksums - before["checksums"]) * per_csum
            + (after.memcmps - before["memcmps"]) * self.memcmp
            + (after.merges - before["merges"]) * self.merge
            + (after.kpage_copies - before["kpage_copies"]) * self.kpage_copy
            + (after.items_allocated - before["items_allocated"]) * self.item_alloc
            + (after.break_cows - before["break_cows"]) * self.break_cow
        )

    def as_dict(self) -> dict[str, int]:
        """Return the cost table by name."""
        return asdict(self)


class Ksmd:
    """The ksmd kernel thread on the machine's clock."""

    def __init__(self, machine: Machine, cost: KsmdCost | None = None) -> None:
        assert machine.ksm is not None
        self.machine = machine
        self.ksm: Ksm = machine.ksm
        self.cost = cost or KsmdCost()
        self.cpu_ns = 0
        self.batches = 0
        self._batch_start: dict[str, int] | None = None
        self.ksm.advisor.cpu_clock = self.cpu_clock_ns

    def cpu_clock_ns(self) -> int:
        """Return ksmd's CPU time so far, including the batch in progress."""
        if self._batch_start is None:
            return self.cpu_ns
        return self.cpu_ns + self.cost.charge(
            self._batch_start, self.ksm.work, self.ksm.profile.checksum
        )

    def batch(self) -> int:
        """Run one batch if ksmd should run, advance the clock by its CPU time, return that."""
        ksm = self.ksm
        if not ksm.ksmd_should_run():
            return 0
        before = self._batch_start = ksm.work.as_dict()
        with pause_gc(ksm):
            ksm.ksm_do_scan(ksm.ksm_thread_pages_to_scan)
        self._batch_start = None
        self.machine.kswapd()
        spent = self.cost.charge(before, ksm.work, ksm.profile.checksum)
        self.cpu_ns += spent
        self.batches += 1
        self.machine.clock_ns += spent
        return spent

    def sleep(self) -> None:
        """Advance the clock by ksmd's sleep between batches."""
        hz = self.machine.config.hz
        jiffies = msecs_to_jiffies(self.ksm.ksm_thread_sleep_millisecs, hz)
        self.machine.clock_ns += jiffies * (1_000_000_000 // hz)

    def run_full_scans(self, n: int) -> bool:
        """Run batches until ``n`` more passes complete; False if ksmd had nothing to scan."""
        target = self.ksm.ksm_scan.seqnr + n
        while self.ksm.ksm_scan.seqnr < target:
            # With pages_to_scan 0 ksmd wakes and sleeps forever without scanning a page.
            if not self.ksm.ksmd_should_run() or not self.ksm.ksm_thread_pages_to_scan:
                return False
            self.batch()
            if self.ksm.ksm_scan.seqnr < target:
                self.sleep()
        return True

    def run_for(self, seconds: float, sample: Callable[[], None] | None = None) -> None:
        """Let ksmd run at its tunables for ``seconds`` of simulated time, calling ``sample``
        after every batch (or every jiffy while ksmd has nothing to do)."""
        end = self.machine.clock_ns + int(seconds * 1_000_000_000)
        hz = self.machine.config.hz
        while self.machine.clock_ns < end:
            if self.ksm.ksmd_should_run() and self.ksm.ksm_thread_pages_to_scan:
                self.batch()
                if sample is not None:
                    sample()
                self.sleep()
            else:
                self.machine.clock_ns += 1_000_000_000 // hz
                self.machine.kswapd()
                if sample is not None:
                    sample()
