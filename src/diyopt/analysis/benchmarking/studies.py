"""Running the studies of one task x optimizer and summarizing them into a ``results.csv`` row.

Three engines, one set of rules (:mod:`~diyopt.analysis.benchmarking.tuning`):

- **vmap, all studies at once** (diyopt optimizers on the diagnostic tasks): the ``S x N`` runs (studies x
  trials) are one :func:`diyopt.sweep`. A study is a seed: its own start (sweep's ``init(seed)``) and its own
  gradient effect, which the update finds through a 0-dim params leaf holding the study's index
  (:func:`~diyopt.analysis.benchmarking.tuning.with_studies`). Per-step cost on these small problems is
  mostly fixed overhead, so ``S`` studies in one sweep cost little more than one. A task whose loss differs
  between seeds runs one sweep per study instead; a rule vmap refuses runs one by one (sweep's loop fallback,
  named in the row's ``engine``).
- **a loop of fits** (a ``torch.optim`` class, "the packaged path"): one ``diyopt.fit(loss, params, cls, ...)``
  per trial, the class subclassed so that its ``step`` hands the task's gradient effect's gradients to
  torch's own update (:func:`effected`). Same points, same seeds, same effects: the row must equal the
  diyopt optimizer's (``tests/test_bench_parity.py``).
- **the workloads**: the trials of a study as one vmapped training with the metric every ``eval_every``
  steps (:func:`~diyopt.analysis.benchmarking.workloads.train_batched`), a loop of trainings
  (:func:`~diyopt.analysis.benchmarking.workloads.train`) for a ``torch.optim`` class or where vmap refuses.

Under torchrun a rank may run only a slice of a task's trials (:func:`run_part`); :func:`merge_parts` joins
the slices into the row.

Each study gives, per trial, the criterion's value after the budget (``inf`` when the run diverged) and,
where the criterion is the loss, the first step whose loss is at or below the target. :func:`summarize`
turns those into the row: medians over studies and their bootstrap 95% intervals
(:mod:`~diyopt.analysis.benchmarking.intervals`).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from diyopt.core.contract import Optimizer

from .intervals import median_interval
from .tasks import Task, for_studies
from .tuning import (
    SCHEDULE_KEYS,
    STUDY,
    points,
    schedule_factor,
    schedule_of,
    space_for,
    torch_kwargs,
    tunable,
    tunable_studies,
)
from .workloads import Workload, train, train_batched, train_torch

CI_OF = ("attempts", "best_metric", "steps_to_target", "seconds_to_target")
LOOP_TORCH = "loop (torch.optim class: one fit per trial)"


def is_torch_class(optimizer: Any) -> bool:
    return isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)


def space(label: str, optimizer: Optimizer | type, box: Mapping | None) -> dict:
    """The box tuned for ``label``: its search space less the hyperparameters the spec fixes
    (``adam:lr=1e-2`` tunes ``beta1`` only; ``adam:betas=0.9/0.99`` tunes ``lr`` only). A ``torch.optim``
    class is tuned in the space of the diyopt optimizer of its name (``torch.optim.Adam``: ``adam``'s)."""
    from diyopt.optim import parse

    if is_torch_class(optimizer):
        return space_for(optimizer.__name__.lower(), optimizer, box)
    full = space_for(_space_name(label), optimizer, box)
    try:
        fixed = set(parse(label)[2])
    except (ValueError, TypeError):
        fixed = set()
    if "lr" in fixed:  # a fixed lr is a fixed step: no schedule either
        fixed |= set(SCHEDULE_KEYS)
    return {k: v for k, v in full.items() if ("betas" if k == "beta1" else k) not in fixed}


def _space_name(label: str) -> str:
    from diyopt.optim import parse

    if isinstance(label, str):
        try:
            target, attr, _ = parse(label)
            return target if attr is None else attr
        except (ValueError, TypeError):
            pass
    return label


def _own(params: Mapping) -> dict:
    return {k: v for k, v in params.items() if k != STUDY}


def run_task(
    task: Task,
    label: str,
    optimizer: Optimizer | type,
    *,
    trials: int,
    seeds: Sequence[int],
    space_box: Mapping | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """One task x optimizer: ``len(seeds)`` studies of ``trials`` Sobol points each. Returns the row."""
    part = run_part(task, label, optimizer, trials=trials, seeds=seeds, space_box=space_box, dtype=dtype)
    return merge_parts(task, label, [part])


def trial_slice(n: int, part: int, parts: int) -> range:
    """Slice ``part`` of ``parts`` of the trials ``0..n-1``: contiguous, sizes differing by at most one."""
    return range(part * n // parts, (part + 1) * n // parts)


def run_part(
    task: Task | Workload,
    label: str,
    optimizer: Optimizer | type,
    *,
    trials: int,
    seeds: Sequence[int],
    space_box: Mapping | None = None,
    dtype: torch.dtype = torch.float32,
    part: tuple[int, int] = (0, 1),
) -> dict:
    """Slice ``part = (i, n)`` of the trials of a task (or workload) x optimizer: every study's outcomes for
    Sobol points ``trial_slice(trials, i, n)``, run as one computation (a rank's share under torchrun).

    Returns ``{"studies": [per-study outcome lists], "engine", "seconds", "trials", "by_loss"}``; :func:`merge_parts`
    joins the slices, in order, into the row one process would have written.
    """
    box = space(label, optimizer, space_box)
    keys = list(box)
    trials = trials if keys else 1  # nothing left to tune: one trial, the spec as given
    every = [tuple(pt[k] for k in keys) for pt in points(box, trials)]
    pts = [every[k] for k in trial_slice(trials, *part)]
    t0 = time.perf_counter()
    if not pts:  # more ranks than trials: an empty share
        studies, engine = [_empty(isinstance(task, Workload)) for _ in seeds], None
    elif isinstance(task, Workload):
        studies, engine = _workload_studies(task, optimizer, keys, pts, seeds, dtype)
    elif is_torch_class(optimizer):
        studies = [_torch_study(task, optimizer, keys, pts, s, dtype) for s in seeds]
        engine = LOOP_TORCH
    else:
        studies, engine = _swept_studies(task, optimizer, keys, pts, seeds, dtype)
    # the criterion is the loss (its curve tells when it was reached) unless the task has its own metric
    by_loss = isinstance(task, Workload) or task.problem(seeds[0], dtype).metric is None
    return {
        "studies": studies,
        "engine": engine,
        "seconds": time.perf_counter() - t0,
        "trials": trials,
        "by_loss": by_loss,
    }


def _empty(workload: bool) -> dict:
    return {"values": [], "steps": [], **({"passed": [], "seconds": []} if workload else {})}


def merge_parts(task: Task | Workload, label: str, parts: list[dict]) -> dict:
    """The row of a task x optimizer from its trial slices (:func:`run_part`, in slice order): each study's
    per-trial lists concatenated, so attempts count trials in Sobol order as in one process; ``seconds`` is
    the slowest slice's (they run side by side)."""
    studies = [
        {k: [x for p in parts for x in p["studies"][i][k]] for k in parts[0]["studies"][i]}
        for i in range(len(parts[0]["studies"]))
    ]
    engine = "; ".join(dict.fromkeys(p["engine"] for p in parts if p["engine"] is not None))
    seconds = max(p["seconds"] for p in parts)
    trials, by_loss = parts[0]["trials"], parts[0]["by_loss"]
    return summarize(task, label, studies, by_loss=by_loss, seconds=seconds, trials=trials, engine=engine)


def _swept_studies(task: Task, optimizer: Optimizer, keys: list, pts: list, seeds: Sequence[int], dtype):
    """Every study's trials: one sweep for all of them when the loss is the same function in every study
    (as in every built-in task: only the start and the gradient effect depend on the seed), else one per study."""
    from diyopt.engines import sweep

    problems = [task.problem(s, dtype) for s in seeds]
    loss0, start0 = problems[0].loss, problems[0].params
    with torch.no_grad():
        same_loss = all(torch.equal(p.loss(start0), loss0(start0)) for p in problems[1:])
    grid = {"point": pts}
    if not same_loss:
        out, engines = [], set()
        for p in problems:
            r = _quiet_sweep(
                sweep, p.loss, p.params, tunable(optimizer, keys, p.effect, task.steps), task.steps, grid=grid
            )
            engines.add(_engine(r))
            out.append(_outcomes(r, range(len(pts)), p.metric or p.loss, task.target, strip=False))
        return out, "; ".join(sorted(engines))
    effect = for_studies([p.effect for p in problems])
    opt = tunable_studies(optimizer, keys, effect, task.steps)

    def loss(params):  # the study leaf enters with weight 0: a zero gradient, never "unused"
        return loss0(_own(params)) + 0 * params[STUDY]

    starts = {
        s: {**p.params, STUDY: torch.tensor(float(i), dtype=dtype)} for i, (s, p) in enumerate(zip(seeds, problems))
    }
    r = _quiet_sweep(
        sweep, loss, starts[seeds[0]], opt, task.steps, grid=grid, seeds=list(seeds), init=lambda s: starts[s]
    )
    n = len(seeds)  # runs are trials x studies, the study varying fastest
    out = [
        _outcomes(r, range(i, len(pts) * n, n), p.metric or p.loss, task.target, strip=True)
        for i, p in enumerate(problems)
    ]
    return out, _engine(r)


def _quiet_sweep(sweep, *args, **kwargs):
    """The sweep, its loop-fallback warning kept out of the user's way (the row's ``engine`` says it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = sweep(*args, **kwargs)
    for w in caught:
        if "fallback" not in r.info:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return r


def _engine(r) -> str:
    return "loop (vmap refused the rule or loss)" if r.info.get("fallback") else r.info.get("engine", "vmap")


def _outcomes(r, runs, metric, target: float, strip: bool) -> dict:
    """Per trial of one study (its runs ``runs`` of sweep result ``r``): the criterion's value and the first
    step with loss <= target (read only for the passing trials)."""
    values, steps = [], []
    with torch.no_grad():
        for k in runs:
            params = r.run_params(k)
            m = float(metric(_own(params) if strip else params))
            values.append(m if math.isfinite(m) and not r.rows[k]["diverged"] else math.inf)
            steps.append(_first_below(r.losses[k], target))
    return {"values": values, "steps": steps}


def _first_below(curve: torch.Tensor, target: float) -> float:
    """The first step whose loss (before that step's update) is <= target; the budget when only the final
    params are (the curve holds the loss before each update, not after the last)."""
    below = (curve <= target).nonzero()
    return float(below[0, 0]) if len(below) else float(len(curve))


def effected(cls: type, names: list[str], effect, schedule=None) -> type:
    """``cls`` whose ``step`` rewrites the gradients with the task's ``effect`` (at its own step counter, from
    its own ``extra``) after the closure computed them and before torch's update reads them, and sets each
    group's ``lr`` to the trial's ``lr`` times :func:`~diyopt.analysis.benchmarking.tuning.schedule_factor`
    (as ``torch.optim.lr_scheduler.LambdaLR`` would) when ``schedule`` is given."""
    if effect is None and schedule is None:
        return cls

    class Effected(cls):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            self._bench_step = torch.zeros((), dtype=torch.int64)
            self._bench_lr = [g["lr"] for g in self.param_groups]
            leaves = self.param_groups[0]["params"]
            if effect is not None:
                self._bench_extra = effect.init(dict(zip(names, (p.detach() for p in leaves))))

        def step(self, closure=None):
            if schedule is not None:
                f = float(schedule_factor(self._bench_step, schedule))
                for g, lr in zip(self.param_groups, self._bench_lr):
                    g["lr"] = lr * f
            if effect is None:
                self._bench_step = self._bench_step + 1
                return super().step(closure)

            def with_effect():
                loss = closure()
                leaves = self.param_groups[0]["params"]
                with torch.no_grad():
                    grads, self._bench_extra = effect.apply(
                        {n: p.grad for n, p in zip(names, leaves)}, self._bench_extra, self._bench_step
                    )
                    for n, p in zip(names, leaves):
                        p.grad.copy_(grads[n])
                self._bench_step = self._bench_step + 1
                return loss

            return super().step(with_effect)

    Effected.__name__ = Effected.__qualname__ = cls.__name__
    return Effected


def _torch_study(task: Task, cls: type, keys: list, pts: list, seed: int, dtype) -> dict:
    """One study of a ``torch.optim`` class: one ``diyopt.fit`` per trial (the packaged path)."""
    from diyopt.engines import fit

    problem = task.problem(seed, dtype)
    metric = problem.metric or problem.loss
    values, steps = [], []
    for pt in pts:
        r = fit(
            problem.loss,
            problem.params,
            effected(cls, list(problem.params), problem.effect, schedule_of(keys, pt, task.steps)),
            task.steps,
            **torch_kwargs(cls, keys, pt),
        )
        with torch.no_grad():
            m = float(metric(r.params))
        ok = r.stop_reason != "diverged" and math.isfinite(m)
        values.append(m if ok else math.inf)
        steps.append(_first_below(r.losses, task.target))
    return {"values": values, "steps": steps}


def run_workload(
    workload: Workload,
    label: str,
    optimizer: Optimizer | type,
    *,
    trials: int,
    seeds: Sequence[int],
    space_box: Mapping | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """One workload x optimizer under the same rules. Per study: the fastest passing trial's steps and seconds
    to the target."""
    part = run_part(workload, label, optimizer, trials=trials, seeds=seeds, space_box=space_box, dtype=dtype)
    return merge_parts(workload, label, [part])


def _workload_studies(workload: Workload, optimizer, keys: list, pts: list, seeds: Sequence[int], dtype):
    """Every study's trials: one vmapped training per study for a diyopt optimizer (:func:`train_batched`),
    a loop of trainings for a ``torch.optim`` class or where vmap refuses the rule or the model (the
    engine says which)."""
    studies, engine = [], None
    for seed in seeds:
        problem = workload.problem(seed, dtype)
        if is_torch_class(optimizer):
            results = [
                train_torch(
                    workload,
                    problem,
                    effected(optimizer, list(problem.params), None, schedule_of(keys, pt, workload.steps)),
                    torch_kwargs(optimizer, keys, pt),
                )
                for pt in pts
            ]
            engine = f"loop (torch.optim class; validation every {workload.eval_every} steps)"
        else:
            opt = tunable(optimizer, keys, None, workload.steps)
            results = None
            if not engine or engine.startswith("vmap"):
                try:
                    results = train_batched(workload, problem, opt.build, pts)
                    engine = f"vmap ({len(pts)} trials at once; validation every {workload.eval_every} steps)"
                except Exception as e:  # vmap refused the rule or the model: the loop, said in the row
                    engine = f"loop (vmap refused: {type(e).__name__}; validation every {workload.eval_every} steps)"
            if results is None:
                results = [train(workload, problem, opt.build(point=pt)) for pt in pts]
        studies.append(
            {
                "values": [r["best"] for r in results],
                "passed": [math.isfinite(r["steps"]) for r in results],
                "steps": [r["steps"] for r in results],
                "seconds": [r["seconds"] for r in results],
            }
        )
    return studies, engine


def summarize(
    task: Task | Workload, label: str, studies: list[dict], *, by_loss: bool, seconds: float, trials: int, engine: str
) -> dict:
    """The row: per study, ``attempts`` (trials up to the first passing one, in Sobol order), the best value,
    the fewest steps (and, for workloads, seconds) a passing trial took; then the median over studies and
    its bootstrap 95% interval (``_lo`` / ``_hi``). Solved: more than half of the studies pass."""
    per: dict[str, list[float]] = {"attempts": [], "best_metric": [], "steps_to_target": [], "seconds_to_target": []}
    for st in studies:
        passed = st.get("passed") or [v <= task.target for v in st["values"]]
        first = next((k + 1 for k, ok in enumerate(passed) if ok), math.inf)
        per["attempts"].append(first)
        per["best_metric"].append(min(st["values"]))
        hits = [s for s, ok in zip(st["steps"], passed) if ok]
        per["steps_to_target"].append(min(hits) if hits else math.inf)
        if "seconds" in st:
            secs = [s for s, ok in zip(st["seconds"], passed) if ok]
            per["seconds_to_target"].append(min(secs) if secs else math.inf)
    n_solved = sum(math.isfinite(a) for a in per["attempts"])
    solved = n_solved > len(studies) / 2
    row: dict[str, Any] = {"task": task.name, "optimizer": label, "solved": solved}
    for key in CI_OF:
        vals = per[key]
        if not vals or (key == "steps_to_target" and not by_loss):
            row[key] = row[f"{key}_lo"] = row[f"{key}_hi"] = None
            continue
        row[key] = statistics.median(vals)
        row[f"{key}_lo"], row[f"{key}_hi"] = median_interval(vals)
        if key == "seconds_to_target":
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = (round(row[k], 4) for k in (key, f"{key}_lo", f"{key}_hi"))
    if not solved:
        row["attempts"] = math.inf
    row.update(
        seconds=round(seconds, 4),
        criterion=task.criterion,
        target=task.target,
        studies_solved=f"{n_solved}/{len(studies)}",
        trials=trials,
        engine=engine,
    )
    return row
