"""Matplotlib figures: the seed's five, and loss curves for any Result.

Headless machines get the Agg backend (no display needed). Every function returns the Axes it drew
on, and the ``save_*`` helpers write a PNG and close the figure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import numpy as np

from diyopt.analysis._arrays import flat2, pad

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


def plot_line_fit(
    x: Tensor, y: Tensor, a: float, b: float, label: str, ax=None, exact: tuple[float, float] | None = None
):
    """The data and the fitted line ``y = a x + b`` with legend ``label`` (``Adam.png``, ``original.png``);
    ``exact=(a*, b*)`` adds the exact least-squares line, dashed, to compare against."""
    ax = plot_data(x, y, ax, label="data")
    xs = torch.linspace(float(x.min()), float(x.max()), 100, dtype=torch.float64)
    ax.plot(xs.numpy(), (a * xs + b).numpy(), color="tab:red", label=f"{label}: y = {a:.4g} x + {b:.4g}")
    if exact is not None:
        ax.plot(
            xs.numpy(),
            (exact[0] * xs + exact[1]).numpy(),
            color="black",
            linestyle="--",
            linewidth=1,
            label="least squares (exact)",
        )
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
    swept = (
        result.hyperparameters()
        if hasattr(result, "hyperparameters")
        else [k for k in rows[0] if k not in ("run", "seed", "final_loss", "steps_to_tol", "diverged")]
    )
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
        ax.scatter(
            [xpos(r[key]) for r in rest],
            [gap_of(r) for r in rest],
            s=16,
            alpha=0.6,
            color="tab:blue",
            label="a run (one seed)",
        )
        if zero:
            ax.scatter(
                [xpos(r[key]) for r in zero],
                [floor] * len(zero),
                marker="*",
                s=90,
                color="tab:green",
                edgecolor="black",
                linewidth=0.5,
                zorder=4,
                label="best run (gap 0, drawn at the floor)",
            )
        if swept:
            line = _best_setting_per_value(result, key, values, best, floor)
            xs = [xpos(v) for v, g in line if math.isfinite(g)]
            ax.plot(
                xs,
                [g for _, g in line if math.isfinite(g)],
                color="tab:blue",
                lw=1.2,
                label="best setting at this value (median over seeds)",
            )
        bad = [r for r in rows if r["diverged"] or not math.isfinite(r["final_loss"])]
        if bad:
            ax.scatter(
                [xpos(r[key]) for r in bad],
                [top] * len(bad),
                marker="x",
                s=40,
                color="tab:red",
                linewidth=1.5,
                zorder=5,
                label=f"diverged ({len(bad)} runs)",
            )
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
                ax.text(
                    j,
                    i,
                    f"{max(g, 0):.2g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm is not None and norm(max(g, floor)) > 0.5 else "black",
                )
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([_value_label(v) for v in xs])
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels([_value_label(v) for v in ys])
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    ax.set_title("median gap to the best run")


# ---------------------------------------------------------------- a comparison's figures


def comparison_loss_vs_step(cmp, ax=None):
    """Median over seeds per optimizer, with the min--max band; log y (linear if a loss is <= 0).
    Plots ``loss - f*`` when the optimum is known (so convergence shows as a falling line, not a
    plateau)."""
    from diyopt.analysis.figures import axes

    ax = axes(ax)
    for i, (label, runs) in enumerate(cmp.runs.items()):
        curves = cmp.gaps(runs)
        x = np.arange(curves.shape[1])
        (line,) = ax.plot(x, np.median(curves, axis=0), label=label, linestyle=linestyle(i))
        ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2, linewidth=0)
    _log_if_positive(cmp, ax)
    ax.set_xlabel("step")
    ax.set_ylabel(_ylabel(cmp))
    ax.set_title(f"{cmp.problem.name}: median and min–max over {cmp._n_seeds()} seeds")
    ax.legend()
    return ax


def comparison_loss_vs_time(cmp, ax=None):
    """Median loss (or ``loss - f*``) against median cumulative wall time, per optimizer; log y."""
    from diyopt.analysis.figures import axes

    ax = axes(ax)
    for i, (label, runs) in enumerate(cmp.runs.items()):
        curves = cmp.gaps(runs)
        seconds = np.median(np.stack([pad(r.seconds, curves.shape[1]) for r in runs]), axis=0)
        ax.plot(seconds, np.median(curves, axis=0), label=label, linestyle=linestyle(i))
    _log_if_positive(cmp, ax)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel(_ylabel(cmp))
    ax.set_title(f"{cmp.problem.name}: median over {cmp._n_seeds()} seeds")
    ax.legend()
    return ax


def comparison_paths(cmp, ax=None, levels: int = 30):
    """2-D problems: every run's path over contours of the loss, known minimizers as stars."""
    from diyopt.analysis.figures import axes

    if not cmp.is_2d:
        raise ValueError(
            f"plot_paths needs a problem with 2 parameters, {cmp.problem.name!r} has "
            f"{sum(p.numel() for p in cmp.problem.params0.values())}"
        )
    ax = axes(ax)
    # The view: every start, the known minima and the paths of the runs that did not diverge. A
    # diverged run is drawn as far as it stays in view and marked with an x where it leaves it.
    kept = [r.path for runs in cmp.runs.values() for r in runs if r.stop_reason != "diverged"]
    points = kept + [r.path[:1] for runs in cmp.runs.values() for r in runs]
    points += [flat2(m) for m in cmp.minima()]
    allp = np.concatenate([np.atleast_2d(p) for p in points])
    allp = allp[np.isfinite(allp).all(axis=1)]
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-3 * np.maximum(np.abs(hi), 1.0))
    box_lo, box_hi = lo - pad, hi + pad
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 120)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 120)
    zz = _grid_loss(cmp, xs, ys)
    finite = zz[np.isfinite(zz)]
    zmin = finite.min()
    # Contours of log(loss - min) at quantiles of the grid's values: each band covers about the same
    # area, so both the valley floor and the walls get lines whatever the loss's range.
    logz = np.log10(np.maximum(zz - zmin, 1e-12 * max(1.0, abs(zmin), float(finite.max() - zmin))))
    marks = np.unique(np.quantile(logz[np.isfinite(logz)], np.linspace(0.0, 1.0, levels + 2)[1:-1]))
    # Grey contours, white starts and a gold optimum: colours no optimizer's line uses (they take
    # matplotlib's colour cycle), so each mark is told apart in the legend.
    ax.contour(xs, ys, logz, levels=marks, colors="0.72", linewidths=0.5)
    for i, (label, runs) in enumerate(cmp.runs.items()):
        color = None
        diverged = any(r.stop_reason == "diverged" for r in runs)
        for k, run in enumerate(runs):
            path = run.path
            if run.stop_reason == "diverged":  # as far as it is finite and in view
                inside = np.isfinite(path).all(axis=1) & (path >= box_lo).all(axis=1) & (path <= box_hi).all(axis=1)
                stop = len(path) if inside.all() else int(np.argmin(inside))
                path = path[: max(stop, 1)]
            (line,) = ax.plot(
                path[:, 0],
                path[:, 1],
                color=color,
                lw=1.4 if k == 0 else 0.7,
                linestyle=linestyle(i),
                alpha=1.0 if k == 0 else 0.5,
                label=(f"{label} (diverged)" if diverged else label) if k == 0 else None,
            )
            color = line.get_color()
            if run.stop_reason == "diverged":
                ax.plot(*path[-1], "x", color=color, ms=7, mew=2)
    starts = [r.path[0] for r in next(iter(cmp.runs.values()))]  # every optimizer has the same starts
    for k, p in enumerate(starts):
        ax.plot(
            *p,
            "o",
            mfc="white",
            mec="black",
            mew=1.0,
            ms=7 if k == 0 else 5,
            zorder=5,
            label=(f"starts (seeds 0–{len(starts) - 1}; seed 0 large)" if len(starts) > 1 else "start")
            if k == 0
            else None,
        )
    minima = cmp.minima()
    for k, m in enumerate(minima):
        ax.plot(
            *flat2(m),
            "*",
            mfc="gold",
            mec="black",
            mew=0.8,
            ms=15,
            zorder=6,
            label=("known minimum" if len(minima) == 1 else f"known minima ({len(minima)})") if k == 0 else None,
        )
    ax.set_xlim(box_lo[0], box_hi[0])
    ax.set_ylim(box_lo[1], box_hi[1])
    names = _names2(cmp)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(f"{cmp.problem.name}: paths (seed 0 bold) over contours of log(loss)")
    ax.legend(framealpha=0.9, fontsize="small")
    return ax


def _log_if_positive(cmp, ax) -> None:
    """Log y when every plotted value is positive (a loss without known optimum may go negative)."""
    values = np.concatenate([cmp.gaps(runs).ravel() for runs in cmp.runs.values()])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0:
        from diyopt.analysis.figures import readable_log_ticks

        ax.set_yscale("log")
        readable_log_ticks(ax)


def _ylabel(cmp) -> str:
    return "loss − known optimum" if cmp.problem.optimum is not None else "loss"


def _names2(cmp) -> list[str]:
    p0 = cmp.problem.params0
    if len(p0) == 2:
        return list(p0)
    name = next(iter(p0))
    return [f"{name}[0]", f"{name}[1]"]


def _grid_loss(cmp, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    p0 = cmp.problem.params0
    template = {k: v.detach() for k, v in p0.items()}
    keys = list(template)

    def at(flat: Tensor) -> Tensor:
        if len(keys) == 2:
            params = {
                keys[0]: flat[0].reshape(template[keys[0]].shape),
                keys[1]: flat[1].reshape(template[keys[1]].shape),
            }
        else:
            params = {keys[0]: flat.reshape(template[keys[0]].shape)}
        return cmp.problem.loss(params)

    gx, gy = np.meshgrid(xs, ys)
    dtype = next(iter(template.values())).dtype
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=dtype)
    with torch.no_grad():
        try:  # one batched call when the loss is vmappable, else one call per point
            values = torch.func.vmap(at)(pts)
        except Exception:
            values = torch.stack([at(p) for p in pts])
    return values.double().numpy().reshape(gx.shape)


def linestyle(i: int):
    """Solid, dashed, dotted, dash-dot: identical methods draw on top of each other, and stay visible."""
    return ["-", (0, (5, 3)), (0, (1, 2)), (0, (6, 2, 1, 2))][i % 4]
