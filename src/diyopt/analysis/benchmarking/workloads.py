"""Workloads: small real learning problems on data scikit-learn ships (no downloads), scored AlgoPerf's way.

A :class:`Workload` is trained full-batch on a fixed training split; every ``eval_every`` updates its
*validation metric* is evaluated on a held-out split, and a trial reaches the target at the first
evaluation where ``metric <= target``. The score of a trial is

- ``steps_to_target``: the updates done at that evaluation (a multiple of ``eval_every``);
- ``seconds_to_target``: wall time from the trial's start to the end of that evaluation (training and
  evaluations, AlgoPerf's time-to-result), and the trial stops there, as in AlgoPerf.

The tuning rules are the diagnostic suite's (:mod:`diyopt.benchmarking.tuning`): the same Sobol points of
the same search space, ``S`` studies (a study's seed sets the initial weights; the split is fixed so the
target means the same thing in every study), solved when more than half of the studies reach the target.

Engine: the trials run **one by one** (a loop of ``torch.func.grad`` steps with the pure ``update``), not as
one ``diyopt.sweep``: a sweep returns only the final params, and the score needs the validation metric
every ``eval_every`` steps and the time at which it first passes.

The workloads (the problems after the classic scikit-learn examples; the metric and targets are ours):

- ``breast_cancer_logreg``: logistic regression (30 standardized features -> 1 logit, mean binary
  cross-entropy ``-mean(y log s(z) + (1 - y) log(1 - s(z)))``) on the Wisconsin breast-cancer data
  (569 samples); metric: validation error ``mean(1[z > 0] != y)``.
- ``digits_mlp``: an MLP 64 -> 32 (tanh) -> 10 (mean cross-entropy of the softmax) on the 8x8 digits
  (1,797 samples, pixels / 16); metric: validation error ``mean(argmax z != y)``.
- ``digits_autoencoder``: an autoencoder 64 -> 32 (tanh) -> 8 -> 32 (tanh) -> 64 on the same pixels;
  loss and metric: the mean squared reconstruction error (training / validation split; the pixels'
  mean variance is about 0.074, so the target 0.03 asks for about 60% of it explained).

scikit-learn is imported only when a workload builds its data (``pip install 'diyopt[data]'``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]

SKLEARN = "scikit-learn datasets"
MISSING = "the workloads need scikit-learn for their data: pip install 'diyopt[data]'"
AE_TARGET = 0.03
VAL_FRACTION = 0.25  # held out, stratified, random_state=0 (the same split in every study)


def require_sklearn():
    """scikit-learn's ``datasets`` and ``model_selection``, or a one-line ImportError naming the extra."""
    try:
        from sklearn import datasets, model_selection
    except ImportError:
        raise ImportError(MISSING) from None
    return datasets, model_selection


@dataclass(frozen=True)
class WorkloadProblem:
    params: Params
    loss: Callable[[Params], Tensor]  # the training loss (full batch)
    predict: Callable[[Params], Tensor]  # class predictions (or reconstructions) on the validation split
    y_val: Tensor
    val_metric: Callable[[Params], Tensor] | None = None  # None: the classification error below

    def metric(self, params: Params) -> Tensor:
        """The validation error: the fraction of validation samples ``predict`` gets wrong (or ``val_metric``)."""
        if self.val_metric is not None:
            return self.val_metric(params)
        return (self.predict(params) != self.y_val).to(torch.float64).mean()


@dataclass(frozen=True)
class Workload:
    """One workload: as a diagnostic :class:`~diyopt.benchmarking.tasks.Task` (name, family, level, tests,
    criterion, target, steps = the step budget, source, build) plus ``eval_every``."""

    name: str
    family: str
    level: int
    tests: str
    criterion: str
    target: float
    steps: int
    eval_every: int
    source: str
    build: Callable[[int, torch.dtype], WorkloadProblem]

    def problem(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> WorkloadProblem:
        return self.build(seed, dtype)

    def metric(self, problem: WorkloadProblem, params: Params) -> Tensor:
        return problem.metric(params)


def _split(X, y, dtype):
    _, model_selection = require_sklearn()
    Xt, Xv, yt, yv = model_selection.train_test_split(X, y, test_size=VAL_FRACTION, stratify=y, random_state=0)
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float64).to(dtype)  # noqa: E731
    return as_x(Xt), as_x(Xv), torch.as_tensor(yt, dtype=torch.int64), torch.as_tensor(yv, dtype=torch.int64)


def _normal(seed: int, salt: int, shape: tuple, scale: float, dtype) -> Tensor:
    g = torch.Generator().manual_seed(1_000_003 * salt + seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def breast_cancer_logreg(seed: int, dtype: torch.dtype) -> WorkloadProblem:
    datasets, _ = require_sklearn()
    data = datasets.load_breast_cancer()
    Xt, Xv, yt, yv = _split(data.data, data.target, torch.float64)
    mu, sd = Xt.mean(0), Xt.std(0)  # standardized with the training split's statistics only
    Xt, Xv = ((Xt - mu) / sd).to(dtype), ((Xv - mu) / sd).to(dtype)
    yf = yt.to(dtype)
    params = {"w": _normal(seed, 1, (Xt.shape[1],), 1.0, dtype), "b": torch.zeros((), dtype=dtype)}

    def loss(p):
        return torch.nn.functional.binary_cross_entropy_with_logits(Xt @ p["w"] + p["b"], yf)

    def predict(p):
        return (Xv @ p["w"] + p["b"] > 0).to(torch.int64)

    return WorkloadProblem(params, loss, predict, yv)


def digits_mlp(seed: int, dtype: torch.dtype, hidden: int = 32) -> WorkloadProblem:
    datasets, _ = require_sklearn()
    data = datasets.load_digits()
    Xt, Xv, yt, yv = _split(data.data / 16.0, data.target, dtype)
    n_in = Xt.shape[1]
    params = {"w1": _normal(seed, 1, (n_in, hidden), 1 / math.sqrt(n_in), dtype),
              "b1": torch.zeros(hidden, dtype=dtype),
              "w2": _normal(seed, 2, (hidden, 10), 1 / math.sqrt(hidden), dtype),
              "b2": torch.zeros(10, dtype=dtype)}

    def logits(p, X):
        return torch.tanh(X @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p):
        return torch.nn.functional.cross_entropy(logits(p, Xt), yt)

    def predict(p):
        return logits(p, Xv).argmax(-1)

    return WorkloadProblem(params, loss, predict, yv)


def digits_autoencoder(seed: int, dtype: torch.dtype, code: int = 8) -> WorkloadProblem:
    """64 -> 32 (tanh) -> ``code`` (linear) -> 32 (tanh) -> 64 (linear); loss and metric: mean squared
    reconstruction error of the pixels / 16 (training split / validation split)."""
    datasets, _ = require_sklearn()
    data = datasets.load_digits()
    Xt, Xv, _, _ = _split(data.data / 16.0, data.target, dtype)
    sizes = [(64, 32), (32, code), (code, 32), (32, 64)]
    params = {}
    for i, (a, b) in enumerate(sizes):
        params[f"w{i}"] = _normal(seed, i + 1, (a, b), 1 / math.sqrt(a), dtype)
        params[f"b{i}"] = torch.zeros(b, dtype=dtype)

    def reconstruct(p, X):
        h = torch.tanh(X @ p["w0"] + p["b0"])
        z = h @ p["w1"] + p["b1"]
        return torch.tanh(z @ p["w2"] + p["b2"]) @ p["w3"] + p["b3"]

    def loss(p):
        return (reconstruct(p, Xt) - Xt).square().mean()

    def val_mse(p):
        return (reconstruct(p, Xv) - Xv).to(torch.float64).square().mean()

    return WorkloadProblem(params, loss, lambda p: reconstruct(p, Xv), Xv, val_mse)


def workloads() -> list[Workload]:
    """The workloads suite, in a fixed order (building a problem needs scikit-learn; listing does not)."""
    err = "validation error"
    return [
        Workload("breast_cancer_logreg-1", "breast_cancer_logreg", 1,
                 "logistic regression, 30 standardized features, 569 samples", err, 0.05, 300, 10,
                 SKLEARN + " (load_breast_cancer)", breast_cancer_logreg),
        Workload("digits_mlp-1", "digits_mlp", 1, "MLP 64-32-10 tanh on 8x8 digits, 1,797 samples", err, 0.03,
                 300, 20, SKLEARN + " (load_digits)", digits_mlp),
        Workload("digits_autoencoder-1", "digits_autoencoder", 1, "autoencoder 64-32-8-32-64 on 8x8 digits",
                 "validation MSE", AE_TARGET, 300, 20, SKLEARN + " (load_digits)", digits_autoencoder),
    ]


def train(workload: Workload, problem: WorkloadProblem, optimizer) -> dict:
    """Train one trial; evaluate every ``eval_every`` updates; stop at the first passing evaluation.

    Returns ``{"steps": updates done at the target (inf: not reached), "seconds": wall time to it (inf),
    "best": the lowest validation error seen (inf when the loss went non-finite first)}``.
    """
    from diyopt.core.contract import apply_updates

    params = dict(problem.params)
    state = optimizer.init(params)
    best = math.inf
    t0 = time.perf_counter()
    for step in range(1, workload.steps + 1):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        value = problem.loss(leaves)  # plain autograd: far cheaper per step here than torch.func.grad
        grads = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))
        params = {k: v.detach() for k, v in params.items()}
        if not math.isfinite(float(value.detach())):
            break  # diverged: no later evaluation can count
        updates, state = optimizer.update(grads, state, params)
        params = apply_updates(params, updates)
        if step % workload.eval_every == 0 or step == workload.steps:
            with torch.no_grad():
                m = float(problem.metric(params))
            best = min(best, m)
            if m <= workload.target:
                return {"steps": step, "seconds": time.perf_counter() - t0, "best": best}
    return {"steps": math.inf, "seconds": math.inf, "best": best}


def train_torch(workload: Workload, problem: WorkloadProblem, cls: type, kwargs: dict) -> dict:
    """:func:`train` with a ``torch.optim`` class used as is (``cls(params, **kwargs)``, ``step()`` after
    ``backward()``): the same evaluations, stopping rule and returned dict."""
    leaves = [v.detach().clone().requires_grad_(True) for v in problem.params.values()]
    names = list(problem.params)
    opt = cls(leaves, **kwargs)
    best = math.inf
    t0 = time.perf_counter()
    for step in range(1, workload.steps + 1):
        opt.zero_grad()
        value = problem.loss(dict(zip(names, leaves)))
        value.backward()
        if not math.isfinite(float(value.detach())):
            break
        opt.step()
        if step % workload.eval_every == 0 or step == workload.steps:
            with torch.no_grad():
                m = float(problem.metric({k: v.detach() for k, v in zip(names, leaves)}))
            best = min(best, m)
            if m <= workload.target:
                return {"steps": step, "seconds": time.perf_counter() - t0, "best": best}
    return {"steps": math.inf, "seconds": math.inf, "best": best}
