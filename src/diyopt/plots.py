"""Matplotlib figures: the seed's five, and loss curves for any Result.

Headless machines get the Agg backend (no display needed). Every function returns the Axes it drew
on, and the ``save_*`` helpers write a PNG and close the figure.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def _axes(ax=None):
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        # Fixed margins that fit the axis labels and log-scale ticks: what tight_layout would choose for
        # these figures, without its extra draw (half of a demo figure's time).
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.95)
    return ax


def _numpy(t):
    return t.detach().cpu().double().numpy() if isinstance(t, Tensor) else t


def plot_data(x: Tensor, y: Tensor, ax=None):
    """The seed's ``sample.png``: the data as a scatter, axes ``x`` / ``y``."""
    ax = _axes(ax)
    ax.scatter(_numpy(x), _numpy(y), s=12)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return ax


def plot_loss(losses: Tensor, ax=None, label: str | None = None, logy: bool = True):
    """Loss per epoch, log y-axis, axes ``epoch`` / ``loss`` (the seed's ``*_loss.png``)."""
    ax = _axes(ax)
    ax.plot(range(len(losses)), _numpy(losses), label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if label:
        ax.legend()
    return ax


def plot_line_fit(x: Tensor, y: Tensor, a: float, b: float, label: str, ax=None):
    """The data and the fitted line ``y = a x + b`` with legend ``label`` (``Adam.png``, ``original.png``)."""
    ax = plot_data(x, y, ax)
    xs = torch.linspace(float(x.min()), float(x.max()), 100, dtype=torch.float64)
    ax.plot(xs.numpy(), (a * xs + b).numpy(), color="tab:red", label=label)
    ax.legend()
    return ax


def plot_losses(curves: Iterable[tuple[str, Tensor]], ax=None, logy: bool = True):
    """Several loss curves on one axes (``compare_loss.png``)."""
    ax = _axes(ax)
    for label, losses in curves:
        plot_loss(losses, ax=ax, label=label, logy=logy)
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
    """Final loss against each swept hyperparameter, one panel each, every run a dot (``diyopt sweep``).

    Diverged runs are drawn as red crosses at the top of their panel. Returns the figure, or the path when
    ``path`` is given (the figure is then saved and closed).
    """
    import math

    swept = [k for k in result.rows[0] if k not in ("run", "seed", "final_loss", "steps_to_tol", "diverged")]
    keys = swept or ["run"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    finite = [r["final_loss"] for r in result.rows if math.isfinite(r["final_loss"])]
    top = max(finite) * 2 if finite else 1.0
    for ax, key in zip(axes[0], keys):
        def x_of(r):
            v = r[key]
            return v[0] if isinstance(v, tuple) else v

        ok = [r for r in result.rows if not r["diverged"]]
        bad = [r for r in result.rows if r["diverged"]]
        ax.scatter([x_of(r) for r in ok], [r["final_loss"] for r in ok], s=14, alpha=0.7)
        if bad:
            ax.scatter([x_of(r) for r in bad], [top] * len(bad), marker="x", color="tab:red", label="diverged")
            ax.legend()
        values = [x_of(r) for r in result.rows]
        if key != "run" and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_xscale("log")
        if finite and min(finite) > 0:
            ax.set_yscale("log")
        ax.set_xlabel(key if not isinstance(result.rows[0][key], tuple) else f"{key}[0]")
        ax.set_ylabel("final loss")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
