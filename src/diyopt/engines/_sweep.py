"""The batched engine: ``diyopt.sweep`` runs a grid of hyperparameters x seeds as one computation.

Every run is the eager step of ``fit`` for one set of settings; ``torch.func.vmap`` maps that step over a
leading *run* axis, so params, optimizer state and the swept hyperparameters (per-run 0-dim tensors inside
the map) all carry that axis and 1,000 runs cost a handful of large tensor ops per step instead of 1,000
small ones. Run ``k`` equals ``fit`` with run ``k``'s settings, up to rounding.

How the eager engine steps: a rule that treats every element on its own (the built-ins but Adafactor,
Prodigy, Muon, SOAP; a user's ``elementwise`` rule) runs its update on all runs at once by plain
broadcasting -- params and state ``[runs, n]``, per-run scalars (swept settings, step counts) ``[runs,
1]`` -- and only the loss goes through vmap (:func:`_broadcast_steps`); any other rule (a global norm,
extra inputs, one that fails the first-step comparison with the vmapped update) runs wholly under vmap.
``SweepResult.info["update"]`` says which (``"broadcast"`` or ``"vmap"``), ``info["update_why"]`` why not
broadcast. The numbers are the same either way: the broadcast update is checked against the vmapped one.

What a seed means: the same as in :func:`diyopt.compare` (:mod:`diyopt.starts`): seed 0 starts at
``params``, seed ``s > 0`` at ``params + 0.1 (1 + |params|) z``, ``z ~ N(0, 1)`` drawn with
``torch.Generator().manual_seed(s)``; ``init(s)`` replaces that rule when given. Without ``seeds`` every
run starts at ``params``.

What ``tol`` means: the same as in :func:`diyopt.compare`: a run reaches it at the first step ``i`` with
``f(x_i) - f* <= tol * (f(x_0) - f*)`` (the gap to ``f*`` cut by ``1/tol``), where ``f*`` is ``f_star``
when known, else the lowest loss any run of the sweep reached.

What "best" means: the setting (grid point) with the lowest *median* final loss over its seeds, a
diverged run counting as ``inf`` (:meth:`SweepResult.best`); :meth:`SweepResult.by_setting` has the
medians of every setting.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from diyopt._util.format import NOT_REACHED, format_value
from diyopt._util.progress import CompileNotice, StepBar
from diyopt._util.validate import positive_integer
from diyopt.core.checks import first_step_check
from diyopt.core.contract import Optimizer, building_per_run
from diyopt.core.modules import bind_module
from diyopt.core.starts import perturbed
from diyopt.core.tree import FlatLayout, Params, as_params
from diyopt.engines._extended import engine_update, functional_grad_fn
from diyopt.engines.compiled import call_compiled

ENGINES = ("vmap", "compiled")


@dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
      rows: one dict per run: the swept hyperparameters, ``seed``, ``final_loss`` (the loss at the final
        params), ``steps_to_tol`` (the first step that passes the tolerance test of the module docstring,
        None when never or without ``tol``), ``diverged`` (a non-finite loss at some step), ``run`` (its
        index).
      losses: ``(runs, steps)`` tensor, every run's loss curve (``losses[k, i]`` before update ``i``).
      params: the final params, ``dict[str, Tensor]`` with a leading run axis.
      seconds: wall time of the runs (compilation excluded); compile_seconds: the first call's extra time.
      info: engine, batch size, number of batches, ``tol``, ``f_star`` and where it came from, ``update``
        (how the eager step ran the rule: ``"broadcast"`` or ``"vmap"``, see the module docstring) and, when
        not broadcast, ``update_why``.
    """

    rows: list[dict]
    losses: Tensor
    params: Params
    seconds: float
    compile_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def hyperparameters(self) -> list[str]:
        """The swept hyperparameters' names, in the grid's order."""
        return [k for k in self.rows[0] if k not in _ROW_FIELDS]

    def by_setting(self) -> list[dict]:
        """One dict per setting (grid point), in grid order: its hyperparameters, ``seeds`` (runs),
        ``final_loss`` (median over seeds, a diverged run counting as ``inf``), ``final_loss_min`` /
        ``final_loss_max``, ``diverged`` (how many runs), ``reached`` (``"k/n"`` runs that met ``tol``)
        and ``steps_to_tol`` (median over seeds, ``inf`` where most never met it; None without ``tol``).
        """
        keys = self.hyperparameters()
        groups: dict[tuple, list[dict]] = {}
        for row in self.rows:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
        out = []
        for values, rows in groups.items():
            finals = [
                r["final_loss"] if math.isfinite(r["final_loss"]) and not r["diverged"] else math.inf for r in rows
            ]
            summary = dict(zip(keys, values))
            summary.update(
                seeds=len(rows),
                final_loss=_median(finals),
                final_loss_min=min(finals),
                final_loss_max=max(finals),
                diverged=sum(r["diverged"] for r in rows),
            )
            if self.info.get("tol") is not None:
                steps = [math.inf if r["steps_to_tol"] is None else float(r["steps_to_tol"]) for r in rows]
                summary["reached"] = f"{sum(math.isfinite(v) for v in steps)}/{len(rows)}"
                summary["steps_to_tol"] = _median(steps)
            else:
                summary["reached"] = summary["steps_to_tol"] = None
            out.append(summary)
        return out

    def best(self) -> dict:
        """The best setting: the lowest median final loss over seeds (:meth:`by_setting`'s row); ties go to
        fewer median steps to ``tol``, then to the first in grid order."""
        settings = [s for s in self.by_setting() if math.isfinite(s["final_loss"])]
        if not settings:
            raise ValueError("no setting has a finite median final loss: most runs of every setting diverged")
        return min(
            settings, key=lambda s: (s["final_loss"], s["steps_to_tol"] if s["steps_to_tol"] is not None else math.inf)
        )

    def best_run(self) -> dict:
        """The single run (row) with the lowest finite final loss -- one run, not a setting; see :meth:`best`."""
        finite = [r for r in self.rows if math.isfinite(r["final_loss"])]
        if not finite:
            raise ValueError("every run diverged: there is no best run")
        return min(finite, key=lambda r: r["final_loss"])

    def run_params(self, k: int) -> Params:
        """Run ``k``'s final params."""
        return {n: v[k] for n, v in self.params.items()}

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The table as CSV text, one line per run, written to ``path`` when given (as
        :meth:`Comparison.to_csv <diyopt.compare.Comparison.to_csv>`); parameters with at most 8 elements
        get a column per element (``a[0]``)."""
        import io

        small = {n: v for n, v in self.params.items() if v[0].numel() <= 8}
        columns = list(self.rows[0]) + [f"{n}[{i}]" for n, v in small.items() for i in range(v[0].numel())]
        with io.StringIO(newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            reached = self.info.get("tol") is not None
            for k, row in enumerate(self.rows):
                values = [
                    NOT_REACHED if c == "steps_to_tol" and reached and row[c] is None else format_value(row[c])
                    for c in row
                ]
                values += [repr(float(x)) for v in small.values() for x in v[k].reshape(-1)]
                writer.writerow(values)
            text = f.getvalue()
        if path is not None:
            with open(path, "w", newline="") as out:
                out.write(text)
        return text

    def __repr__(self) -> str:
        diverged = sum(r["diverged"] for r in self.rows)
        return (
            f"SweepResult(runs={len(self.rows)}, steps={self.losses.shape[1]}, diverged={diverged}, "
            f"seconds={self.seconds:.3g})"
        )


_ROW_FIELDS = ("run", "seed", "final_loss", "steps_to_tol", "diverged")


def _median(values: Sequence[float]) -> float:
    """The median, with ``inf`` entries allowed (``statistics.median`` sorts them last)."""
    import statistics

    return float(statistics.median(values))


def sweep(
    loss_fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor] | torch.nn.Module,
    optimizer: Optimizer,
    steps: int,
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: Sequence[int] | int | None = None,
    init: Callable[[int], Params] | None = None,
    tol: float | None = None,
    f_star: float | None = None,
    engine: str = "vmap",
    batch_size: int | None = None,
    memory_bytes: int | None = None,
    chunk: int = 8,
    progress: bool | None = False,
) -> SweepResult:
    """Run every combination of ``grid`` x ``seeds`` as one vectorized fit.

    Args:
      loss_fn, params, optimizer, steps: as in :func:`diyopt.fit`; ``optimizer`` is a diyopt optimizer
        built by a factory (``diyopt.optim.adam()``, a user's ``elementwise`` rule), so it can be rebuilt
        with per-run hyperparameters. With an ``nn.Module`` the loss may call it or close over it, as in
        ``fit``; the module itself is left as it was (many runs, no one result: see ``run_params``).
      grid: ``{hyperparameter: [values]}``, e.g. ``{"lr": [1e-3, 1e-2], "betas": [(0.9, 0.999)]}``; runs
        are the Cartesian product, in the order given (the last key varies fastest), then the seeds.
      seeds: a list of seeds or a count ``n`` (seeds ``0..n-1``); see the module docstring for their meaning.
      init: ``init(seed) -> params``, the starting point of a seed's runs.
      tol: the tolerance of the module docstring's test, ``0 < tol < 1``: each row's ``steps_to_tol`` counts
        the updates before the gap to ``f*`` first shrank by the factor ``tol``.
      f_star: the known minimum of ``loss_fn``; default: the lowest loss any run reached.
      engine: ``"vmap"`` (eager ``torch.func.vmap``) or ``"compiled"`` (the vmapped steps compiled; batches
        are padded to one size so one graph serves all of them).
      chunk: steps per vmapped (or compiled) call; the leftover steps run in one eager call.
      batch_size / memory_bytes: runs per vectorized batch; by default as many as fit in ``memory_bytes``
        (default: a quarter of the machine's memory, or of the GPU's free memory), estimated from the
        bytes one run allocates in a step.
      progress: a bar on stderr over the steps of every batch, with the best loss so far (``None``: when
        stderr is a terminal, as ``diyopt sweep`` does); with ``engine="compiled"`` the first call's
        "compiling" notice and its time too (shown on a terminal anyway).

    Returns:
      A :class:`SweepResult`: a row per run, the ``(runs, steps)`` loss curves and the final params.
      Runs whose loss goes non-finite are marked ``diverged``; they do not stop the others.
    """
    from diyopt._util.validate import check_steps

    steps = check_steps(steps)
    if tol is not None and not 0.0 < tol < 1.0:
        raise ValueError(f"Invalid tol value: {tol} (need 0 < tol < 1: the factor the gap to f* must shrink by)")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(map(repr, ENGINES))}")
    if not isinstance(optimizer, Optimizer) or optimizer.build is None:
        raise TypeError(
            "sweep needs a diyopt optimizer built by a factory (diyopt.optim.adam(...), an "
            f"elementwise rule called with its settings), got {type(optimizer).__name__}"
        )
    if isinstance(params, torch.nn.Module):  # the loss may call it or close over it (diyopt.core.modules)
        loss_fn, params = bind_module(loss_fn, params)
    params = as_params(params)
    grid = dict(grid or {})
    unknown = set(grid) - set(optimizer.hyperparams or {})
    if unknown:
        raise ValueError(
            f"grid names unknown hyperparameter(s) {sorted(unknown)}; known: {sorted(optimizer.hyperparams or {})}"
        )
    for k, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {values!r}")
        for v in values:  # each value goes through the optimizer's own validation (torch's wording)
            try:
                optimizer.replace_hyperparams(**{k: v})
            except (ValueError, TypeError) as e:
                raise ValueError(f"grid value {k}={format_value(v)} is not valid: {e}") from None
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds}")
        seeds = list(range(seeds))
    seed_list = list(seeds) if seeds is not None else [None]
    if init is not None and seeds is None:
        raise ValueError("init(seed) needs seeds=[...]")

    settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    runs = [(s, seed) for s in settings for seed in seed_list]
    starts = {seed: _start(params, seed, init) for seed in seed_list}
    # Check the loss once, eagerly, with fit's messages.
    first = starts[seed_list[0]]
    first_step_check(loss_fn, first)

    layout = FlatLayout.maybe(first) if optimizer.flattenable else None
    if batch_size is None:
        view, pack = _packing(layout)
        per_run = _bytes_per_run(loss_fn, pack(first), view, optimizer, steps)
        budget = memory_bytes or _default_memory(next(iter(first.values())).device)
        batch_size = max(1, min(len(runs), budget // max(per_run, 1)))
    batch_size = positive_integer(batch_size, "batch_size")
    batch_size = min(batch_size, len(runs))

    try:
        result = _batched(
            loss_fn, optimizer, steps, grid, runs, starts, tol, engine, batch_size, min(chunk, steps), layout, progress
        )
    except RuntimeError as e:
        reason = _not_vectorizable(e)
        if reason is None:
            raise
        import warnings

        note = (
            f"the loss or update rule cannot be vectorized with torch.func.vmap ({reason}); "
            f"ran the {len(runs)} runs one by one instead (engine='loop')"
        )
        warnings.warn(note, stacklevel=2)
        result = _sweep_loop(loss_fn, optimizer, steps, runs, starts, tol)
        result.info["fallback"] = note
    if tol is not None:
        result.info.update(_steps_to_tol(result.rows, result.losses, tol, f_star))
    return result


def _not_vectorizable(e: RuntimeError) -> str | None:
    """The reason vmap gave for refusing the rule or loss (data-dependent control flow, .item(), ...)."""
    text = " ".join(str(e).split())
    if "vmap" not in text and "Batching rule" not in text and "batched tensor" not in text.lower():
        return None
    text = text.removeprefix("vmap: ").split(". ")[0]
    return text[:200]


class _Fitted(NamedTuple):
    """The runs of one batch, fitted."""

    curves: Tensor  # (runs, steps): the loss before each update
    params: Params  # the final params, each with a leading run axis
    final_loss: Tensor  # (runs,): the loss at the final params
    seconds: float  # wall time of the steps (compilation excluded)
    compile_seconds: float  # the first compiled call's extra time, else 0


def _fit_runs(runs: list, batch_size: int, fit_batch: Callable[[list, int], _Fitted]) -> tuple:
    """The one loop over the runs, ``batch_size`` at a time; ``fit_batch(batch, index)`` fits a batch (the
    vmapped steps, or one eager ``fit``). Returns the rows, the ``(runs, steps)`` curves, the final params
    with a run axis, and the seconds and compile seconds summed over the batches."""
    curves, finals, rows = [], [], []
    seconds = compile_seconds = 0.0
    for index, lo in enumerate(range(0, len(runs), batch_size)):
        batch = runs[lo : lo + batch_size]
        fitted = fit_batch(batch, index)
        seconds += fitted.seconds
        compile_seconds += fitted.compile_seconds
        curves.append(fitted.curves)
        finals.append(fitted.params)
        for (setting, seed), curve, final_loss in zip(batch, fitted.curves, fitted.final_loss):
            rows.append(_row(len(rows), setting, seed, curve, final_loss))
    params = {k: torch.cat([f[k] for f in finals]) for k in finals[0]}
    return rows, torch.cat(curves), params, seconds, compile_seconds


def _sweep_loop(loss_fn, optimizer: Optimizer, steps: int, runs: list, starts: dict, tol) -> SweepResult:
    """Every run as its own eager ``fit`` (the reference engine), for rules vmap cannot map. A run that
    diverges stops at its last finite params; its curve is nan from there, as in the vectorized engine."""
    from diyopt.engines._fit import fit

    def fit_one(batch: list, index: int) -> _Fitted:
        ((setting, seed),) = batch
        t0 = time.perf_counter()
        r = fit(loss_fn, starts[seed], _rebuild(optimizer, setting), steps)
        curve = torch.full((steps,), math.nan, dtype=r.losses.dtype if len(r.losses) else torch.float64)
        curve[: len(r.losses)] = r.losses.detach()
        with torch.no_grad():
            final_loss = loss_fn(r.params).detach()
        params = {k: v.unsqueeze(0) for k, v in r.params.items()}
        return _Fitted(curve.unsqueeze(0), params, final_loss.unsqueeze(0), time.perf_counter() - t0, 0.0)

    rows, losses, params, seconds, _ = _fit_runs(runs, 1, fit_one)
    info = {"engine": "loop", "batch_size": 1, "batches": len(runs), "tol": tol}
    return SweepResult(rows, losses, params, seconds, 0.0, info)


def _batched(
    loss_fn,
    optimizer,
    steps,
    grid,
    runs,
    starts,
    tol,
    engine,
    batch_size,
    chunk,
    layout,
    progress,
) -> SweepResult:
    """The runs in batches of ``batch_size``, each one vmapped (and with ``engine="compiled"`` compiled)
    computation of ``chunk`` steps at a time; ``layout``: the runs' params on one flat buffer, or None."""
    view, pack = _packing(layout)
    ref = next(iter(starts[runs[0][1]].values()))
    steps_fn = _vmapped_steps(loss_fn, view, optimizer)
    path = {"update": "vmap", "why": "engine='compiled' traces the vmapped step" if engine == "compiled" else None}
    compiled = None
    if engine == "compiled":
        cpp = ref.device.type == "cpu"  # Inductor's C++ wrapper: no Python call per kernel (see engines)
        compiled = torch.compile(
            lambda h, c, s: steps_fn(h, c, s, chunk), fullgraph=True, options={"cpp_wrapper": True} if cpp else None
        )
    n_batches = math.ceil(len(runs) / batch_size)
    bar = StepBar.maybe(progress, steps * n_batches, desc=f"sweep {len(runs)} runs", label="best loss")
    notice = CompileNotice(progress) if compiled is not None else None

    def fit_batch(batch: list, index: int) -> _Fitted:
        padded = batch + [batch[-1]] * (batch_size - len(batch)) if compiled is not None else batch
        hyper = {k: _stack_values([s[k] for s, _ in padded], ref) for k in sorted(grid)}
        current = _stack([pack(starts[seed]) for _, seed in padded])
        state = torch.func.vmap(lambda h, c: _rebuild(optimizer, h).init(c))(hyper, current)
        # vmap returns what the init did not batch as expanded views: materialize them, so the compiled
        # step sees the same strides on every call (else it compiles a second graph).
        state = torch.utils._pytree.tree_map(lambda t: t.contiguous() if isinstance(t, Tensor) else t, state)
        if index == 0 and compiled is None:  # one decision for every batch: the rule's ops do not change
            path["why"] = _not_broadcastable(loss_fn, view, optimizer, hyper, current, state)
            if path["why"] is None:
                path["update"] = "broadcast"
        t0 = time.perf_counter()
        curve, current, state, first_call = _run(
            _broadcast_steps(loss_fn, view, optimizer) if path["update"] == "broadcast" else steps_fn,
            compiled,
            hyper,
            current,
            state,
            steps,
            chunk,
            bar,
            index * steps,
            notice if index == 0 else None,
        )
        compile_seconds = first_call if index == 0 and compiled is not None else 0.0
        seconds = time.perf_counter() - t0 - compile_seconds
        n = len(batch)
        if optimizer.eval_params is not None:  # report (and score) the evaluation params
            current = torch.func.vmap(lambda h, c, s: _rebuild(optimizer, h).eval_params(s, c))(hyper, current, state)
        final = {k: v[:n] for k, v in current.items()}
        final_loss = torch.func.vmap(lambda c: loss_fn(view(c)))(final).detach()
        params = final if layout is None else _unflatten_runs(layout, final["flat"])
        return _Fitted(curve[:n], params, final_loss, seconds, compile_seconds)

    rows, losses, final_params, seconds, compile_seconds = _fit_runs(runs, batch_size, fit_batch)
    if bar is not None:
        bar.close(steps * n_batches, _best(losses[:, -1]))
    info = {"engine": engine, "batch_size": batch_size, "batches": n_batches, "tol": tol, "update": path["update"]}
    if path["why"] is not None:
        info["update_why"] = path["why"]
    return SweepResult(rows, losses, final_params, seconds, compile_seconds, info)


# ---------------------------------------------------------------- the vmapped step


def _packing(layout: FlatLayout | None) -> tuple[Callable, Callable]:
    """``(view, pack)``: a run's params as the step sees them (``{"flat": buffer}`` on a layout, else the
    dict itself) and back: ``view(pack(p)) == p``."""
    if layout is None:
        return (lambda p: p), (lambda p: dict(p))
    plain = [len(s) == 1 for s in layout.shapes]  # a 1-D param's chunk has its shape already: no view op

    def view(p: Params) -> Params:
        chunks = p["flat"].split(layout.sizes)
        return {n: c if keep else c.view(s) for n, c, s, keep in zip(layout.names, chunks, layout.shapes, plain)}

    return view, (lambda p: {"flat": layout.flatten(p)})


def _rebuild(optimizer: Optimizer, hyper: Mapping[str, Any]) -> Optimizer:
    return optimizer.replace_hyperparams(**hyper) if hyper else optimizer


def _vmapped_steps(loss_fn: Callable, view: Callable, optimizer: Optimizer) -> Callable:
    """``steps(hyper, current, state, count) -> (current, state, losses)``: ``count`` steps of every run.

    The map is over runs: inside it each run sees its own 0-dim hyperparameters, so the optimizer is
    rebuilt there (once per call, not per step) and the steps are ``fit``'s eager step for that run.
    ``losses`` is ``(runs, count)``.
    """
    grad_and_value = torch.func.grad_and_value(lambda current: loss_fn(view(current)))
    grad_fn = functional_grad_fn(optimizer, loss_fn, view)

    def one_run(hyper: dict, current: Params, state: Any, count: int):
        update = engine_update(_rebuild(optimizer, hyper), grad_fn)
        losses = []
        for _ in range(count):
            grads, loss = grad_and_value(current)
            updates, new_state = update(grads, state, current, loss.detach())
            new = {k: v + updates[k] for k, v in current.items()}
            # The guard, per run: a step whose loss, gradients or new params are not finite is not taken
            # (the run keeps its last finite params and state) and records a nan loss: it diverged there.
            ok = torch.isfinite(loss)
            for t in (*grads.values(), *new.values()):
                ok = ok & torch.isfinite(t).all()
            current = {k: torch.where(ok, new[k], v) for k, v in current.items()}
            state = _keep_finite(ok, new_state, state)
            losses.append(torch.where(ok, loss.detach(), torch.full_like(loss.detach(), math.nan)))
        return current, state, torch.stack(losses)

    def steps(hyper: dict, current: Params, state: Any, count: int):
        return torch.func.vmap(lambda h, c, s: one_run(h, c, s, count))(hyper, current, state)

    return steps


def _keep_finite(ok: Tensor, new: Any, old: Any) -> Any:
    """``new`` where ``ok``, else ``old``, leaf by leaf (a state whose structure changed is taken as is)."""
    pytree = torch.utils._pytree
    new_leaves, spec = pytree.tree_flatten(new)
    old_leaves, old_spec = pytree.tree_flatten(old)
    if spec != old_spec:
        return new
    return pytree.tree_unflatten(
        [
            torch.where(ok, n, o) if isinstance(n, Tensor) and isinstance(o, Tensor) else n
            for n, o in zip(new_leaves, old_leaves)
        ],
        spec,
    )


# ---------------------------------------------------------------- the broadcast step (no vmap in the update)


def _broadcast_steps(loss_fn: Callable, view: Callable, optimizer: Optimizer) -> Callable:
    """``steps(hyper, current, state, count)`` as :func:`_vmapped_steps` computes it, with the update run
    on all runs at once by plain broadcasting (for a rule :func:`_not_broadcastable` accepted).

    In the update every run-axis tensor is ``[K, n]``: a param, gradient or param-shaped state leaf as its
    ``n`` values per run (an elementwise rule cannot tell: ``Optimizer.flattenable``), and a per-run scalar
    (a swept hyperparameter, the step count, a bias correction) as ``[K, 1]``, so ``lr * m`` is run ``k``'s
    ``lr_k m_k`` with torch's own broadcasting -- no batching rule per op. The gradient: the loss of every
    run from one vmapped forward (:func:`_vmapped_loss`), then one backward of their sum (seeded with ones); runs share no params, so
    ``d(sum_j f_j)/d(x_k) = grad f_k(x_k)``, exactly run ``k``'s gradient. The guard is the vmapped step's:
    a run whose loss, gradients or new params are not finite keeps its params and state, and records nan.
    """
    built: dict = {}  # the rule for all runs, built once per batch (the hyper dict of that batch)

    def steps(hyper: dict, current: Params, state: Any, count: int):
        ref = next(iter(current.values()))
        runs, cpu = ref.shape[0], ref.device.type == "cpu"  # a GPU would sync on the fast check
        if built.get("hyper") is not hyper:
            built.update(hyper=hyper, update=engine_update(_per_run(optimizer, hyper, runs), None))
        update = built["update"]
        state, spec = _to_broadcast(state, runs), _shapes(state)
        shapes = {k: v.shape for k, v in current.items()}
        flat = {k: v.reshape(runs, -1) for k, v in current.items()}
        named = {k for k, v in flat.items() if v.shape != shapes[k]}  # those the loss sees in another shape
        seed = torch.ones(runs, dtype=ref.dtype, device=ref.device)  # d(sum_k f_k)/d f_k, made once
        forward = _vmapped_loss(loss_fn, view, list(current), runs)
        losses = []
        for _ in range(count):
            # flat's tensors are autograd leaves (fresh from the update, which runs under no_grad)
            leaves = [v.requires_grad_() for v in flat.values()]
            with torch.enable_grad():
                loss = forward(*(v.view(shapes[k]) if k in named else v for k, v in flat.items()))
                grads = dict(zip(flat, torch.autograd.grad(loss, leaves, seed)))
            loss = loss.detach()
            with torch.no_grad():
                updates, new_state = update(grads, state, flat)
                new = {k: v + updates[k] for k, v in flat.items()}
                if cpu and _all_finite(loss, grads, new):  # the common step: the guard keeps every run's step
                    flat, state = new, new_state
                    losses.append(loss)
                    continue
                ok = torch.isfinite(loss)
                for t in (*grads.values(), *new.values()):
                    ok = ok & torch.isfinite(t).all(1)
                keep = ok.unsqueeze(1)
                flat = {k: torch.where(keep, new[k], v.detach()) for k, v in flat.items()}
                state = _keep_finite(keep, new_state, state)
                losses.append(torch.where(ok, loss, torch.full_like(loss, math.nan)))
        current = {k: v.detach().view(shapes[k]) for k, v in flat.items()}
        return current, _from_broadcast(state, spec), torch.stack(losses, 1)

    return steps


def _vmapped_loss(loss_fn: Callable, view: Callable, names: list[str], runs: int) -> Callable:
    """``losses(*tensors) -> (runs,)``: ``torch.func.vmap`` of the loss over the run axis, the map entered
    directly -- one functorch level, each tensor given its batch dim -- as ``vmap`` does inside, without
    its per-call argument checks and pytree passes (on the seed: 43 against 19 us per call, the gradient
    0.84x the plain-broadcast reference's instead of 1.05x). The same batching rules run the loss."""
    try:  # torch's private functorch entry points (torch 2.13); torch.func.vmap where they moved
        from torch._C._functorch import _add_batch_dim, _remove_batch_dim
        from torch._functorch.vmap import vmap_increment_nesting
    except ImportError:
        mapped = torch.func.vmap(lambda *ts: loss_fn(view(dict(zip(names, ts)))))
        return lambda *tensors: mapped(*tensors)

    def losses(*tensors: Tensor) -> Tensor:
        with vmap_increment_nesting(runs, "error") as level:  # randomness="error", vmap's default
            batched = dict(zip(names, (_add_batch_dim(t, 0, level) for t in tensors)))
            return _remove_batch_dim(loss_fn(view(batched)), level, runs, 0)

    return losses


def _per_run(optimizer: Optimizer, hyper: dict, runs: int) -> Optimizer:
    """The rule built once for all runs, each swept hyperparameter a ``[runs, 1]`` tensor."""
    with building_per_run():
        return _rebuild(optimizer, _to_broadcast(hyper, runs))


def _all_finite(loss: Tensor, grads: Params, new: Params) -> bool:
    """Whether every run's loss, gradients and new params are finite, from one sum: a nan or inf anywhere
    makes it non-finite (``inf - inf`` is nan). The converse does not hold (finite values may overflow
    the sum), so False only means "check each run"."""
    total = loss.sum()
    for k, g in grads.items():
        total = total + (g + new[k]).sum()
    return math.isfinite(float(total))


def _to_broadcast(tree: Any, runs: int) -> Any:
    """Run-axis leaves ``[K, ...]`` as ``[K, n]``, a per-run scalar ``[K]`` as ``[K, 1]`` (see
    :func:`_broadcast_steps`); other leaves (Python numbers, schedules) as they are."""
    return torch.utils._pytree.tree_map(
        lambda t: (
            t.reshape(runs, -1)
            if isinstance(t, Tensor) and t.dim() != 1
            else (t.unsqueeze(1) if isinstance(t, Tensor) else t)
        ),
        tree,
    )


def _shapes(tree: Any) -> tuple:
    """``(spec, shapes)`` of a tree's leaves, for :func:`_from_broadcast`."""
    leaves, spec = torch.utils._pytree.tree_flatten(tree)
    return spec, [t.shape if isinstance(t, Tensor) else None for t in leaves]


def _from_broadcast(tree: Any, shapes: tuple) -> Any:
    """The inverse of :func:`_to_broadcast` for a tree whose leaves had ``shapes`` (:func:`_shapes`)."""
    leaves, spec = torch.utils._pytree.tree_flatten(tree)
    old_spec, old = shapes
    if spec != old_spec:
        raise RuntimeError("the update changed its state's structure: the broadcast step cannot map it back")
    return torch.utils._pytree.tree_unflatten(
        [t.reshape(s) if isinstance(t, Tensor) else t for t, s in zip(leaves, old)], spec
    )


class _OpsSeen(TorchDispatchMode):
    """The ATen ops a computation calls that are neither pointwise nor plain allocation or copy."""

    # allocation and copies (an init inside the rule, a dtype cast) do not mix elements either
    ALLOWED = frozenset(
        {
            "zeros_like",
            "ones_like",
            "empty_like",
            "full_like",
            "zeros",
            "ones",
            "empty",
            "full",
            "scalar_tensor",
            "fill_",
            "zero_",
            "clone",
            "copy_",
            "_to_copy",
            "detach",
            "alias",
            "lift_fresh",
            "lift_fresh_copy",
            "empty_strided",
            "new_empty",
            "new_zeros",
            "new_ones",
            "new_full",
        }
    )

    def __init__(self):
        super().__init__()
        self.other: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if torch.Tag.pointwise not in func.tags and name not in self.ALLOWED:
            self.other.add(name)
        return func(*args, **(kwargs or {}))


def _not_broadcastable(loss_fn, view, optimizer: Optimizer, hyper, current: Params, state) -> str | None:
    """Why the update cannot run on all runs by broadcasting (:func:`_broadcast_steps`), or None when it can.

    It can when it is declared per element (``flattenable``), takes no extra inputs, calls only pointwise
    ATen ops (no reduction: a global norm would mix the runs), and its first update on this batch equals
    the vmapped update of every run (a rule reading ``.shape`` or ``.numel()`` would not).
    """
    if not optimizer.flattenable:
        return "the rule is not per element (Optimizer.flattenable)"
    if optimizer.extra_args:
        return f"the rule takes {', '.join(sorted(optimizer.extra_args))}"
    grads = torch.func.vmap(torch.func.grad(lambda c: loss_fn(view(c))))(current)
    expected = torch.func.vmap(lambda h, g, s, c: _rebuild(optimizer, h).update(g, s, c))(hyper, grads, state, current)
    runs = next(iter(current.values())).shape[0]
    seen = _OpsSeen()
    try:
        rule = _per_run(optimizer, hyper, runs)
        inputs = [_to_broadcast(tree, runs) for tree in (grads, state, current)]
        with seen:
            got = rule.update(*inputs)
        got = _from_broadcast(got, _shapes(expected))
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        return f"broadcasting fails: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    if seen.other:
        return f"the rule calls {', '.join(sorted(seen.other))}, not per element"
    if not _same_values(got, expected):
        return "its broadcast update differs from the vmapped one"
    return None


def _same_values(a: Any, b: Any) -> bool:
    """Equal trees, leaves equal up to rounding (``sqrt(eps)`` of the largest entry): a rule that mixes runs
    or reads its input's shape is off by far more."""
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            continue
        if x.shape != y.shape or x.dtype != y.dtype:  # a [K, 1] tensor promotes where a 0-dim one does not
            return False
        if x.numel() == 0:
            continue
        tol = torch.finfo(y.dtype).eps ** 0.5 if y.is_floating_point() else 0.0
        finite = torch.isfinite(y)
        scale = float(y[finite].abs().max()) if bool(finite.any()) else 0.0
        if not torch.isclose(x, y, rtol=tol, atol=tol * scale, equal_nan=True).all():
            return False
    return True


def _run(
    steps_fn: Callable,
    compiled: Callable | None,
    hyper,
    current,
    state,
    steps: int,
    chunk: int,
    bar=None,
    offset: int = 0,
    notice=None,
):
    """Whole chunks (compiled when asked), then the leftover steps eagerly (the same math).

    Returns the ``(runs, steps)`` losses, the final params and state, and the first call's extra time.
    ``bar`` (a :class:`~diyopt._util.progress.StepBar`) advances after each call, from ``offset`` (earlier
    batches' steps); ``notice`` announces the first compiled call.
    """
    curves = []
    first_call = per_call = 0.0
    calls = steps // chunk
    start = None
    for i in range(calls):
        if i == 0 and notice is not None:
            notice.start()
        t0 = time.perf_counter()
        if compiled is not None:
            current, state, c = call_compiled(compiled, hyper, current, state, may_compile=i == 0)
        else:
            current, state, c = steps_fn(hyper, current, state, chunk)
        if i == 0:
            first_call = time.perf_counter() - t0
            if notice is not None:
                notice.done(first_call)
            start = time.perf_counter()
        curves.append(c)
        if bar is not None:
            bar.update(offset + (i + 1) * chunk, _best(c[:, -1]))
    if calls > 1:
        per_call = (time.perf_counter() - start) / (calls - 1)
    if steps > calls * chunk:
        current, state, c = steps_fn(hyper, current, state, steps - calls * chunk)
        curves.append(c)
    return torch.cat(curves, 1), current, state, max(first_call - per_call, 0.0)


# ---------------------------------------------------------------- runs: starts, hyperparameters, rows


def _best(losses: Tensor) -> Tensor:
    """The lowest loss of a batch, diverged runs (nan, inf) left out; inf when all diverged. No sync: the
    bar reads it only when it redraws."""
    return torch.where(torch.isfinite(losses), losses, math.inf).min()


def _start(params: Params, seed: int | None, init: Callable | None) -> Params:
    if seed is None:
        return params
    if init is not None:
        start = as_params(init(seed))
        if list(start) != list(params) or any(start[k].shape != params[k].shape for k in params):
            raise ValueError(
                f"init({seed}) must return the same names and shapes as params: "
                f"{ {k: tuple(v.shape) for k, v in params.items()} }"
            )
        return start
    return perturbed(params, seed)


def _stack_values(values: list, ref: Tensor):
    """Per-run hyperparameter values as a run-axis tensor (a tuple of them for tuple values like betas)."""

    def column(vs):
        return torch.tensor([float(v) for v in vs], dtype=ref.dtype, device=ref.device)

    if isinstance(values[0], (tuple, list)):
        return tuple(column([v[i] for v in values]) for i in range(len(values[0])))
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise TypeError(f"grid values must be numbers or tuples of numbers, got {values[0]!r}")
    return column(values)


def _stack(trees: list[Params]) -> Params:
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}


def _unflatten_runs(layout: FlatLayout, flat: Tensor) -> Params:
    chunks = flat.split(layout.sizes, dim=1)
    return {n: c.reshape(flat.shape[0], *s) for n, c, s in zip(layout.names, chunks, layout.shapes)}


def _row(k: int, setting: dict, seed, curve: Tensor, final_loss: Tensor) -> dict:
    row = {"run": k}
    row.update({name: _plain(v) for name, v in setting.items()})
    row["seed"] = seed
    row["final_loss"] = float(final_loss)
    row["steps_to_tol"] = None  # filled in by _steps_to_tol once f* is known
    row["diverged"] = not bool(torch.isfinite(curve).all() and torch.isfinite(final_loss))
    return row


def _steps_to_tol(rows: list[dict], losses: Tensor, tol: float, f_star: float | None) -> dict:
    """Fill in each row's ``steps_to_tol``: the first ``i`` with ``f_i - f* <= tol (f_0 - f*)``, ``f*`` the
    known minimum or the lowest finite loss of any run (recorded or final), as :mod:`diyopt.compare` does."""
    curves = losses.detach().double().cpu()
    source = "given"
    if f_star is None:
        seen = torch.cat([curves.reshape(-1), torch.tensor([r["final_loss"] for r in rows], dtype=torch.float64)])
        seen = seen[torch.isfinite(seen)]
        f_star, source = (float(seen.min()) if len(seen) else math.nan), "best loss seen"
    gaps = curves - f_star
    ok = torch.isfinite(gaps) & (gaps <= tol * gaps[:, :1].clamp(min=0.0))
    for row, hits in zip(rows, ok):
        where = hits.nonzero()
        row["steps_to_tol"] = int(where[0, 0]) if len(where) else None
    return {"f_star": float(f_star), "f_star_source": source}


def _plain(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


# ---------------------------------------------------------------- memory: how many runs per batch


class _CountBytes(TorchDispatchMode):
    """Sum the bytes of every tensor an op returns: an upper bound on what one step keeps alive."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, Tensor):
                self.bytes += t.numel() * t.element_size()
        return out


def _bytes_per_run(loss_fn, current: Params, view, optimizer: Optimizer, steps: int) -> int:
    """Bytes one run needs: what one eager step allocates, its state, and its loss curve."""
    grad_and_value = torch.func.grad_and_value(lambda c: loss_fn(view(c)))
    state = optimizer.init(current)
    with _CountBytes() as counter:
        grads, loss = grad_and_value(current)
        engine_update(optimizer, functional_grad_fn(optimizer, loss_fn, view))(grads, state, current, loss)
    state_bytes = sum(
        t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, Tensor)
    )
    return counter.bytes + 2 * state_bytes + steps * loss.element_size()


def _default_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30


# ---------------------------------------------------------------- diyopt sweep (the command line)
