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

Engine: the trials of a study run as **one vmapped training** (:func:`train_batched`; finished trials leave
the batch), or one by one (:func:`train`, :func:`train_torch`) for a ``torch.optim`` class or a rule vmap
refuses -- not as one ``diyopt.sweep``: a sweep returns only the final params, and the score needs the
validation metric every ``eval_every`` steps and the time at which it first passes.

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
CNN_TARGET = 0.03
SORT_TARGET = 0.03
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
    params = {
        "w1": _normal(seed, 1, (n_in, hidden), 1 / math.sqrt(n_in), dtype),
        "b1": torch.zeros(hidden, dtype=dtype),
        "w2": _normal(seed, 2, (hidden, 10), 1 / math.sqrt(hidden), dtype),
        "b2": torch.zeros(10, dtype=dtype),
    }

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


def digits_cnn(seed: int, dtype: torch.dtype, c1: int = 8, c2: int = 16) -> WorkloadProblem:
    """A small CNN on the 8x8 digits: conv 3x3 stride 2 (1 -> ``c1``, ReLU, 8x8 -> 4x4), conv 3x3 stride 2
    (``c1`` -> ``c2``, ReLU, 4x4 -> 2x2), linear ``4 c2`` -> 10; mean cross-entropy. Strided convolutions
    instead of pooling: the same receptive field at half the cost per step here."""
    import torch.nn.functional as F

    datasets, _ = require_sklearn()
    data = datasets.load_digits()
    Xt, Xv, yt, yv = _split(data.data / 16.0, data.target, dtype)
    Xt, Xv = Xt.reshape(-1, 1, 8, 8), Xv.reshape(-1, 1, 8, 8)
    params = {
        "conv1": _normal(seed, 1, (c1, 1, 3, 3), 1 / 3, dtype),
        "bias1": torch.zeros(c1, dtype=dtype),
        "conv2": _normal(seed, 2, (c2, c1, 3, 3), 1 / math.sqrt(9 * c1), dtype),
        "bias2": torch.zeros(c2, dtype=dtype),
        "w": _normal(seed, 3, (4 * c2, 10), 1 / math.sqrt(4 * c2), dtype),
        "b": torch.zeros(10, dtype=dtype),
    }

    def logits(p, X):
        h = F.relu(F.conv2d(X, p["conv1"], p["bias1"], stride=2, padding=1))
        h = F.relu(F.conv2d(h, p["conv2"], p["bias2"], stride=2, padding=1))
        return h.flatten(1) @ p["w"] + p["b"]

    def loss(p):
        return F.cross_entropy(logits(p, Xt), yt)

    def predict(p):
        return logits(p, Xv).argmax(-1)

    return WorkloadProblem(params, loss, predict, yv)


SORT_LENGTH, SORT_VOCAB = 8, 10


def sort_sequences(n: int, salt: int) -> tuple[Tensor, Tensor]:
    """``n`` sequences of :data:`SORT_LENGTH` tokens uniform in ``0..SORT_VOCAB-1`` and their sorted copies
    (a fixed draw: the data is the workload's, the study's seed sets only the initial weights)."""
    g = torch.Generator().manual_seed(7919 * salt + 1)
    x = torch.randint(0, SORT_VOCAB, (n, SORT_LENGTH), generator=g)
    return x, x.sort(-1).values


def sort_transformer(
    seed: int, dtype: torch.dtype, d: int = 32, heads: int = 2, n_train: int = 512, n_val: int = 256
) -> WorkloadProblem:
    """A one-block pre-norm transformer encoder (token + learned position embeddings of width ``d``,
    ``heads``-head softmax attention, a GELU MLP of width ``2d``, a final layer norm and a linear read-out)
    that must output, at every position, the token of the *sorted* input there: sorting needs every position
    to compare itself with all the others, which is what attention does. Loss: mean cross-entropy over the
    tokens; metric: the fraction of validation tokens wrong."""
    import torch.nn.functional as F

    Xt, Yt = sort_sequences(n_train, 1)
    Xv, Yv = sort_sequences(n_val, 2)
    s = 1 / math.sqrt(d)
    params = {
        "tok": _normal(seed, 1, (SORT_VOCAB, d), 1.0, dtype),
        "pos": _normal(seed, 2, (SORT_LENGTH, d), 1.0, dtype),
        "qkv": _normal(seed, 3, (d, 3 * d), s, dtype),
        "proj": _normal(seed, 4, (d, d), s, dtype),
        "mlp1": _normal(seed, 5, (d, 2 * d), s, dtype),
        "mlp_b": torch.zeros(2 * d, dtype=dtype),
        "mlp2": _normal(seed, 6, (2 * d, d), 1 / math.sqrt(2 * d), dtype),
        "out": _normal(seed, 7, (d, SORT_VOCAB), s, dtype),
    }

    def logits(p, X):
        h = p["tok"][X] + p["pos"]
        B, L, _ = h.shape
        q, k, v = (F.layer_norm(h, (d,)) @ p["qkv"]).view(B, L, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v  # (B, heads, L, d/heads)
        h = h + att.transpose(1, 2).reshape(B, L, d) @ p["proj"]
        h = h + F.gelu(F.layer_norm(h, (d,)) @ p["mlp1"] + p["mlp_b"]) @ p["mlp2"]
        return F.layer_norm(h, (d,)) @ p["out"]

    def loss(p):
        return F.cross_entropy(logits(p, Xt).reshape(-1, SORT_VOCAB), Yt.reshape(-1))

    def predict(p):
        return logits(p, Xv).argmax(-1)

    return WorkloadProblem(params, loss, predict, Yv)


def workloads() -> list[Workload]:
    """The workloads suite, in a fixed order (building a problem needs scikit-learn; listing does not)."""
    err = "validation error"
    return [
        Workload(
            "breast_cancer_logreg-1",
            "breast_cancer_logreg",
            1,
            "logistic regression, 30 standardized features, 569 samples",
            err,
            0.05,
            300,
            10,
            SKLEARN + " (load_breast_cancer)",
            breast_cancer_logreg,
        ),
        Workload(
            "digits_mlp-1",
            "digits_mlp",
            1,
            "MLP 64-32-10 tanh on 8x8 digits, 1,797 samples",
            err,
            0.03,
            300,
            20,
            SKLEARN + " (load_digits)",
            digits_mlp,
        ),
        Workload(
            "digits_autoencoder-1",
            "digits_autoencoder",
            1,
            "autoencoder 64-32-8-32-64 on 8x8 digits",
            "validation MSE",
            AE_TARGET,
            300,
            20,
            SKLEARN + " (load_digits)",
            digits_autoencoder,
        ),
        Workload(
            "digits_cnn-1",
            "digits_cnn",
            1,
            "CNN conv8-conv16 (3x3, stride 2) -> 10 on 8x8 digits",
            err,
            CNN_TARGET,
            200,
            20,
            SKLEARN + " (load_digits)",
            digits_cnn,
        ),
        Workload(
            "sort_transformer-1",
            "sort_transformer",
            1,
            f"1-block transformer (d 32, 2 heads) sorts {SORT_LENGTH} tokens of {SORT_VOCAB}",
            "validation token error",
            SORT_TARGET,
            200,
            25,
            "generated (torch.randint, fixed seed)",
            sort_transformer,
        ),
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


def train_batched(workload: Workload, problem: WorkloadProblem, build: Callable, points: list[tuple]) -> list[dict]:
    """:func:`train` for all ``points`` at once: one ``torch.func.vmap`` over the trials of a study.

    The params are stacked (one copy of the study's start per trial, ``(B, ...)``), and so are the points
    (``(B, d)``, float64); one vmapped step takes ``torch.func.grad_and_value(problem.loss)`` and the update of
    ``build(point)`` (a :func:`~diyopt.analysis.benchmarking.tuning.tunable` optimizer's ``build``, whose
    hyperparameters are then batched tensors), and every ``eval_every`` updates one vmapped
    ``problem.metric`` scores every trial. Each trial follows :func:`train`'s rules: it stops counting at its
    first passing evaluation or when its loss turns non-finite (the others go on; the batch ends when none is
    left or at the budget), so ``steps`` and ``best`` are the loop's, to rounding. ``seconds`` is the
    trial's *share* of the batch's wall time to that evaluation (the batch's time / B): the trials ran
    side by side. Raises whatever vmap raises on a rule or loss it refuses (the caller falls back to the loop).
    """
    from torch.func import vmap

    from diyopt.core.contract import apply_updates

    n = len(points)
    pts = torch.tensor(points, dtype=torch.float64).reshape(n, -1)
    d = pts.shape[1]
    as_point = lambda pt: tuple(pt[i] for i in range(d))  # noqa: E731
    params = {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in problem.params.items()}
    state = vmap(lambda p, pt: build(as_point(pt)).init(p))(params, pts)

    def one_update(p, g, s, pt):
        updates, s = build(as_point(pt)).update(g, s, p)
        return apply_updates(p, updates), s

    losses_all, update_all = vmap(problem.loss), vmap(one_update)
    metric_all = vmap(problem.metric)

    def step_all(p, s, pt):
        # the trials' losses are independent, so the gradient of their sum is every trial's own gradient:
        # one vmapped forward and one autograd backward (cheaper per step here than vmap over grad)
        leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        with torch.enable_grad():
            values = losses_all(leaves)
            grads = dict(zip(leaves, torch.autograd.grad(values.sum(), list(leaves.values()))))
        p, s = update_all(p, grads, s, pt)
        return p, s, values.detach()

    out = [{"steps": math.inf, "seconds": math.inf, "best": math.inf} for _ in range(n)]
    rows = list(range(n))  # the trial in each row of the batch: finished trials leave it
    alive = [True] * n  # per row: neither passed nor diverged
    t0 = time.perf_counter()
    for step in range(1, workload.steps + 1):
        with torch.no_grad():
            params, state, values = step_all(params, state, pts)
        for r, v in enumerate(values.tolist()):  # the loss before this update: the loop's divergence test
            if alive[r] and not math.isfinite(v):
                alive[r] = False
        if step % workload.eval_every == 0 or step == workload.steps:
            with torch.no_grad():
                ms = metric_all(params).tolist()
            share = (time.perf_counter() - t0) / n
            for r, m in enumerate(ms):
                if not alive[r]:
                    continue
                i = rows[r]
                out[i]["best"] = min(out[i]["best"], m)
                if m <= workload.target:
                    out[i].update(steps=step, seconds=share)
                    alive[r] = False
        if not any(alive):
            break
        if not all(alive):  # drop the finished rows, so the batch costs what the loop's remaining trials do
            keep = torch.tensor([r for r in range(len(rows)) if alive[r]])
            pick = lambda x, keep=keep: x[keep] if isinstance(x, Tensor) else x  # noqa: E731
            params, state, pts = (torch.utils._pytree.tree_map(pick, t) for t in (params, state, pts))
            rows = [rows[r] for r in keep.tolist()]
            alive = [True] * len(rows)
    return out
