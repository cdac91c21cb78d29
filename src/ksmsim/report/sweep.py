"""Sweeps on the terminal: the grid as a table, the Pareto front and the recommendation."""

from __future__ import annotations

from ksmsim.report.prediction import format_bytes, format_seconds, format_share
from ksmsim.workload.sweep import SweepResult

__all__ = ["format_sweep"]


def format_sweep(result: SweepResult) -> str:
    """Return the sweep as an aligned table (``*`` marks the Pareto front, ``>`` the
    recommended setting), followed by the recommendation (ends with a newline)."""
    front = {id(p) for p in result.pareto_front()}
    best = result.recommend()
    header = [
        *result.names,
        "saved",
        "t50",
        "t90",
        "t99",
        "ksmd CPU",
        "CPU to settle",
        "settled",
        "",
    ]
    rows: list[list[str]] = []
    for p in result.points:
        cells = [str(p.settings.get(n, "")) for n in result.names]
        pred = p.prediction
        if pred is None:
            rows.append([*cells, f"error: {p.error}", "", "", "", "", "", "", ""])
            continue
        mark = (">" if p is best else "") + ("*" if id(p) in front else "")
        rows.append(
            [
                *cells,
                format_bytes(pred.saved_bytes),
                format_seconds(pred.t50_s),
                format_seconds(pred.t90_s),
                format_seconds(pred.t99_s),
                format_share(pred.ksmd_cpu_share),
                f"{pred.ksmd_cpu_s:.3g} s",
                format_seconds(pred.converged_s) if pred.converged else "no",
                mark,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        """Right-align every column but the marks."""
        out = [cell.rjust(w) for cell, w in zip(cells[:-1], widths, strict=False)]
        return "  ".join([*out, cells[-1]]).rstrip()

    lines = [line(header), *(line(r) for r in rows)]
    lines.append("* Pareto front (no other setting saves more for less CPU)")
    if result.cpu_budget is not None:
        budget = format_share(result.cpu_budget)
        if best is not None and best.prediction is not None:
            pred = best.prediction
            settings = " ".join(f"{k}={v}" for k, v in best.settings.items())
            lines.append(
                f"> recommended for a ksmd CPU budget of {budget}: {settings} "
                f"(saves {format_bytes(pred.saved_bytes)}, 99% after "
                f"{format_seconds(pred.t99_s)}, ksmd {format_share(pred.ksmd_cpu_share)} of one CPU)"
            )
        else:
            lines.append(f"no setting keeps ksmd within a CPU budget of {budget}")
    failed = sum(1 for p in result.points if p.prediction is None)
    if failed:
        lines.append(f"{failed} of {len(result.points)} settings failed")
    return "\n".join(lines) + "\n"
