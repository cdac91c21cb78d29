"""Predictions on the terminal: one table per prediction, in units an operator reads."""

from __future__ import annotations

import math
from typing import Final

from ksmsim.workload.predict import Prediction

__all__ = ["format_bytes", "format_prediction", "format_seconds", "format_share"]

PAGE_SIZE: Final = 4096


def format_bytes(n: float) -> str:
    """Return a byte count in KiB, MiB or GiB (binary units), three significant digits."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{sign}{_sig(n / size)} {unit}"
    return f"{sign}{int(n)} B"


def _sig(x: float) -> str:
    """Return x with three significant digits (no exponent)."""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def format_seconds(s: float | None) -> str:
    """Return a duration in s, min or h; ``never`` for None."""
    if s is None:
        return "never"
    if s < 120:
        return f"{s:.3g} s" if s < 10 else f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_share(share: float) -> str:
    """Return a fraction as a percentage with two significant digits (at least)."""
    if share == 0:
        return "0%"
    pct = share * 100
    digits = max(0, 1 - math.floor(math.log10(abs(pct))))
    return f"{pct:.{min(digits, 4)}f}%"


def format_prediction(p: Prediction) -> str:
    """Return the prediction as an aligned two-column table (ends with a newline)."""
    t = p.tunables
    setting = f"pages_to_scan={t.get('pages_to_scan')} sleep_millisecs={t.get('sleep_millisecs')}"
    share_of_pages = p.saved_pages / p.pages if p.pages else 0.0
    rows: list[tuple[str, str]] = [
        ("workload", f"{p.workload} ({p.kind}), kernel {p.kernel}, {setting}"),
        ("pages", f"{p.pages:,} ({format_bytes(p.pages * PAGE_SIZE)})"),
        (
            "saved",
            f"{p.saved_pages:,} pages = {format_bytes(p.saved_bytes)} "
            f"({format_share(share_of_pages)} of the pages)",
        ),
        (
            "pages_shared / _sharing",
            f"{p.pages_shared:,} / {p.pages_sharing:,}"
            + (f"  (ksm_zero_pages {p.ksm_zero_pages:,})" if p.ksm_zero_pages else ""),
        ),
        ("pages_unshared / _volatile", f"{p.pages_unshared:,} / {p.pages_volatile:,}"),
        (
            "time to 50% / 90% / 99%",
            " / ".join(format_seconds(x) for x in (p.t50_s, p.t90_s, p.t99_s)),
        ),
        (
            "settled",
            f"after {format_seconds(p.converged_s)}, {p.full_scans} full scans"
            + ("" if p.converged else " (NOT settled: the run hit its limit)"),
        ),
        ("ksmd CPU until settled", f"{p.ksmd_cpu_s:.3g} s"),
        ("ksmd CPU, steady state", f"{format_share(p.ksmd_cpu_share)} of one CPU"),
        ("volatile fraction", format_share(p.volatile_fraction)),
        (
            "rmap_items",
            f"{p.rmap_items:,} ({format_bytes(p.rmap_item_bytes)} of KSM's own memory)",
        ),
    ]
    if p.general_profit is not None:
        rows.append(("general_profit", format_bytes(p.general_profit)))
    if p.churn_writes_per_s:
        rows.append(("background writes", f"{p.churn_writes_per_s:,.1f} pages/s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"
