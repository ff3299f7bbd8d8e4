"""Matplotlib figures: the seed's five, and loss curves for any Result.

Headless machines get the Agg backend (no display needed). Every function returns the Axes it drew
on, and the ``save_*`` helpers write a PNG and close the figure.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def axes(ax=None):
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        # Fixed margins that fit the axis labels and log-scale ticks: what tight_layout would choose for
        # these figures, without its extra draw (half of a demo figure's time).
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.95)
    return ax


def _numpy(t):
    return t.detach().cpu().double().numpy() if isinstance(t, Tensor) else t


def readable_log_ticks(ax, axis: str = "y") -> None:
    """Tick labels a reader can read on a log axis.

    Over at most 3 decades the major ticks are 1, 2, 5 x 10^k written as plain numbers (``0.2``, ``1``,
    ``50``) -- matplotlib's default there is one or two labelled powers of ten and unlabelled minor ticks;
    over more, powers of ten in scientific notation, at most about 8 of them. Call it after the data is
    drawn (it reads the axis limits); a linear axis is left alone.
    """
    import math

    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

    which = ax.yaxis if axis == "y" else ax.xaxis
    if which.get_scale() != "log":
        return
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return
    if abs(math.log10(hi / lo)) <= 3:
        which.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        which.set_minor_formatter(NullFormatter())
    else:
        which.set_major_locator(LogLocator(base=10, numticks=8))
        which.set_major_formatter(LogFormatterSciNotation())
        which.set_minor_formatter(NullFormatter())


def plot_data(x: Tensor, y: Tensor, ax=None, label: str | None = None):
    """The seed's ``sample.png``: the data as a scatter, axes ``x`` / ``y``."""
    ax = axes(ax)
    ax.scatter(_numpy(x), _numpy(y), s=12, label=label)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return ax


def plot_loss(losses: Tensor, ax=None, label: str | None = None, logy: bool = True, ylabel: str = "loss"):
    """The loss at each step (one update per step), log y-axis with readable ticks (the seed's
    ``*_loss.png``); ``ylabel`` says what the loss is (the demo: ``loss ‖y − ŷ‖``)."""
    ax = axes(ax)
    ax.plot(range(len(losses)), _numpy(losses), label=label)
    if logy:
        ax.set_yscale("log")
        readable_log_ticks(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if label:
        ax.legend()
    return ax


def plot_line_fit(x: Tensor, y: Tensor, a: float, b: float, label: str, ax=None,
                  exact: tuple[float, float] | None = None):
    """The data and the fitted line ``y = a x + b`` with legend ``label`` (``Adam.png``, ``original.png``);
    ``exact=(a*, b*)`` adds the exact least-squares line, dashed, to compare against."""
    ax = plot_data(x, y, ax, label="data")
    xs = torch.linspace(float(x.min()), float(x.max()), 100, dtype=torch.float64)
    ax.plot(xs.numpy(), (a * xs + b).numpy(), color="tab:red", label=f"{label}: y = {a:.4g} x + {b:.4g}")
    if exact is not None:
        ax.plot(xs.numpy(), (exact[0] * xs + exact[1]).numpy(), color="black", linestyle="--", linewidth=1,
                label="least squares (exact)")
    ax.legend()
    return ax


def plot_losses(curves: Iterable[tuple[str, Tensor]], ax=None, logy: bool = True, ylabel: str = "loss"):
    """Several loss curves on one axes (``compare_loss.png``)."""
    ax = axes(ax)
    for label, losses in curves:
        plot_loss(losses, ax=ax, label=label, logy=logy, ylabel=ylabel)
    readable_log_ticks(ax)  # again: the limits now cover every curve
    return ax


def save(ax, path: str | Path, *, tight: bool = True) -> Path:
    """Write the figure holding ``ax`` as a PNG and close it.

    ``tight=False`` keeps the figure's margins instead of fitting them to its contents (faster; the
    figures made here have margins that fit a single panel with labels but no title).
    """
    path = Path(path)
    fig = ax.figure
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(result, path: str | Path | None = None):
    """What a sweep found (``diyopt sweep``'s ``sweep.png``): the gap of each run's final loss to the best
    run's, on a log scale, against each swept hyperparameter.

    - One panel per swept hyperparameter: every run a dot, and a line through the best setting at each
      value (the lowest median over seeds, over the other hyperparameters' values).
    - With two swept hyperparameters, first a heatmap of the median gap over seeds for every pair of
      values (log colour scale); a setting whose median diverged is a hatched cell marked "diverged".
    - Diverged runs are red crosses in a band above the finite ones, counted in the legend.
    - The best run has gap 0, which a log axis cannot show: it is drawn as a star on the panel's floor.

    Tuple values (``betas=0.9/0.999``) are categories on the x axis. Returns the figure, or the path when
    ``path`` is given (the figure is then saved and closed).
    """
    import math


    rows = result.rows
    swept = result.hyperparameters() if hasattr(result, "hyperparameters") else \
        [k for k in rows[0] if k not in ("run", "seed", "final_loss", "steps_to_tol", "diverged")]
    keys = swept or (["seed"] if rows[0].get("seed") is not None else ["run"])
    ok = [r for r in rows if not r["diverged"] and math.isfinite(r["final_loss"])]
    best = min((r["final_loss"] for r in ok), default=math.nan)
    gaps = [r["final_loss"] - best for r in ok]
    positive = [g for g in gaps if g > 0]
    floor = min(positive) / 10 if positive else 1e-16 * max(1.0, abs(best) if math.isfinite(best) else 1.0)
    top = max(positive) * 10 if positive else 1.0
    gap_of = lambda r: max(r["final_loss"] - best, floor)

    heat = len(swept) == 2
    n = len(keys) + heat
    fig, axes = plt.subplots(1, n, figsize=(max(4.8 * n, 7.5), 4.2), squeeze=False)
    axes = list(axes[0])
    if heat:
        _sweep_heatmap(axes.pop(0), result, swept, best, floor, fig)
    for ax, key in zip(axes, keys):
        values = _distinct([r[key] for r in rows])
        categorical = any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values)
        xpos = values.index if categorical else (lambda v: v)
        zero = [r for r in ok if r["final_loss"] - best <= 0]
        rest = [r for r in ok if r["final_loss"] - best > 0]
        ax.scatter([xpos(r[key]) for r in rest], [gap_of(r) for r in rest], s=16, alpha=0.6,
                   color="tab:blue", label="a run (one seed)")
        if zero:
            ax.scatter([xpos(r[key]) for r in zero], [floor] * len(zero), marker="*", s=90, color="tab:green",
                       edgecolor="black", linewidth=0.5, zorder=4, label="best run (gap 0, drawn at the floor)")
        if swept:
            line = _best_setting_per_value(result, key, values, best, floor)
            xs = [xpos(v) for v, g in line if math.isfinite(g)]
            ax.plot(xs, [g for _, g in line if math.isfinite(g)], color="tab:blue", lw=1.2,
                    label="best setting at this value (median over seeds)")
        bad = [r for r in rows if r["diverged"] or not math.isfinite(r["final_loss"])]
        if bad:
            ax.scatter([xpos(r[key]) for r in bad], [top] * len(bad), marker="x", s=40, color="tab:red",
                       linewidth=1.5, zorder=5, label=f"diverged ({len(bad)} runs)")
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, top * 3)
        readable_log_ticks(ax)
        if categorical:
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels([_value_label(v) for v in values])
        else:
            if min(values) > 0 and max(values) / min(values) > 20:
                ax.set_xscale("log")
                readable_log_ticks(ax, "x")
            if len(values) <= 8:  # the swept values themselves are the ticks
                from matplotlib.ticker import NullLocator

                ax.set_xticks(values)
                ax.set_xticklabels([_value_label(v) for v in values])
                ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(key)
        ax.set_ylabel("final loss − best run's final loss")
        ax.grid(True, alpha=0.3)
    # one legend for every panel (they draw the same runs), above them, so it hides no point
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = min(len(labels), 2 if n == 1 else 4)
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.06 * (1 + (len(labels) - 1) // ncol)))
    if path is None:
        return fig
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _distinct(values: list) -> list:
    """The distinct values in first-seen order (tuples allowed); numbers sorted."""
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out):
        out.sort()
    return out


def _value_label(v) -> str:
    return "/".join(f"{x:g}" for x in v) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)


def _setting_medians(result, best: float) -> dict[tuple, float]:
    """``{hyperparameter values: median gap to the best over seeds}``, inf where most seeds diverged."""
    import math

    import numpy as np

    keys = result.hyperparameters()
    groups: dict[tuple, list[float]] = {}
    for r in result.rows:
        bad = r["diverged"] or not math.isfinite(r["final_loss"])
        groups.setdefault(tuple(r[k] for k in keys), []).append(math.inf if bad else r["final_loss"] - best)
    return {k: float(np.median(v)) for k, v in groups.items()}


def _best_setting_per_value(result, key: str, values: list, best: float, floor: float) -> list[tuple]:
    import math

    keys = result.hyperparameters()
    i = keys.index(key)
    medians = _setting_medians(result, best)
    out = []
    for v in values:
        m = min((g for k, g in medians.items() if k[i] == v), default=math.inf)
        out.append((v, max(m, floor) if math.isfinite(m) else math.inf))
    return out


def _sweep_heatmap(ax, result, swept: list[str], best: float, floor: float, fig) -> None:
    """The median gap over seeds for each pair of values of the two swept hyperparameters."""
    import math

    import numpy as np
    from matplotlib.colors import LogNorm

    ky, kx = swept
    ys = _distinct([r[ky] for r in result.rows])
    xs = _distinct([r[kx] for r in result.rows])
    medians = _setting_medians(result, best)
    grid = np.full((len(ys), len(xs)), np.nan)
    for (vy, vx), g in medians.items():
        grid[ys.index(vy), xs.index(vx)] = max(g, floor) if math.isfinite(g) else np.nan
    finite = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=finite.min(), vmax=max(finite.max(), finite.min() * 10)) if len(finite) else None
    image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap="viridis_r", norm=norm)
    fig.colorbar(image, ax=ax, label="median over seeds of\nfinal loss − best run's")
    for i in range(len(ys)):
        for j in range(len(xs)):
            g = medians.get((ys[i], xs[j]))
            if g is None:
                continue
            if not math.isfinite(g):  # diverged: a hatched cell, said in words
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="tab:red"))
                ax.text(j, i, "diverged", ha="center", va="center", color="tab:red", fontsize=8)
            elif len(xs) * len(ys) <= 64:
                ax.text(j, i, f"{max(g, 0):.2g}", ha="center", va="center", fontsize=7,
                        color="white" if norm is not None and norm(max(g, floor)) > 0.5 else "black")
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([_value_label(v) for v in xs])
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels([_value_label(v) for v in ys])
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    ax.set_title("median gap to the best run")
