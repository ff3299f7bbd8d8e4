"""The bench's figures: the solved matrix (LightBench's heatmap) and Dolan--Moré performance profiles.

Profiles (:mod:`diyopt.analysis.profiles`), one per cost, each over the tasks where that cost exists:

- ``profile_attempts.png``: cost = ``attempts``, the trials a study needed to its first passing one (how
  much tuning an optimizer needs), every task; an unsolved task costs ``inf``;
- ``profile_steps_to_target.png``: cost = ``steps_to_target`` (the tasks whose criterion is the loss, and
  the workloads), ``inf`` where unsolved;
- ``profile_seconds_to_target.png``: cost = ``seconds_to_target`` (workloads only: AlgoPerf's time-to-result).

``rho_s(tau)``: the fraction of tasks on which optimizer ``s`` is within a factor ``tau`` of the best one;
``rho_s(1)`` how often it is the best, the right end how often it solves at all (AlgoPerf scores the area
up to ``tau = 4``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

PROFILES = {
    "attempts": "profile_attempts.png",
    "steps_to_target": "profile_steps_to_target.png",
    "seconds_to_target": "profile_seconds_to_target.png",
}


def _short(label: str) -> str:
    """``my_rules.py:rule`` for a spec naming a file by a long path; built-in specs as they are."""
    at = label.find(".py:")
    short = os.path.basename(label[: at + 3]) + label[at + 3 :] if at >= 0 else label
    return short if len(short) <= 24 else short[:23] + "…"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matrix_png(rows: list[dict], path: str | os.PathLike) -> None:
    """Tasks (rows) x optimizers (columns), colour: the fraction of studies that solved the task;
    the cell's text: median attempts (trials to the first success) or "-"."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    frac = torch.full((len(tasks), len(opts)), float("nan"))
    text = {}
    for r in rows:
        i, j = tasks.index(r["task"]), opts.index(r["optimizer"])
        k, n = (int(x) for x in r["studies_solved"].split("/"))
        frac[i, j] = k / n
        a = r["attempts"]
        text[i, j] = "-" if a is None or not math.isfinite(a) else f"{a:g}"
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(opts), 1.2 + 0.24 * len(tasks)))
    im = ax.imshow(frac.numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), s in text.items():
        ax.text(j, i, s, ha="center", va="center", fontsize=7)
    solved = {o: sum(r["solved"] for r in rows if r["optimizer"] == o) for o in opts}
    ax.set_xticks(
        range(len(opts)), [f"{_short(o)}\n{solved[o]}/{len(tasks)}" for o in opts], rotation=30, ha="right", fontsize=8
    )
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    ax.set_title("solved: fraction of studies (text: median attempts)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile_costs(rows: list[dict], key: str) -> dict[str, list[float]]:
    """``{optimizer: [cost per task]}`` for ``key``, over the tasks where some row has it; an unsolved task
    (or a missing value) costs ``inf``. Empty when no task has the cost."""
    tasks = [
        t
        for t in dict.fromkeys(r["task"] for r in rows)
        if any(r["task"] == t and r.get(key) is not None for r in rows)
    ]
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    cell = {(r["task"], r["optimizer"]): r for r in rows}
    costs = {}
    for o in opts:
        vals = []
        for t in tasks:
            r = cell.get((t, o))
            v = r.get(key) if r is not None and r["solved"] else None
            vals.append(math.inf if v is None else float(v))
        costs[o] = vals
    return costs if tasks else {}


def profiles_png(rows: list[dict], folder: str | os.PathLike) -> list[str]:
    """Write the profiles of :data:`PROFILES` that have tasks into ``folder``; returns the file names."""
    from diyopt.analysis.profiles import plot_performance_profile

    plt = _pyplot()
    written = []
    for key, name in PROFILES.items():
        costs = profile_costs(rows, key)
        if not costs:
            continue
        costs = {_short(o): v for o, v in costs.items()}
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        plot_performance_profile(costs, ax=ax, cost=key.replace("_", " "))
        n = len(next(iter(costs.values())))
        ax.set_title(f"Performance profile, cost = {key.replace('_', ' ')}, {n} tasks", fontsize=10)
        fig.tight_layout()
        fig.savefig(Path(folder) / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written
