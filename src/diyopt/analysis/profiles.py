"""Dolan--Moré performance profiles: which solver is within a factor tau of the best, on how many problems.

For costs ``t[p, s] >= 0`` of solver ``s`` on problem ``p`` (``inf`` = not solved),
``r[p, s] = t[p, s] / min_s t[p, s]`` and ``rho_s(tau) = |{p : r[p, s] <= tau}| / n_p``.
``rho_s(1)`` is how often ``s`` is the best; ``rho_s(tau)`` for large ``tau`` how often it solves at all.

Reference: E. D. Dolan and J. J. Moré, "Benchmarking optimization software with performance profiles",
Math. Program. 91 (2002) 201-213.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def performance_profile(
    costs: Mapping[str, Sequence[float]] | np.ndarray,
    taus: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Dolan--Moré performance profile.

    Args:
      costs: ``{solver: [cost on problem p for p in problems]}`` or an array ``(n_problems, n_solvers)``
        (then ``labels`` name the columns). Costs are >= 0; ``inf`` (or nan) = failed.
      taus: where to evaluate ``rho``; default: every distinct finite ratio (and 1), so the step
        function is exact.

    Returns:
      ``(taus, {solver: rho})`` with ``rho_s(tau) = |{p : r[p, s] <= tau}| / n_p`` and
      ``r[p, s] = t[p, s] / min_s t[p, s]``. A problem no solver solved counts against every solver;
      when the best cost is 0, the solvers with cost 0 get ratio 1 and the others inf.
    """
    if isinstance(costs, Mapping):
        labels = list(costs)
        t = np.array([np.asarray(costs[s], dtype=float) for s in labels]).T
    else:
        t = np.asarray(costs, dtype=float)
        if t.ndim != 2:
            raise ValueError(f"costs must be 2-D (problems, solvers), got shape {t.shape}")
        labels = list(labels) if labels is not None else [f"solver {i}" for i in range(t.shape[1])]
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] != len(labels):
        raise ValueError(f"costs must have one column per solver and at least one problem, got shape {t.shape}")
    t = np.where(np.isnan(t), np.inf, t)
    if (t < 0).any():
        raise ValueError("costs must be >= 0 (inf for a failure)")
    best = t.min(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(np.isfinite(best), t / best, np.inf)
    r = np.where((best == 0) & (t == 0), 1.0, r)
    r = np.where((best == 0) & (t > 0), np.inf, r)
    if taus is None:
        finite = r[np.isfinite(r)]
        taus = np.unique(np.concatenate([[1.0], finite]))
    taus = np.asarray(taus, dtype=float)
    rho = {s: (r[:, j][None, :] <= taus[:, None]).mean(axis=1) for j, s in enumerate(labels)}
    return taus, rho


def plot_performance_profile(costs: Mapping[str, Sequence[float]], ax=None, cost: str = "steps"):
    """The profile as step functions on a log2 ``tau`` axis."""
    from diyopt.analysis.figures import axes, linestyle

    ax = axes(ax)
    taus, rho = performance_profile(costs)
    hi = max(2.0, float(taus.max()) * 1.5)
    taus = np.append(taus, hi)
    for i, (s, values) in enumerate(rho.items()):
        ax.step(taus, np.append(values, values[-1]), where="post", label=s, linestyle=linestyle(i))
    ax.set_xscale("log", base=2)
    ax.set_xlim(1.0, hi)
    # ticks at 1, 2, 4, 8, ... written as plain numbers (a reader wants "within 4x", not "2^2")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"τ (within a factor τ of the best {cost})")
    ax.set_ylabel("fraction of problems  ρ(τ)")
    n = len(next(iter(costs.values())))
    ax.set_title(f"Performance profile, cost = {cost} to tolerance, {n} instances")
    ax.legend(loc="lower right")
    return ax
