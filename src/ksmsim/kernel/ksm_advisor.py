"""KSM's scan-time advisor: retune pages_to_scan after every pass (mm/ksm.c, 6.8+).

The advisor aims for a whole pass in ``advisor_target_scan_time`` seconds, smoothing its
changes with an exponentially weighted moving average and capping ksmd's CPU share between
10% and ``advisor_max_cpu``. Time and ksmd's CPU time are the model's simulated ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ksmsim.kernel.ksm import Ksm

DEFAULT_PAGES_TO_SCAN: Final = 100
KSM_ADVISOR_MIN_CPU: Final = 10
EWMA_WEIGHT: Final = 30


def ewma(prev: int, curr: int) -> int:
    """Return the advisor's exponentially weighted moving average: ewma()."""
    return ((100 - EWMA_WEIGHT) * prev + EWMA_WEIGHT * curr) // 100


class KsmAdvisor:
    """The advisor's tunables and context (struct advisor_ctx)."""

    def __init__(self, ksm: Ksm) -> None:
        self.ksm = ksm
        self.mode = "none"
        self.max_cpu = 70
        self.min_pages_to_scan = 500
        self.max_pages_to_scan = 30000
        self.target_scan_time = 200
        self.start_scan_ns = 0
        self.scan_time = 0
        self.change = 0
        self.cpu_time_ns = 0
        self.cpu_clock: Callable[[], int] = lambda: 0
        """ksmd's CPU time so far in ns (task_sched_runtime()); the ksmd thread sets it."""

    def set_mode(self, mode: str) -> None:
        """Switch the advisor on (``scan-time``) or off, resetting defaults: set_advisor_defaults()."""
        if mode == self.mode:
            return
        self.mode = mode
        if mode == "none":
            self.ksm.ksm_thread_pages_to_scan = DEFAULT_PAGES_TO_SCAN
        else:
            self.start_scan_ns = self.scan_time = self.change = self.cpu_time_ns = 0
            self.ksm.ksm_thread_pages_to_scan = self.min_pages_to_scan

    def advisor_start_scan(self) -> None:
        """Note when a pass starts: advisor_start_scan()."""
        if self.mode == "scan-time":
            self.start_scan_ns = self.ksm.machine.clock_ns

    def advisor_stop_scan(self) -> None:
        """Retune pages_to_scan at the end of a pass: advisor_stop_scan()."""
        if self.mode == "scan-time":
            self.scan_time_advisor()

    def scan_time_advisor(self) -> None:
        """Compute the next pages_to_scan from the last pass: scan_time_advisor()."""
        ksm = self.ksm
        elapsed_ms = (ksm.machine.clock_ns - self.start_scan_ns) // 1_000_000
        scan_time = elapsed_ms // 1000 or 1
        cpu_time = self.cpu_clock()
        cpu_time_diff_ms = (cpu_time - self.cpu_time_ns) // 1_000_000
        cpu_percent = (cpu_time_diff_ms * 100) // (scan_time * 1000) or 1
        last_scan_time = self.scan_time or scan_time
        factor = self.target_scan_time * 100 // scan_time or 1
        change = scan_time * 100 // last_scan_time or 1
        change = ewma(self.change, change)
        pages = ksm.ksm_thread_pages_to_scan * 100 // factor
        pages = pages * change // 100
        per_page_cost = ksm.ksm_thread_pages_to_scan // cpu_percent or 1
        pages = min(pages, per_page_cost * self.max_cpu)
        pages = max(pages, per_page_cost * KSM_ADVISOR_MIN_CPU)
        pages = min(pages, self.max_pages_to_scan)
        self.change = change
        self.scan_time = scan_time
        self.cpu_time_ns = cpu_time
        ksm.ksm_thread_pages_to_scan = pages
