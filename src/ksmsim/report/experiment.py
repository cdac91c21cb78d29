"""``ksmsim compare``: one scenario under several kernel designs, side by side.

Made for the seed commit's experiment (examples/swap_pressure.toml): for each design it reports
the delay from reclaim unmapping a KSM page to its frame being free (median, p90, max), the KSM
pages reclaim unmapped that were still in memory at the end, free memory and swap-cache size
over time, pages written to swap, out-of-memory events and the final counters.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ksmsim.workload.runner import run_scenario
from ksmsim.workload.scenario import Scenario


@dataclass(slots=True)
class DesignResult:
    """What one kernel design did with the scenario."""

    kernel: str
    result: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Return the experiment's figures for this design."""
        delays = sorted(self.result["ksm_free_delays_s"])
        releases = sorted(self.result["ksm_release_delays_s"])
        last = self.result["snapshots"][-1] if self.result["snapshots"] else {}
        memory = last.get("memory", {})
        series = self.result["timeseries"]
        return {
            "kernel": self.kernel,
            "ksm_pages_released_after_unmap": len(releases),
            "release_delay_median_s": statistics.median(releases) if releases else None,
            "release_delay_p90_s": _percentile(releases, 0.9),
            "release_delay_max_s": releases[-1] if releases else None,
            "ksm_pages_freed_after_unmap": len(delays),
            "free_delay_median_s": statistics.median(delays) if delays else None,
            "free_delay_p90_s": _percentile(delays, 0.9),
            "free_delay_max_s": delays[-1] if delays else None,
            "unmapped_ksm_pages_still_resident": self.result.get("unmapped_ksm_resident", 0),
            "pages_swapped_out": memory.get("pages_swapped_out"),
            "swap_cache_pages_end": memory.get("swap_cache_pages"),
            "swap_cache_pages_max": max((s["swap_cache_pages"] for s in series), default=0),
            "free_pages_min": min((s["free_pages"] for s in series), default=None),
            "oom_events": memory.get("oom_events"),
            "counters": last.get("global", {}),
            "ksmd_cpu_s": self.result["ksmd"]["cpu_s"],
            "ksmd_full_scan_period_s": _scan_period(series),
        }


def _scan_period(series: list[dict[str, Any]]) -> float | None:
    """Return the mean time ksmd took per full scan over the sampled period."""
    if len(series) < 2:
        return None
    scans = series[-1]["full_scans"] - series[0]["full_scans"]
    if scans <= 0:
        return None
    return float(series[-1]["t_s"] - series[0]["t_s"]) / float(scans)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def run_designs(scenario: Scenario, kernels: list[str]) -> list[DesignResult]:
    """Run the scenario once per kernel profile."""
    out = []
    for kernel in kernels:
        result = run_scenario(scenario, kernel=kernel)
        out.append(DesignResult(kernel, result))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_table(designs: list[DesignResult], out: TextIO) -> None:
    """Print the designs' figures as a table, one column per design."""
    rows = [
        ("KSM pages unmapped then freeable", "ksm_pages_released_after_unmap"),
        ("unmap->freeable delay median (s)", "release_delay_median_s"),
        ("unmap->freeable delay p90 (s)", "release_delay_p90_s"),
        ("unmap->freeable delay max (s)", "release_delay_max_s"),
        ("KSM pages freed after unmap", "ksm_pages_freed_after_unmap"),
        ("unmap->free delay median (s)", "free_delay_median_s"),
        ("unmap->free delay p90 (s)", "free_delay_p90_s"),
        ("unmap->free delay max (s)", "free_delay_max_s"),
        ("unmapped KSM pages still resident", "unmapped_ksm_pages_still_resident"),
        ("pages written to swap", "pages_swapped_out"),
        ("swap cache pages, max", "swap_cache_pages_max"),
        ("swap cache pages, end", "swap_cache_pages_end"),
        ("free pages, min", "free_pages_min"),
        ("out-of-memory events", "oom_events"),
        ("ksmd CPU (s)", "ksmd_cpu_s"),
        ("ksmd full-scan period (s)", "ksmd_full_scan_period_s"),
    ]
    summaries = [d.summary() for d in designs]
    width = max(len(label) for label, _ in rows) + 2
    out.write(" " * width + "".join(f"{s['kernel']:>14}" for s in summaries) + "\n")
    for label, key in rows:
        out.write(f"{label:<{width}}" + "".join(f"{_fmt(s[key]):>14}" for s in summaries) + "\n")
    for name in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile"):
        out.write(
            f"{name + ' (end)':<{width}}"
            + "".join(f"{_fmt(s['counters'].get(name)):>14}" for s in summaries)
            + "\n"
        )


def plot(designs: list[DesignResult], path: str) -> None:
    """Plot free memory and swap-cache size over time, and the delay distribution, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'ksmsim[plot]'") from None
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 9), dpi=110)
    for d in designs:
        series = d.result["timeseries"]
        t = [s["t_s"] for s in series]
        ax1.plot(t, [s["free_pages"] for s in series], label=d.kernel)
        ax2.plot(t, [s["swap_cache_pages"] for s in series], label=d.kernel)
        delays = sorted(d.result["ksm_free_delays_s"])
        if delays:
            ax3.step(delays, [(i + 1) / len(delays) for i in range(len(delays))], label=d.kernel)
    ax1.set_ylabel("free pages")
    ax2.set_ylabel("swap cache pages")
    ax2.set_xlabel("simulated time (s)")
    ax3.set_xlabel("delay from unmap to free (s)")
    ax3.set_ylabel("fraction of KSM pages")
    for ax in (ax1, ax2, ax3):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
