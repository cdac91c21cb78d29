"""PNG plots of predictions and sweeps (matplotlib with the Agg backend, imported on first use).

matplotlib is an optional dependency (``pip install 'ksmsim[plot]'``); without it the functions
raise ``PlotUnavailable`` with a one-line message.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ksmsim.workload.predict import Prediction

if TYPE_CHECKING:
    from ksmsim.workload.sweep import SweepResult

__all__ = ["PlotUnavailable", "plot_prediction", "plot_sweep"]

MIB = 1 << 20


class PlotUnavailable(Exception):
    """matplotlib is not installed, or the plot cannot be written."""


def _pyplot() -> Any:
    """Import matplotlib's pyplot with the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            "plots need matplotlib, which is not installed: pip install 'ksmsim[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> None:
    """Write a figure as PNG and close it."""
    try:
        fig.savefig(path, format="png", dpi=110)
    except OSError as exc:
        raise PlotUnavailable(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def plot_prediction(p: Prediction, path: str | os.PathLike[str]) -> None:
    """Plot savings (MiB) and ksmd CPU time against simulated time, t50/t90/t99 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    curve = p.curve or [(0.0, 0, 0.0)]
    end = max(p.sim_time_s, curve[-1][0])
    ts = [c[0] for c in curve] + [end]
    saved = [c[1] * 4096 / MIB for c in curve] + [curve[-1][1] * 4096 / MIB]
    ax.step(ts, saved, where="post", color="tab:blue", label="saved (pages_sharing + zero)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("memory saved (MiB)")
    for q, t, style in ((50, p.t50_s, ":"), (90, p.t90_s, "--"), (99, p.t99_s, "-.")):
        if t is not None:
            ax.axvline(t, color="gray", linestyle=style, linewidth=1, label=f"t{q} = {t:.3g} s")
    ax2 = ax.twinx()
    ends = p.pass_ends
    if ends:
        ax2.plot(
            [0.0] + [e.t_s for e in ends],
            [0.0] + [e.cpu_s for e in ends],
            color="tab:red",
            linewidth=1,
            label="ksmd CPU (s)",
        )
    ax2.set_ylabel("ksmd CPU time (s)", color="tab:red")
    tun = p.tunables
    ax.set_title(
        f"{p.workload}: pages_to_scan={tun.get('pages_to_scan')}, "
        f"sleep_millisecs={tun.get('sleep_millisecs')} ({p.kernel})"
    )
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, plt, path)


def plot_sweep(result: SweepResult, path: str | os.PathLike[str]) -> None:
    """Plot savings against ksmd's CPU share for every setting, the Pareto front marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    points = [pt for pt in result.points if pt.prediction is not None]
    front = {id(pt) for pt in result.pareto_front()}
    for pt in points:
        pred = pt.prediction
        assert pred is not None
        x = pred.ksmd_cpu_share * 100
        y = pred.saved_bytes / MIB
        on = id(pt) in front
        ax.scatter([x], [y], s=40 if on else 20, color="tab:orange" if on else "tab:blue", zorder=3)
        ax.annotate(
            pt.label(), (x, y), fontsize="x-small", xytext=(4, 3), textcoords="offset points"
        )
    chain = sorted(
        (pt.prediction for pt in points if id(pt) in front and pt.prediction is not None),
        key=lambda pr: pr.ksmd_cpu_share,
    )
    if chain:
        ax.plot(
            [pr.ksmd_cpu_share * 100 for pr in chain],
            [pr.saved_bytes / MIB for pr in chain],
            color="tab:orange",
            linewidth=1.2,
            label="Pareto front",
        )
    if result.cpu_budget is not None:
        ax.axvline(result.cpu_budget * 100, color="gray", linestyle="--", label="CPU budget")
    best = result.recommend()
    if best is not None and best.prediction is not None:
        ax.scatter(
            [best.prediction.ksmd_cpu_share * 100],
            [best.prediction.saved_bytes / MIB],
            s=160,
            facecolors="none",
            edgecolors="tab:green",
            linewidths=2,
            zorder=4,
            label=f"recommended: {best.label()}",
        )
    ax.set_ylim(bottom=0)
    ax.set_xscale("log" if _spread(points) else "linear")
    ax.set_xlabel("ksmd CPU, steady state (% of one CPU)")
    ax.set_ylabel("memory saved (MiB)")
    ax.set_title(f"{result.workload}: savings against ksmd CPU")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    _save(fig, plt, path)


def _spread(points: list[Any]) -> bool:
    """Tell whether the CPU shares span more than a factor of 20 (then a log axis reads best)."""
    shares = [pt.prediction.ksmd_cpu_share for pt in points if pt.prediction.ksmd_cpu_share > 0]
    return len(shares) == len(points) and bool(shares) and max(shares) > 20 * min(shares)
