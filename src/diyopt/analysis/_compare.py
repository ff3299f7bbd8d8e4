"""Side by side: many optimizers on one problem from the same starting points, in figures and a table.

    cmp = diyopt.compare("line", {"sgd": optim.sgd(lr=1e-3), "adam": optim.adam(lr=1e-2)}, seeds=5)
    print(cmp.to_markdown()); cmp.save("runs/line")

**Starting points.** Seed 0 starts at the problem's ``params0``; seed ``s > 0`` starts at
``params0 + perturb * (1 + |params0|) * z`` with ``z ~ N(0, 1)`` drawn elementwise from
``torch.Generator().manual_seed(s)`` (the scale follows each entry's magnitude, so a start at 0 and a
start at 1e3 are both moved by a comparable *relative* amount). A problem with named starts (NIST's
Start 1 and Start 2, ``problem.starts``) uses them first, and a problem may supply its own sampler as
``problem.info["sample_start"](seed) -> params``. Every optimizer gets the same starts.

**What a run records.** ``losses[i]`` is the loss after ``i`` updates (``losses[0]`` at the start, the last
one evaluated at the final params after the fit), ``seconds[i]`` the wall time from just before the fit
began to the end of update ``i`` -- time-stamped by the fit callback, so it is the real cumulative time,
set-up included; the callback (one ``perf_counter`` per step, plus one copy of the params on 2-D problems
for the paths) costs every optimizer the same.

**Reaching the tolerance.** With ``f*`` the known optimum (``problem.optimum``) or, when none is known,
the lowest loss any run reached, a run has *converged* at the first ``i`` with
``f(x_i) - f* <= tol * (f(x_0) - f*)`` -- the Moré--Wild test: the gap is cut by a factor ``1/tol``.
Steps and seconds to reach it are ``inf`` for a run that never does. A run whose loss became
nan or inf counts as final loss ``inf``.

**Across problems**, :func:`compare_all` and :func:`save_all` add Dolan--Moré performance profiles
(:mod:`diyopt.analysis.profiles`); each (problem, seed) pair is one instance, its cost the steps or seconds to the
tolerance.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diyopt._util.files import dumps, write_folder
from diyopt._util.progress import progress_bar
from diyopt.analysis import tables
from diyopt.analysis._arrays import flat2, pad
from diyopt.analysis.profiles import performance_profile, plot_performance_profile  # noqa: F401
from diyopt.core.contract import Optimizer
from diyopt.core.tree import Params
from diyopt.engines import fit
from diyopt.optim import describe, resolve_optimizers
from diyopt.problems import Problem, as_problem, start_point

RANK_RTOL = 1e-9  # median final losses this close (relatively) share a rank in the table


@dataclass
class Run:
    """One optimizer from one start.

    Attributes:
      seed: which start (0 = the problem's ``params0``).
      losses: ``losses[i]`` = loss after ``i`` updates, length ``steps + 1``.
      seconds: ``seconds[i]`` = wall time at the end of update ``i`` (``seconds[0] = 0``).
      params: final parameters.
      stop_reason: the fit's.
      path: ``(steps + 1, 2)`` array of the parameters along the way on 2-D problems, else None.
    """

    seed: int
    losses: np.ndarray
    seconds: np.ndarray
    params: Params
    stop_reason: str
    path: np.ndarray | None = None

    @property
    def final_loss(self) -> float:
        last = float(self.losses[-1])
        return last if math.isfinite(last) else math.inf


@dataclass
class Comparison:
    """What :func:`compare` returns: every run, the settings, and the table and figures made from them.

    Attributes:
      problem: the :class:`~diyopt.problems.Problem`.
      runs: ``{label: [Run per seed]}`` in the order the optimizers were given.
      tol: the tolerance of the convergence test (see the module docstring).
      f_star: the reference minimum ``f*`` used by that test.
      settings: what was run, with versions, as written to ``settings.json``.
    """

    problem: Problem
    runs: dict[str, list[Run]]
    tol: float
    f_star: float
    settings: dict = field(default_factory=dict)

    # ------------------------------------------------------------ numbers

    def reached(self, run: Run) -> int | None:
        """First step count ``i`` at which ``run`` passes the tolerance test, or None."""
        gap0 = float(run.losses[0]) - self.f_star
        gaps = run.losses - self.f_star
        ok = np.flatnonzero(np.isfinite(gaps) & (gaps <= self.tol * max(gap0, 0.0)))
        return int(ok[0]) if len(ok) else None

    def costs(self, kind: str = "steps") -> dict[str, np.ndarray]:
        """``{label: cost per seed}``: steps or seconds to reach the tolerance, ``inf`` when never reached."""
        if kind not in ("steps", "seconds"):
            raise ValueError(f"cost must be 'steps' or 'seconds', got {kind!r}")
        out = {}
        for label, runs in self.runs.items():
            values = []
            for run in runs:
                i = self.reached(run)
                values.append(math.inf if i is None else (float(i) if kind == "steps" else float(run.seconds[i])))
            out[label] = np.array(values)
        return out

    def table(self) -> list[dict[str, Any]]:
        """One row per optimizer: medians over seeds, and the rank by median final loss (1 = lowest).

        Columns: ``optimizer``, ``final_loss`` (median), ``final_loss_min``, ``final_loss_max``,
        ``final_gap`` (median of ``final loss - f*``), ``distance`` (median Euclidean distance to the
        nearest known minimizer, nan if none is known),
        ``reached`` (``"k/n"`` seeds that met the tolerance), ``steps_to_tol`` and ``seconds_to_tol``
        (medians, inf when most seeds never met it), ``seconds`` (median total time), ``rank``
        (competition ranking, "1224": by median final loss, losses equal to about 9 significant digits
        counting as equal, and so do the losses of two optimizers that both reached the tolerance; among
        equal losses, by median steps to the tolerance, so methods that all converge are ordered by how
        fast they got there; equal on both = the same rank).
        """
        steps, secs = self.costs("steps"), self.costs("seconds")
        rows = []
        for label, runs in self.runs.items():
            finals = np.array([r.final_loss for r in runs])
            rows.append(
                {
                    "optimizer": label,
                    "final_loss": float(np.median(finals)),
                    "final_loss_min": float(finals.min()),
                    "final_loss_max": float(finals.max()),
                    "final_gap": float(np.median(finals - self.f_star)),
                    "distance": float(np.median([self.problem.distance(r.params) for r in runs])),
                    "reached": f"{int(np.isfinite(steps[label]).sum())}/{len(runs)}",
                    "steps_to_tol": float(np.median(steps[label])),
                    "seconds_to_tol": float(np.median(secs[label])),
                    "seconds": float(np.median([r.seconds[-1] for r in runs])),
                    "diverged": f"{sum(r.stop_reason == 'diverged' for r in runs)}/{len(runs)}",
                }
            )
        for row in rows:
            row["rank"] = 1 + sum(self._beats(o, row) for o in rows)
        return rows

    def _beats(self, o: dict, r: dict) -> bool:
        """Row ``o`` ranks ahead of row ``r``: a lower median final loss, or an equal one (within rounding)
        and fewer median steps to the tolerance.

        Medians that differ only by rounding are equal: ``m_o < m_r - (1e-9 |m_r| + 1e-12 max(1, |f*|))``
        is a lower loss; the threshold grows with ``m_r``, so a lower loss never gets a worse rank."""
        f_star = self.f_star if math.isfinite(self.f_star) else 0.0
        atol = 1e-12 * max(1.0, abs(f_star))

        def lower(a: float, b: float) -> bool:
            if not (math.isfinite(a) and math.isfinite(b)):  # a diverged loss (inf, nan) ranks after
                return math.isfinite(a) and not math.isfinite(b)  # every finite one, equal to the others
            return a < b - (RANK_RTOL * abs(b) + atol)

        m_o, m_r = o["final_loss"], r["final_loss"]
        s_o, s_r = o["steps_to_tol"], r["steps_to_tol"]
        if math.isfinite(s_o) and math.isfinite(s_r):  # both reached the tolerance: their losses count as
            return s_o < s_r or (s_o == s_r and lower(m_o, m_r))  # equal, the faster one ranks ahead
        if lower(m_o, m_r):
            return True
        if lower(m_r, m_o):
            return False
        return o["steps_to_tol"] < r["steps_to_tol"]

    def to_csv(self, path: str | Path | None = None) -> str:
        """The table as CSV (:func:`diyopt.analysis.tables.comparison_csv`); written to ``path`` when given."""
        text = tables.comparison_csv(self.table())
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self) -> str:
        """The table as GitHub Markdown (:func:`diyopt.analysis.tables.comparison_markdown`)."""
        return tables.comparison_markdown(self.table())

    def plot_loss_vs_step(self, ax=None):
        """Median over seeds per optimizer with the min--max band (:func:`diyopt.analysis.figures.comparison_loss_vs_step`)."""
        from diyopt.analysis import figures

        return figures.comparison_loss_vs_step(self, ax)

    def plot_loss_vs_time(self, ax=None):
        """Median loss against median wall time per optimizer (:func:`diyopt.analysis.figures.comparison_loss_vs_time`)."""
        from diyopt.analysis import figures

        return figures.comparison_loss_vs_time(self, ax)

    def plot_paths(self, ax=None, levels: int = 30):
        """2-D problems: every run's path over contours of the loss (:func:`diyopt.analysis.figures.comparison_paths`)."""
        from diyopt.analysis import figures

        return figures.comparison_paths(self, ax, levels)

    @property
    def is_2d(self) -> bool:
        return sum(p.numel() for p in self.problem.params0.values()) == 2

    def save(self, out_dir: str | Path) -> Path:
        """Write ``loss_vs_step.png``, ``loss_vs_time.png``, ``paths.png`` (2-D problems), ``table.csv``,
        ``table.md`` and ``settings.json`` into ``out_dir``, via a temporary folder moved into place."""
        from diyopt.analysis.figures import save

        def write(tmp: Path) -> None:
            save(self.plot_loss_vs_step(), tmp / "loss_vs_step.png")
            save(self.plot_loss_vs_time(), tmp / "loss_vs_time.png")
            if self.is_2d:
                save(self.plot_paths(), tmp / "paths.png")
            self.to_csv(tmp / "table.csv")
            (tmp / "table.md").write_text(self.to_markdown())
            (tmp / "settings.json").write_text(dumps(self.settings))  # strict JSON

        return write_folder(out_dir, write, names=OUTPUT_FILES, kind="compare")

    def _n_seeds(self) -> int:
        return len(next(iter(self.runs.values())))

    def minima(self) -> list[Params]:
        """The problem's known minimizers (several for Himmelblau), or its one solution, or none."""
        return self.problem.info.get("minima") or ([self.problem.solution] if self.problem.solution else [])

    def gaps(self, runs: list[Run]) -> np.ndarray:
        n = max(len(r.losses) for r in runs)
        curves = np.stack([pad(r.losses, n) for r in runs])
        curves = np.where(np.isfinite(curves), curves, np.nan)
        if self.problem.optimum is None:
            return curves
        # Rounding can put a converged loss a hair below the optimum; keep it on the log axis.
        floor = 1e-16 * max(1.0, abs(self.problem.optimum))
        return np.maximum(curves - self.problem.optimum, floor)


# ---------------------------------------------------------------- compare


def compare(
    problem: Problem | str,
    optimizers: Mapping[str, Any] | Sequence[Any],
    *,
    seeds: int = 5,
    steps: int = 1000,
    tol: float = 1e-6,
    perturb: float = 0.1,
    engine: str = "eager",
    progress: bool | None = None,
) -> Comparison:
    """Run every optimizer from the same ``seeds`` starting points for ``steps`` updates.

    Args:
      problem: a :class:`~diyopt.problems.Problem`, or a registry name (``"line"``,
        ``"rosenbrock:dim=4"`` -- arguments after ``:`` go to the problem's factory).
      optimizers: ``{label: optimizer}`` or a list. An optimizer is a diyopt :class:`Optimizer`, a
        spec string (``"adam:lr=1e-2"``, ``"my_rules.py:rule"``; see :func:`diyopt.optim.get`), a
        ``torch.optim.Optimizer`` class, or a ``(torch.optim class, kwargs)`` pair. In a list, a
        spec's label is the spec itself and an Optimizer's is its factory's name.
      seeds: how many starts (seed 0 = ``params0``, see the module docstring for the others).
      steps: updates per run.
      tol: the convergence test's factor (module docstring); ``0 < tol < 1``.
      perturb: the relative size of the start perturbation for seeds > 0.
      engine: passed to :func:`~diyopt.fit` for diyopt optimizers.
      progress: a progress bar on stderr; default: only when stderr is a terminal (needs ``tqdm``).

    Returns:
      A :class:`Comparison`.
    """
    problem = as_problem(problem)
    resolved = resolve_optimizers(optimizers)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"Invalid tol value: {tol} (need 0 < tol < 1)")
    starts = [start_point(problem, s, perturb) for s in range(seeds)]
    two_d = sum(p.numel() for p in problem.params0.values()) == 2

    runs: dict[str, list[Run]] = {label: [] for label in resolved}
    with progress_bar(len(resolved) * seeds, progress, desc=f"compare {problem.name}") as bar:
        for label, (opt, kwargs, _) in resolved.items():
            for seed, p0 in enumerate(starts):
                runs[label].append(_one_run(problem, opt, kwargs, p0, seed, steps, engine, two_d))
                bar.update(1)

    known = problem.optimum
    f_star = (
        float(known)
        if known is not None
        else min(
            float(np.nanmin(np.where(np.isfinite(r.losses), r.losses, np.nan))) for rs in runs.values() for r in rs
        )
    )
    settings = {
        "problem": problem.name,
        "problem_info": {k: v for k, v in problem.info.items() if isinstance(v, (str, int, float, bool))},
        "optimizers": {label: describe(opt, kwargs, spec) for label, (opt, kwargs, spec) in resolved.items()},
        "seeds": seeds,
        "steps": steps,
        "tol": tol,
        "perturb": perturb,
        "engine": engine,
        "f_star": f_star,
        "f_star_source": "problem.optimum" if known is not None else "best loss seen",
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return Comparison(problem, runs, tol, f_star, settings)


def _one_run(
    problem: Problem, opt: Any, kwargs: dict, p0: Params, seed: int, steps: int, engine: str, two_d: bool
) -> Run:
    stamps = np.full(steps, np.nan)
    path = np.empty((steps + 1, 2)) if two_d else None
    if two_d:
        path[0] = flat2(p0)

    def callback(step: int, loss: Tensor, params: Params) -> None:
        stamps[step] = time.perf_counter()
        if two_d:
            path[step + 1] = torch.cat([v.detach().reshape(-1) for v in params.values()]).double().numpy()

    if isinstance(opt, Optimizer):
        options = {"engine": engine} if engine != "eager" else {}
        start = time.perf_counter()
        result = fit(problem.loss, p0, opt, steps, callback=callback, **options)
    else:
        start = time.perf_counter()
        result = fit(problem.loss, p0, opt, steps, optimizer_kwargs=kwargs, callback=callback)
    end = time.perf_counter()
    n = result.steps
    stamps = np.where(np.isnan(stamps), end, stamps)  # a step that stopped the fit before its callback
    with torch.no_grad():  # the loss at the final params, outside the timed loop
        final = float(problem.loss(result.params))
    losses = np.append(result.losses.detach().double().cpu().numpy()[:n], final)
    seconds = np.concatenate([[0.0], stamps[:n] - start])
    return Run(seed, losses, seconds, result.params, result.stop_reason, None if path is None else path[: n + 1])


# ---------------------------------------------------------------- optimizers and problems by name


def versions() -> dict[str, str]:
    """The versions a result depends on: diyopt, torch, numpy, matplotlib, python, platform."""
    import matplotlib

    from diyopt import __version__

    return {
        "diyopt": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": str(torch.get_num_threads()),
    }


# ---------------------------------------------------------------- across problems


def profile_costs(comparisons: Iterable[Comparison], kind: str = "steps") -> dict[str, np.ndarray]:
    """Costs for :func:`performance_profile` across comparisons: each (problem, seed) is one instance.

    All comparisons must have the same optimizer labels."""
    comparisons = list(comparisons)
    if not comparisons:
        raise ValueError("no comparisons given")
    labels = list(comparisons[0].runs)
    out: dict[str, list] = {s: [] for s in labels}
    for c in comparisons:
        if list(c.runs) != labels:
            raise ValueError(f"comparison on {c.problem.name!r} has optimizers {list(c.runs)}, expected {labels}")
        for s, v in c.costs(kind).items():
            out[s].extend(v.tolist())
    return {s: np.array(v) for s, v in out.items()}


def compare_all(
    problems: Sequence[Problem | str], optimizers: Mapping[str, Any] | Sequence[Any], **options: Any
) -> list[Comparison]:
    """:func:`compare` on each problem with the same optimizers and options."""
    return [compare(p, optimizers, **options) for p in problems]


def save_all(comparisons: Sequence[Comparison], out_dir: str | Path) -> Path:
    """Each comparison in ``out_dir/<problem>/`` and the performance profiles (steps and seconds) on top."""
    from diyopt.analysis.figures import save

    def write(tmp: Path) -> None:
        seen: dict[str, int] = {}
        folders = []
        for c in comparisons:
            name = _safe_name(c.problem.name)
            seen[name] = seen.get(name, 0) + 1
            folders.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
            c.save(tmp / folders[-1])
        for kind in ("steps", "seconds"):
            save(
                plot_performance_profile(profile_costs(comparisons, kind), cost=kind),
                tmp / f"performance_profile_{kind}.png",
            )
        settings = {
            "problems": [c.problem.name for c in comparisons],
            "folders": folders,
            "optimizers": list(comparisons[0].runs),
            "versions": versions(),
        }
        (tmp / "settings.json").write_text(dumps(settings))

    return write_folder(out_dir, write, names=OUTPUT_FILES, kind="compare")


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---------------------------------------------------------------- small helpers


#: The files a comparison writes (save_all adds sub-folders and the profiles).
OUTPUT_FILES = (
    "loss_vs_step.png",
    "loss_vs_time.png",
    "paths.png",
    "table.csv",
    "table.md",
    "settings.json",
    "performance_profile_steps.png",
    "performance_profile_seconds.png",
)
