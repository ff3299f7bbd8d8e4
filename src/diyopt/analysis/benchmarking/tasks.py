"""The diagnostic suite: small problems, each one known failure mode of an optimizer, with one pass test.

A :class:`Task` builds, for a study's ``seed``, a :class:`Problem`: the starting params, the loss (the gap to
the known minimum, so ``f* = 0``), the criterion's *metric* (the loss itself, a distance to the known
optimum, or a held-out error) and, for the tasks whose gradient oracle is not the loss's own gradient
(noise, sparsity, delay, a moving target), an :class:`Effect` on the gradients. A task is passed when the
metric at the params after ``steps`` updates is ``<= target``.

How a task sees the step: the loss never does (``diyopt.sweep`` evaluates ``loss(params)``, one pure
function). The step lives in the optimizer's state instead: :func:`diyopt.analysis.benchmarking.tuning.with_effect` wraps the
tuned optimizer in a transform whose state holds a step counter (a tensor) beside the inner state, and
whose update rewrites the gradients with ``Effect.apply(grads, extra, step)`` before the inner rule sees
them. Noise is read from a table drawn once per study with ``torch.Generator().manual_seed(seed)`` and
indexed by that counter, so a run is a deterministic function of (seed, step), vmaps over trials (the
counter is a batched tensor, the table a constant) and is identical in the loop fallback.

Sources of the ideas (each task's ``source``): LightBench, the diagnostic benchmark of the HeavyBall project
(github.com/HomebrewML/HeavyBall, ``benchmark/``: saddle point, plateau, ill-conditioned and rotated
quadratics, layer-wise scale, noisy / sparse / delayed gradients, gradient noise scales, XOR-sequence RNNs,
grokking, moving targets, Rosenbrock / Rastrigin); DeepOBS (Schneider, Balles & Hennig, ICLR 2019: the noisy
quadratic problem ``quadratic_deep``); classic test functions (Rosenbrock 1960; Rastrigin 1974);
deep linear networks (Saxe, McClelland & Ganguli 2014) for exploding/vanishing gradients; grokking
(Power et al. 2022) for modular addition. The problems here are written from those descriptions, not copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]

LIGHTBENCH = "LightBench (HeavyBall benchmark/)"
DEEPOBS = "DeepOBS noisy quadratic"


class Effect(NamedTuple):
    """What the gradient oracle does to the loss's gradients at a step.

    ``init(params) -> extra`` (a tree of tensors, e.g. a buffer of past gradients) and
    ``apply(grads, extra, step) -> (grads, extra)``; ``step`` is a 0-dim int64 tensor, 0 at the first update.
    A tabled effect (noise, masks) also keeps its ``tables`` (``{name: (steps, ...)}``) and ``combine(g, row)``,
    so the tables of several studies can be stacked and read in one indexing (:func:`for_studies`).
    """

    init: Callable[[Params], Any]
    apply: Callable[[Params, Any, Tensor], tuple[Params, Any]]
    tables: Params | None = None
    combine: Callable[[Tensor, Tensor], Tensor] | None = None


class StudyEffect(NamedTuple):
    """The effects of several studies as one: ``apply(grads, extra, step, study)`` with ``study`` the run's
    study index (a 0-dim int64 tensor, batched inside vmap)."""

    init: Callable[[Params], Any]
    apply: Callable[[Params, Any, Tensor, Tensor], tuple[Params, Any]]


def for_studies(effects: list[Effect | None]) -> StudyEffect | None:
    """One :class:`StudyEffect` from the studies' effects (None when no study has one).

    Tabled effects are stacked, ``(studies, steps, ...)``, and read at ``[study, step]``; other effects
    (delays, a moving target) are applied once per study and the run's own result selected -- the same
    numbers as each study's own effect, so a study gives the same runs alone or stacked with others.
    """
    if all(e is None for e in effects):
        return None
    if any(e is None for e in effects):
        raise ValueError("either every study of a task has a gradient effect or none has")
    first = effects[0]
    if all(e.tables is not None for e in effects):
        stacked = {k: torch.stack([e.tables[k] for e in effects]) for k in first.tables}
        combine = first.combine

        def apply(grads, extra, step, study):
            at = step.clamp(max=next(iter(stacked.values())).shape[1] - 1)
            return {k: combine(g, stacked[k][study, at].to(g.dtype)) for k, g in grads.items()}, extra

        return StudyEffect(first.init, apply)

    tree = torch.utils._pytree

    def apply(grads, extra, step, study):
        outs = [e.apply(grads, extra, step) for e in effects]

        def pick(*xs):  # the run's own study's value, leaf by leaf
            return torch.stack(xs)[study] if isinstance(xs[0], Tensor) else xs[0]

        return tree.tree_map(pick, *[o[0] for o in outs]), tree.tree_map(pick, *[o[1] for o in outs])

    return StudyEffect(first.init, apply)


@dataclass(frozen=True)
class Problem:
    params: Params
    loss: Callable[[Params], Tensor]
    metric: Callable[[Params], Tensor] | None = None  # the criterion's value; None: the loss
    effect: Effect | None = None


@dataclass(frozen=True)
class Task:
    """One diagnostic task.

    Attributes:
      name: ``family-level`` (``quadratic_rotated-2``); family, level (1 easy .. 3 hard).
      tests: the failure mode it probes, in a few words.
      criterion: what ``metric`` measures (``"loss gap"``, ``"distance to x*"``, ...); pass: ``metric <= target``
        after ``steps`` updates.
      source: where the idea comes from.
      build: ``build(seed, dtype) -> Problem``.
    """

    name: str
    family: str
    level: int
    tests: str
    criterion: str
    target: float
    steps: int
    source: str
    build: Callable[[int, torch.dtype], Problem]

    def problem(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> Problem:
        return self.build(seed, dtype)

    def metric(self, problem: Problem, params: Params) -> Tensor:
        return (problem.metric or problem.loss)(params)


# ---------------------------------------------------------------- helpers


def _gen(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * salt + seed)


def _direction(seed: int, n: int, dtype) -> Tensor:
    """A random unit vector, the study's starting direction."""
    z = torch.randn(n, generator=_gen(seed, 1), dtype=torch.float64)
    return (z / z.norm()).to(dtype)


def _rotation(n: int) -> Tensor:
    """A fixed random orthogonal matrix (the same for every study: the task, not the start, is rotated)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=_gen(12345), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _at(table: Tensor, step: Tensor) -> Tensor:
    """``table[step]``, the last row past the end (vmaps: ``step`` may be a batched 0-dim tensor)."""
    return table[step.clamp(max=table.shape[0] - 1)]


def _tabled(tables: Params, combine: Callable[[Tensor, Tensor], Tensor]) -> Effect:
    """An effect that combines each gradient with its table's row at the step (noise, masks)."""

    def apply(grads, extra, step):
        return {k: combine(g, _at(tables[k], step).to(g.dtype)) for k, g in grads.items()}, extra

    return Effect(lambda params: (), apply, tables, combine)


def _noise_table(seed: int, steps: int, n: int, kind: str, scale: float, rho: float = 0.0) -> Tensor:
    """``(steps, n)`` noise, a deterministic function of ``seed``: white N(0, 1), heavy-tailed (a normal
    times a Pareto scale of tail index 1.5: infinite variance), or AR(1) ``e_t = rho e_{t-1} + sqrt(1 - rho^2) z_t``
    (unit marginal variance, correlation time ``1 / (1 - rho)``)."""
    g = _gen(seed, 2)
    z = torch.randn(steps, n, generator=g, dtype=torch.float64)
    if kind == "heavy":  # z times a Pareto scale, P(s > x) = x^-1.5 (x >= 1): tail index 1.5, no variance
        u = torch.rand(steps, n, generator=g, dtype=torch.float64).clamp_min(1e-12)
        z = z * u.pow(-1.0 / 1.5) / 2.0
    elif kind == "correlated":
        e = torch.empty_like(z)
        e[0] = z[0]
        c = math.sqrt(1.0 - rho * rho)
        for t in range(1, steps):
            e[t] = rho * e[t - 1] + c * z[t]
        z = e
    return scale * z


# ---------------------------------------------------------------- the families


def _quadratic(seed, dtype, n, cond, rotated, effect=None, tables=None):
    """``f(x) = 0.5 (x - x*)^T A (x - x*)``, eigenvalues log-spaced in ``[1, cond]``, ``x* = 1``."""
    lam = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    a = (_rotation(n) * lam) @ _rotation(n).T if rotated else torch.diag(lam)
    a = a.to(dtype)
    x_star = torch.ones(n, dtype=dtype)

    def loss(p):
        d = p["x"] - x_star
        return 0.5 * d @ (a @ d)

    def distance(p):
        return (p["x"] - x_star).norm()

    return Problem({"x": x_star + _direction(seed, n, dtype)}, loss, distance, effect)


def quadratic_task(seed, dtype, *, n=8, cond=10.0, rotated=False):
    return _quadratic(seed, dtype, n, cond, rotated)


def noisy_quadratic(seed, dtype, *, kind, scale, rho=0.0, horizon, n=8, cond=10.0):
    """The quadratic with noise added to the gradient: ``g + noise[step]`` (DeepOBS's noisy quadratic)."""
    table = _noise_table(seed, horizon, n, kind, scale, rho).to(dtype)
    return _quadratic(seed, dtype, n, cond, True, _tabled({"x": table}, lambda g, e: g + e))


def sparse_quadratic(seed, dtype, *, keep, horizon, n=8, cond=10.0):
    """Each gradient entry is kept with probability ``keep`` at each step, else zero (not rescaled)."""
    mask = (torch.rand(horizon, n, generator=_gen(seed, 3), dtype=torch.float64) < keep).to(dtype)
    return _quadratic(seed, dtype, n, cond, False, _tabled({"x": mask}, lambda g, m: g * m))


def delayed_quadratic(seed, dtype, *, delay, n=8, cond=10.0):
    """The update at step ``t`` sees the gradient of step ``t - delay`` (zero for the first ``delay`` steps):
    a FIFO buffer of past gradients in the wrapper's state, as with stale asynchronous workers."""

    def init(params):
        return {k: torch.zeros(delay, *p.shape, dtype=p.dtype) for k, p in params.items()}

    def apply(grads, buf, step):
        out = {k: buf[k][0] for k in grads}
        return out, {k: torch.cat([buf[k][1:], g.unsqueeze(0)]) for k, g in grads.items()}

    return _quadratic(seed, dtype, n, cond, True, Effect(init, apply))


def scale_mismatch(seed, dtype, *, ratio, n=4):
    """Two layers whose optimal weights differ in scale by ``ratio``: ``f = 0.5|w1 - 1|^2 + 0.5|w2/r - 1|^2``
    (``w2* = r``, curvature ``1/r^2``): one global learning rate cannot suit both. Metric: the worst
    relative error ``max |w/w* - 1|``."""
    r = float(ratio)

    def loss(p):
        return 0.5 * ((p["layer1"] - 1) ** 2).sum() + 0.5 * ((p["layer2"] / r - 1) ** 2).sum()

    def rel_error(p):
        return torch.maximum((p["layer1"] - 1).abs().max(), (p["layer2"] / r - 1).abs().max())

    d = 0.1 * _direction(seed, 2 * n, dtype)
    return Problem({"layer1": d[:n].clone(), "layer2": d[n:].clone()}, loss, rel_error)


def saddle(seed, dtype, *, eps, n=4):
    """``f = 0.5|x|^2 - 0.5 y^2 + 0.25 y^4 + 0.25`` (minima at ``y = +-1``, f* = 0), started at the saddle's
    ridge, ``y = +-eps``: the escape is along a direction whose gradient is ``~eps``."""

    def loss(p):
        x, y = p["x"], p["y"]
        return 0.5 * (x**2).sum() - 0.5 * y**2 + 0.25 * y**4 + 0.25

    sign = 1.0 if torch.rand((), generator=_gen(seed, 4)) < 0.5 else -1.0
    return Problem(
        {
            "x": torch.ones(n, dtype=dtype) + 0.1 * _direction(seed, n, dtype),
            "y": torch.tensor(sign * eps, dtype=dtype),
        },
        loss,
    )


def plateau(seed, dtype, *, radius, n=4):
    """``f = 1 - exp(-|x|^2 / 2)`` started at ``|x| = radius``: the gradient there is
    ``radius * exp(-radius^2 / 2)``, a plateau an optimizer must cross at a sensible speed."""

    def loss(p):
        return -torch.expm1(-0.5 * (p["x"] ** 2).sum())

    return Problem({"x": radius * _direction(seed, n, dtype)}, loss)


def rosenbrock(seed, dtype, *, n):
    """Extended Rosenbrock ``sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``, from ``(-1.2, 1, -1.2, ...)``
    slightly perturbed; f* = 0 at ones."""
    x0 = torch.tensor([-1.2 if i % 2 == 0 else 1.0 for i in range(n)], dtype=dtype)

    def loss(p):
        x = p["x"]
        return (100 * (x[1:] - x[:-1] ** 2) ** 2).sum() + ((1 - x[:-1]) ** 2).sum()

    return Problem({"x": x0 + 0.05 * _direction(seed, n, dtype)}, loss)


def rastrigin(seed, dtype, *, n, amplitude, start):
    """Rastrigin ``A n + sum x^2 - A cos(2 pi x)`` (f* = 0 at 0, local minima near every integer point),
    started at ``|x_i| ~ start``: the optimizer must not settle in the nearest local minimum."""

    def loss(p):
        x = p["x"]
        return amplitude * n + (x**2 - amplitude * torch.cos(2 * math.pi * x)).sum()

    signs = torch.where(torch.rand(n, generator=_gen(seed, 5)) < 0.5, -1.0, 1.0).to(dtype)
    return Problem({"x": signs * start + 0.1 * _direction(seed, n, dtype)}, loss)


def deep_linear(seed, dtype, *, depth, init):
    """A deep linear chain of scalars, ``f = 0.5 (prod_i w_i - 2)^2``, all ``w_i ~ init``: the gradient of
    each layer is the product of all the others, ``init^(depth-1)`` -- vanishing for ``init < 1``,
    exploding for ``init > 1`` (Saxe et al. 2014)."""

    def loss(p):
        return 0.5 * (p["w"].prod() - 2.0) ** 2

    return Problem({"w": init * (1 + 0.01 * _direction(seed, depth, dtype))}, loss)


def moving_target(seed, dtype, *, omega, radius=1.0):
    """Track ``c(t) = radius (cos omega t, sin omega t)``: the oracle at step ``t`` is the gradient of
    ``0.5 |x - c(t)|^2``; ``loss`` (what the curves show) is the distance to the start's target ``c(0)``.
    Metric: the tracking error ``|x_T - c(T)|`` after the last update ``T = steps``."""

    def center(t):
        t = t.to(dtype) * omega
        return radius * torch.stack([torch.cos(t), torch.sin(t)])

    c0 = center(torch.tensor(0))

    def apply(grads, extra, step):  # grad of 0.5|x - c(t)|^2 = (x - c0) - (c(t) - c0)
        return {"x": grads["x"] - (center(step) - c0)}, extra

    def loss(p):
        return 0.5 * ((p["x"] - c0) ** 2).sum()

    steps = _MOVING_STEPS

    def error(p):
        return (p["x"] - center(torch.tensor(steps))).norm()

    return Problem({"x": 0.1 * _direction(seed, 2, dtype)}, loss, error, Effect(lambda params: (), apply))


_MOVING_STEPS = 300


def rnn_xor(seed, dtype, *, length, hidden=8, batch=64):
    """A tanh RNN reads a bit sequence and must output ``x_0 XOR x_1`` at the end: the first two bits are
    the signal, the rest distractors it must carry the answer through. Metric: mean binary cross-entropy
    on the (fixed, full-batch) 64 sequences, the loss itself."""
    g = _gen(0, 6)  # the data is the task's; the seed draws the initial weights
    x = (torch.rand(batch, length, generator=g) < 0.5).to(dtype)
    y = (x[:, 0] != x[:, 1]).to(dtype)
    w = _gen(seed, 7)

    def rnd(*shape, scale):
        return (scale * torch.randn(*shape, generator=w, dtype=torch.float64)).to(dtype)

    params = {
        "w_in": rnd(2, hidden, scale=1.0),
        "w_h": rnd(hidden, hidden, scale=1 / math.sqrt(hidden)),
        "b": torch.zeros(hidden, dtype=dtype),
        "w_out": rnd(hidden, scale=1 / math.sqrt(hidden)),
        "b_out": torch.zeros((), dtype=dtype),
    }
    onehot = torch.stack([x, 1 - x], dim=-1)  # (batch, length, 2)

    def loss(p):
        h = torch.zeros(batch, hidden, dtype=dtype)
        for t in range(length):
            h = torch.tanh(onehot[:, t] @ p["w_in"] + h @ p["w_h"] + p["b"])
        logits = h @ p["w_out"] + p["b_out"]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y)

    return Problem(params, loss)


def modular_addition(seed, dtype, *, modulus, train_fraction=0.5, width=32, embed=8):
    """``(a + b) mod p`` from a one-hot embedding MLP, trained full-batch on ``train_fraction`` of the
    ``p^2`` pairs (a fixed split); metric: the error rate on the held-out pairs (generalization, the
    grokking setting of Power et al. 2022 without its 10^5 steps). The loss is the training cross-entropy."""
    p_ = modulus
    a, b = torch.meshgrid(torch.arange(p_), torch.arange(p_), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    perm = torch.randperm(p_ * p_, generator=_gen(0, 8))
    n_train = int(train_fraction * p_ * p_)
    tr, te = perm[:n_train], perm[n_train:]
    target = (a + b) % p_
    w = _gen(seed, 9)

    def rnd(*shape, scale):
        return (scale * torch.randn(*shape, generator=w, dtype=torch.float64)).to(dtype)

    params = {
        "embed": rnd(p_, embed, scale=1.0),
        "w1": rnd(2 * embed, width, scale=1 / math.sqrt(2 * embed)),
        "b1": torch.zeros(width, dtype=dtype),
        "w2": rnd(width, p_, scale=1 / math.sqrt(width)),
    }

    def logits(p, idx):
        h = torch.cat([p["embed"][a[idx]], p["embed"][b[idx]]], dim=-1)
        return torch.relu(h @ p["w1"] + p["b1"]) @ p["w2"]

    def loss(p):
        return torch.nn.functional.cross_entropy(logits(p, tr), target[tr])

    def error(p):
        return (logits(p, te).argmax(-1) != target[te]).to(dtype).mean()

    return Problem(params, loss, error)


# ---------------------------------------------------------------- the suite


def _task(family, level, tests, criterion, target, steps, source, fn, **kw) -> Task:
    def build(seed, dtype, _fn=fn, _kw=kw):
        return _fn(seed, dtype, **_kw)

    return Task(f"{family}-{level}", family, level, tests, criterion, target, steps, source, build)


def suite(name: str = "diagnostic") -> list[Task]:
    """The tasks of a suite (only ``"diagnostic"`` so far), in a fixed order."""
    if name != "diagnostic":
        raise ValueError(f"unknown suite {name!r}; known: 'diagnostic'")
    T: list[Task] = []
    dist = "distance to x*"
    gap = "loss gap f - f*"
    for lvl, cond in enumerate((1e2, 1e4, 1e6), 1):
        T.append(
            _task(
                "quadratic_diagonal",
                lvl,
                f"axis-aligned ill-conditioning, cond {cond:.0e}",
                dist,
                1e-3,
                300,
                LIGHTBENCH + "; DeepOBS",
                quadratic_task,
                cond=cond,
            )
        )
    for lvl, cond in enumerate((1e1, 1e2, 1e3), 1):
        T.append(
            _task(
                "quadratic_rotated",
                lvl,
                f"rotated ill-conditioning, cond {cond:.0e}",
                dist,
                1e-3,
                300,
                LIGHTBENCH,
                quadratic_task,
                cond=cond,
                rotated=True,
            )
        )
    for lvl, ratio in enumerate((1e1, 1e2, 1e3), 1):
        T.append(
            _task(
                "scale_mismatch",
                lvl,
                f"per-layer scale mismatch x{ratio:.0e}",
                "max relative error",
                1e-2,
                300,
                LIGHTBENCH + " (layer-wise scale)",
                scale_mismatch,
                ratio=ratio,
            )
        )
    for lvl, eps in enumerate((1e-2, 1e-5, 1e-9), 1):
        T.append(
            _task(
                "saddle",
                lvl,
                f"escape a saddle from {eps:.0e} off the ridge",
                gap,
                1e-3,
                200,
                LIGHTBENCH + " (saddle point)",
                saddle,
                eps=eps,
            )
        )
    for lvl, radius in enumerate((3.0, 5.0, 7.0), 1):
        T.append(
            _task(
                "plateau",
                lvl,
                f"cross a plateau, gradient ~{radius * math.exp(-(radius**2) / 2):.0e}",
                gap,
                1e-3,
                300,
                LIGHTBENCH + " (plateau navigation)",
                plateau,
                radius=radius,
            )
        )
    for lvl, n in enumerate((2, 4, 8), 1):
        T.append(
            _task(
                "rosenbrock",
                lvl,
                f"curved valley, {n}-D Rosenbrock",
                gap,
                1e-3,
                1000,
                "Rosenbrock 1960; " + LIGHTBENCH,
                rosenbrock,
                n=n,
            )
        )
    for lvl, (amp, start) in enumerate(((1.0, 1.2), (3.0, 2.1), (10.0, 2.1)), 1):
        T.append(
            _task(
                "rastrigin",
                lvl,
                f"many local minima, amplitude {amp:g}",
                gap,
                1e-2,
                300,
                "Rastrigin 1974; " + LIGHTBENCH,
                rastrigin,
                n=2,
                amplitude=amp,
                start=start,
            )
        )
    for lvl, scale in enumerate((0.1, 1.0, 10.0), 1):
        T.append(
            _task(
                "noise_white",
                lvl,
                f"white gradient noise, sigma {scale:g}",
                dist,
                5e-2,
                500,
                DEEPOBS + "; " + LIGHTBENCH,
                noisy_quadratic,
                kind="white",
                scale=scale,
                horizon=500,
            )
        )
    for lvl, scale in enumerate((0.1, 1.0, 10.0), 1):
        T.append(
            _task(
                "noise_heavy",
                lvl,
                f"heavy-tailed (tail 1.5) gradient noise, scale {scale:g}",
                dist,
                5e-2,
                500,
                LIGHTBENCH + " (gradient noise)",
                noisy_quadratic,
                kind="heavy",
                scale=scale,
                horizon=500,
            )
        )
    for lvl, rho in enumerate((0.9, 0.99, 0.999), 1):
        T.append(
            _task(
                "noise_correlated",
                lvl,
                f"AR(1) gradient noise, rho {rho:g}, sigma 0.05",
                dist,
                5e-2,
                500,
                LIGHTBENCH + " (gradient noise)",
                noisy_quadratic,
                kind="correlated",
                scale=0.05,
                rho=rho,
                horizon=500,
            )
        )
    for lvl, keep in enumerate((0.5, 0.1, 0.02), 1):
        T.append(
            _task(
                "sparse",
                lvl,
                f"sparse gradients, {keep:.0%} of entries per step",
                dist,
                1e-2,
                500,
                LIGHTBENCH + " (sparse gradients)",
                sparse_quadratic,
                keep=keep,
                horizon=500,
            )
        )
    for lvl, delay in enumerate((2, 8, 32), 1):
        T.append(
            _task(
                "delayed",
                lvl,
                f"gradients {delay} steps stale",
                dist,
                5e-2,
                500,
                LIGHTBENCH + " (delayed gradients)",
                delayed_quadratic,
                delay=delay,
            )
        )
    for lvl, depth in enumerate((8, 16, 32), 1):
        T.append(
            _task(
                "deep_linear_vanishing",
                lvl,
                f"vanishing gradients, depth {depth}, init 0.7",
                gap,
                1e-4,
                500,
                "Saxe et al. 2014; " + LIGHTBENCH,
                deep_linear,
                depth=depth,
                init=0.7,
            )
        )
    for lvl, depth in enumerate((8, 16, 32), 1):
        T.append(
            _task(
                "deep_linear_exploding",
                lvl,
                f"exploding gradients, depth {depth}, init 1.3",
                gap,
                1e-4,
                500,
                "Saxe et al. 2014; " + LIGHTBENCH,
                deep_linear,
                depth=depth,
                init=1.3,
            )
        )
    for lvl, omega in enumerate((0.01, 0.03, 0.1), 1):
        T.append(
            _task(
                "moving_target",
                lvl,
                f"track a target circling at {omega:g} rad/step",
                "tracking error",
                5e-2,
                _MOVING_STEPS,
                LIGHTBENCH + " (moving target)",
                moving_target,
                omega=omega,
            )
        )
    for lvl, length in enumerate((4, 8), 1):
        T.append(
            _task(
                "rnn_xor",
                lvl,
                f"XOR of the first 2 bits after {length} steps (RNN memory)",
                "train BCE",
                5e-2,
                300,
                LIGHTBENCH + " (XOR sequence)",
                rnn_xor,
                length=length,
            )
        )
    for lvl, p in enumerate((7, 11), 1):
        T.append(
            _task(
                "modular_addition",
                lvl,
                f"(a + b) mod {p}, tiny MLP, generalize to held-out pairs",
                "held-out error",
                0.1,
                500,
                "Power et al. 2022; " + LIGHTBENCH + " (grokking)",
                modular_addition,
                modulus=p,
            )
        )
    return T
