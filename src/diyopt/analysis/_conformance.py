"""The conformance kit: run it on your update rule (or loss) before you publish it.

    report = diyopt.check(my_rule(lr=1e-2))     # or, on the command line: diyopt check my.py:my_rule
    print(report.table())                        # one row per check: PASS / FAIL / SKIP, with the reason
    assert report.passed

What :func:`check` verifies for an optimizer, each on a small float64 problem with a known answer:

=====================  ==================================================================================
downhill               10 steps on a convex quadratic lower it, and the first update points downhill
                       (``<update, grad> < 0``)
uphill (maximize)      with ``maximize=True`` the same quadratic goes up (skipped without that setting)
parabola               ``sum((x - c)^2)`` from a fixed start: every coordinate within ``tol`` (3e-2, optax's
                       bar) of ``c`` within ``budget`` steps; reports the steps taken
rosenbrock             ``(1 - x)^2 + 100 (y - x^2)^2`` from (-1.2, 1): within ``tol`` of (1, 1) within
                       ``budget`` steps; reports the steps taken
pure: inputs           ``update`` leaves grads, state and params untouched (compared with clones)
pure: repeatable       the same ``update`` call twice gives the same result, and two runs from ``init``
                       agree: no state hides in a closure
state: tensors only    every leaf of the state is a Tensor (the step count too), found by walking the tree
dtype                  float32 and float64 params give updates and floating state of the same dtype
to_torch round trip    ``to_torch`` equals the functional form, and a fresh instance loaded from its
                       ``state_dict`` continues in lockstep
no autograd graph      over 1,000 steps no update or state tensor carries a ``grad_fn`` (or requires
                       grad), and the number of live tensors stays flat
flat buffer            a ``flattenable`` rule gives the same updates on all params joined in one flat buffer
                       as per named tensor (the fit loop's fast path); a rule that looks at whole tensors
                       must be declared ``@elementwise(whole_tensor=True)``
=====================  ==================================================================================

A rule that takes matrices only (``muon``, as ``torch.optim.Muon``: a ``ValueError`` for a vector at ``init``,
none for a matrix) gets every problem's vectors as ``n x 1`` matrices -- the same function of the same
numbers -- and an INFO row saying so; every check then runs on it as on any other rule.

The gradients of the test problems are written in closed form: the kit checks the optimizer, not autograd.
Every ``update`` goes through the engines' entry point (``diyopt.engines.engine_update``), so an optimizer
of the extended contract (docs/contract.md) gets what it declares: ``grad_fn`` is the problem's closed-form
gradient (SAM's second evaluation), ``loss`` its loss; the convergence checks judge the evaluation params
(``eval_params``: schedule-free's x, lookahead's slow weights, an EMA), what ``fit`` reports.
:func:`check_loss` checks a loss instead: scalar output, gradient equal to finite differences
(``torch.autograd.gradcheck`` in float64), and what it does on a NaN input (stated, not judged).
"""

from __future__ import annotations

import contextvars
import copy
import gc
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError
from torch.utils import _pytree as pytree

from diyopt.core.contract import Optimizer, apply_updates, eval_params
from diyopt.core.tree import Params
from diyopt.engines import engine_update

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"
DEFAULT_BUDGET = 20_000
DEFAULT_TOL = 3e-2


@dataclass
class CheckResult:
    """One row of a report: ``name``, ``status`` (PASS / FAIL / SKIP / INFO) and the reason."""

    name: str
    status: str
    detail: str


@dataclass
class CheckReport:
    """The outcome of :func:`check` or :func:`check_loss`; ``passed`` when no row FAILed."""

    subject: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.status != FAIL for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def table(self) -> str:
        """A fixed-width table, one check per line, and a summary line."""
        width = max(len(r.name) for r in self.results)
        lines = [f"{'check':{width}}  result  details", f"{'-' * width}  ------  {'-' * 40}"]
        lines += [f"{r.name:{width}}  {r.status:6}  {r.detail}" for r in self.results]
        failed = len(self.failures)
        lines.append(
            f"{self.subject}: "
            + ("all checks passed" if not failed else f"{failed} of {len(self.results)} checks FAILED")
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------- optimizers


def check(
    optimizer: Optimizer,
    *,
    lr: float | None = None,
    budget: int = DEFAULT_BUDGET,
    tol: float = DEFAULT_TOL,
    name: str | None = None,
) -> CheckReport:
    """Run the conformance checks on ``optimizer`` (see the module docstring for the list).

    Args:
      optimizer: any diyopt :class:`~diyopt.core.Optimizer`.
      lr: learning rate for the convergence checks (parabola, Rosenbrock); default: the optimizer's own.
        Needs an optimizer built by a factory with an ``lr`` hyperparameter.
      budget: most steps for each convergence check.
      tol: how close every coordinate must come to the optimum.
      name: what to call it in the report.

    Returns:
      A :class:`CheckReport`; ``report.passed`` is True when no check failed.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"check() needs a diyopt Optimizer, got {type(optimizer).__name__}")
    if lr is not None:
        if "lr" not in (optimizer.hyperparams or {}):
            raise ValueError("lr= given, but this optimizer has no 'lr' hyperparameter to set")
        tuned = optimizer.replace_hyperparams(lr=lr)
    else:
        tuned = optimizer
    label = name or _describe(optimizer)
    report = CheckReport(label)
    refusal = _refuses_vectors(optimizer)
    if refusal is not None:  # Muon: the problems' vectors become n x 1 matrices, so every check still runs
        report.results.append(
            CheckResult("matrices only", INFO, f"refuses 1-D params ({refusal}): vectors given as n x 1 matrices")
        )
    token = _MATRICES.set(refusal is not None)
    try:
        _run_checks(report, optimizer, tuned, budget, tol, lr)
    finally:
        _MATRICES.reset(token)
    return report


def _run_checks(report: CheckReport, optimizer: Optimizer, tuned: Optimizer, budget: int, tol: float, lr) -> None:
    checks: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("downhill", lambda: _downhill(optimizer)),
        ("uphill (maximize)", lambda: _uphill(optimizer)),
        ("parabola", lambda: _converges(tuned, _parabola(), budget, tol, lr)),
        ("rosenbrock", lambda: _converges(tuned, _rosenbrock(), budget, tol, lr)),
        ("pure: inputs", lambda: _inputs_unchanged(optimizer)),
        ("pure: repeatable", lambda: _repeatable(optimizer)),
        ("state: tensors only", lambda: _tensors_only(optimizer)),
        ("dtype", lambda: _dtypes(optimizer)),
        ("to_torch round trip", lambda: _to_torch_round_trip(optimizer)),
        ("no autograd graph", lambda: _no_graph(optimizer)),
        ("flat buffer", lambda: _flat_buffer(optimizer)),
    ]
    for check_name, run in checks:
        try:
            status, detail = run()
        except Exception as e:  # a crash is a failure of that check, with its message as the reason
            status, detail = FAIL, f"raised {type(e).__name__}: {' '.join(str(e).split())}"
        report.results.append(CheckResult(check_name, status, detail))


def _describe(opt: Optimizer) -> str:
    build = getattr(opt.build, "__name__", None)
    if build and opt.hyperparams is not None:
        return f"{build}({', '.join(f'{k}={v!r}' for k, v in opt.hyperparams.items())})"
    return "optimizer"


#: True while :func:`check` runs a rule that takes matrices only: the problems give their vectors as n x 1.
_MATRICES = contextvars.ContextVar("diyopt_check_matrices", default=False)


def _refuses_vectors(opt: Optimizer) -> str | None:
    """The refusal's message when ``opt`` takes 2-D params but refuses a vector (Muon, as torch.optim.Muon),
    else None. Only a ValueError at ``init`` counts, and only when a matrix is taken: any other failure is
    left for the checks themselves to report."""
    try:
        opt.init({"w": torch.zeros(3, 2, dtype=torch.float64)})
    except Exception:
        return None
    try:
        opt.init({"v": torch.zeros(3, dtype=torch.float64)})
    except ValueError as e:
        return " ".join(str(e).split()).split(";")[0]  # its first clause: the rest is advice for fit
    except Exception:
        return None
    return None


def _shaped(problem: _Problem) -> _Problem:
    """``problem`` as it is, or (for a matrix-only rule) with each 0-D or 1-D param as an n x 1 matrix:
    the same function of the same numbers, its loss and gradient computed on the original shapes."""
    if not _MATRICES.get():
        return problem
    shapes = {k: v.shape for k, v in problem.params0.items()}

    def column(t: Tensor) -> Tensor:
        return t if t.dim() >= 2 else t.reshape(-1, 1)

    def back(p: Params) -> Params:
        return {k: p[k].reshape(shapes[k]) for k in p}

    return _Problem(
        {k: column(v) for k, v in problem.params0.items()},
        lambda p: problem.loss(back(p)),
        lambda p: {k: column(g) for k, g in problem.grad(back(p)).items()},
        None if problem.solution is None else {k: column(v) for k, v in problem.solution.items()},
    )


class _Problem:
    """A small problem with a closed-form gradient: ``params0``, ``loss(p)``, ``grad(p)``, ``solution``."""

    def __init__(self, params0: Params, loss, grad, solution: Params | None = None):
        self.params0, self.loss, self.grad, self.solution = params0, loss, grad, solution

    def start(self, dtype=torch.float64) -> Params:
        return {k: v.to(dtype).clone() for k, v in self.params0.items()}


def _quadratic() -> _Problem:
    """``f = 1/2 sum_k h_k * (p_k - c_k)^2`` over two named tensors, curvatures 1 to 10."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (4, 3), "b": (3,)}
    h = {k: 1 + 9 * torch.rand(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    c = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    p0 = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}

    def loss(p):
        return sum(0.5 * (h[k] * (p[k].detach().double() - c[k]) ** 2).sum() for k in p)

    def grad(p):
        return {k: (h[k] * (p[k].double() - c[k])).to(p[k].dtype) for k in p}

    return _shaped(_Problem(p0, loss, grad, c))


def _parabola() -> _Problem:
    c = {"a": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), "b": torch.tensor([3.0], dtype=torch.float64)}
    p0 = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    return _shaped(
        _Problem(
            p0,
            lambda p: sum(((p[k].detach() - c[k]) ** 2).sum() for k in p),
            lambda p: {k: 2 * (p[k] - c[k]) for k in p},
            c,
        )
    )


def _rosenbrock() -> _Problem:
    """``(1 - x)^2 + 100 (y - x^2)^2`` (a=1, b=100) from the classic start (-1.2, 1)."""

    def loss(p):
        x, y = p["xy"].detach()
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    def grad(p):
        x, y = p["xy"][0], p["xy"][1]
        return {"xy": torch.stack([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])}

    return _shaped(
        _Problem(
            {"xy": torch.tensor([-1.2, 1.0], dtype=torch.float64)},
            loss,
            grad,
            {"xy": torch.tensor([1.0, 1.0], dtype=torch.float64)},
        )
    )


def _update(opt: Optimizer, problem: _Problem) -> Callable:
    """``update(grads, state, params)`` as the engines call it: through the extended contract's entry point
    (``engines._extended.engine_update``), with the problem's closed-form gradient as ``grad_fn`` (SAM's
    second gradient) and its loss as ``loss``, each passed only where the optimizer declares it."""
    update = engine_update(opt, problem.grad)

    def call(grads: Params, state: Any, params: Params):
        loss = None
        if "loss" in opt.extra_args:
            ref = next(iter(params.values()))
            loss = torch.as_tensor(problem.loss(params)).to(dtype=ref.dtype)
        return update(grads, state, params, loss)

    return call


def _steps(opt: Optimizer, problem: _Problem, n: int, params: Params | None = None) -> tuple[Params, Any]:
    params = problem.start() if params is None else params
    state = opt.init(params)
    update = _update(opt, problem)
    for _ in range(n):
        updates, state = update(problem.grad(params), state, params)
        params = apply_updates(params, updates)
    return params, state


def _downhill(opt: Optimizer) -> tuple[str, str]:
    q = _quadratic()
    params = q.start()
    state = opt.init(params)
    # the first update that moves: some methods spend their first step gathering statistics (ADOPT's
    # second moment, SOAP's preconditioner) and return zero there, which points neither way
    first, slope = 0, 0.0
    update = _update(opt, q)
    while slope == 0 and first < 3:
        first += 1
        g = q.grad(params)
        updates, state = update(g, state, params)
        slope = float(sum((updates[k].detach().double() * g[k]).sum() for k in g))
        params = apply_updates(params, updates)
    which = "first update" if first == 1 else f"first moving update (step {first})"
    f0 = float(q.loss(q.start()))
    f10 = float(q.loss(_steps(opt, q, 10)[0]))
    if slope < 0 and f10 < f0:
        return PASS, f"loss {f0:.4g} -> {f10:.4g} in 10 steps; {which} . grad = {slope:.3g} < 0"
    why = (
        f"{which} points uphill (update . grad = {slope:.3g} >= 0)"
        if slope >= 0
        else f"loss did not go down in 10 steps ({f0:.4g} -> {f10:.4g})"
    )
    return FAIL, why


def _uphill(opt: Optimizer) -> tuple[str, str]:
    if "maximize" not in (opt.hyperparams or {}):
        return SKIP, "no 'maximize' hyperparameter"
    up = opt.replace_hyperparams(maximize=True)
    q = _quadratic()
    f0 = float(q.loss(q.start()))
    f10 = float(q.loss(_steps(up, q, 10)[0]))
    if f10 > f0:
        return PASS, f"maximize=True: loss {f0:.4g} -> {f10:.4g} in 10 steps"
    return FAIL, f"maximize=True did not go uphill: loss {f0:.4g} -> {f10:.4g} in 10 steps"


def _converges(opt: Optimizer, problem: _Problem, budget: int, tol: float, lr) -> tuple[str, str]:
    params = problem.start()
    state = opt.init(params)
    target = torch.cat([problem.solution[k].reshape(-1) for k in params])
    at = f" at lr={opt.hyperparams['lr']:g}" if isinstance((opt.hyperparams or {}).get("lr"), float) else ""
    update = _update(opt, problem)
    for step in range(1, budget + 1):
        updates, state = update(problem.grad(params), state, params)
        params = apply_updates(params, updates)
        shown = eval_params(opt, state, params)  # what fit reports (schedule-free's x, lookahead's slow weights)
        err = (torch.cat([shown[k].reshape(-1) for k in params]) - target).abs().max()
        if err <= tol:
            return PASS, f"within {tol:g} of the optimum after {step} steps{at}"
        if not torch.isfinite(err):
            return FAIL, f"diverged (non-finite params) at step {step}{at}; try a smaller lr"
    return FAIL, (
        f"not within {tol:g} of the optimum after {budget} steps{at} (max error {float(err):.3g}, "
        f"loss {float(problem.loss(shown)):.3g}); try another lr (--lr) or a larger budget (--budget)"
    )


def _snapshot(*trees) -> list:
    return [pytree.tree_map(lambda x: x.clone() if isinstance(x, Tensor) else copy.deepcopy(x), t) for t in trees]


def _first_difference(a, b, what: str) -> str | None:
    """Where two trees differ (path of the first differing leaf), or None when they are equal."""
    la, spec_a = pytree.tree_flatten_with_path(a)
    lb, spec_b = pytree.tree_flatten_with_path(b)
    if spec_a != spec_b:
        return f"{what} changed structure"
    for (path, x), (_, y) in zip(la, lb):
        same = torch.equal(x, y) if isinstance(x, Tensor) and isinstance(y, Tensor) else x == y
        if not same:
            return f"{what}{pytree.keystr(path)}"
    return None


def _mid_run(opt: Optimizer, dtype=torch.float64):
    """Params, grads and a non-trivial state after 3 steps on the quadratic."""
    q = _quadratic()
    params, state = _steps(opt, q, 3, q.start(dtype))
    return params, q.grad(params), state


def _inputs_unchanged(opt: Optimizer) -> tuple[str, str]:
    params, grads, state = _mid_run(opt)
    before = _snapshot(grads, state, params)
    _update(opt, _quadratic())(grads, state, params)
    for tree, old, what in zip((grads, state, params), before, ("grads", "state", "params")):
        where = _first_difference(old, tree, what)
        if where:
            return FAIL, f"update mutated its input {where} (write new tensors, never x.add_/x[...] = ...)"
    return PASS, "grads, state and params unchanged by update"


def _repeatable(opt: Optimizer) -> tuple[str, str]:
    params, grads, state = _mid_run(opt)
    update = _update(opt, _quadratic())
    first = update(grads, state, params)
    second = update(grads, state, params)
    where = _first_difference(first, second, "result")
    if where:
        return FAIL, (
            f"the same update call twice gave different {where}: state hides outside the state "
            "tree (a closure, a global, randomness?)"
        )
    q = _quadratic()
    run_a, run_b = _steps(opt, q, 5), _steps(opt, q, 5)
    where = _first_difference(run_a, run_b, "run")
    if where:
        return FAIL, f"two 5-step runs from init disagree at {where}: state hides in a closure"
    return PASS, "same call twice and two runs from init agree exactly"


def _tensors_only(opt: Optimizer) -> tuple[str, str]:
    _, _, state = _mid_run(opt)
    leaves = pytree.tree_flatten_with_path(state)[0]
    for path, leaf in leaves:
        if not isinstance(leaf, Tensor):
            return FAIL, (
                f"state{pytree.keystr(path)} is a {type(leaf).__name__} ({leaf!r}); keep it a tensor "
                "(the step count too) so state can be saved, compiled and vmapped"
            )
    return PASS, f"{len(leaves)} leaves, all tensors"


def _dtypes(opt: Optimizer) -> tuple[str, str]:
    for dtype in (torch.float32, torch.float64):
        params, grads, state = _mid_run(opt, dtype)
        updates, new_state = _update(opt, _quadratic())(grads, state, params)
        for k, u in updates.items():
            if u.dtype != dtype:
                return FAIL, f"{dtype} params gave a {u.dtype} update for {k!r}"
        for path, leaf in pytree.tree_flatten_with_path(new_state)[0]:
            if (
                isinstance(leaf, Tensor)
                and leaf.is_floating_point()
                and leaf.dtype != dtype
                and not _torch_scalar(leaf)
            ):
                return FAIL, f"{dtype} params gave {leaf.dtype} state{pytree.keystr(path)}"
    return PASS, "float32 and float64 kept in updates and state"


def _torch_scalar(leaf: Tensor) -> bool:
    """A 0-dim leaf in torch.optim's scalar dtype (float32 unless the default is float64): torch keeps
    scalar state there (NAdam's ``mu_product``, ASGD's ``eta``) whatever the params' dtype, and so does
    diyopt where it follows torch."""
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return leaf.dim() == 0 and leaf.dtype == scalar


def _to_torch_round_trip(opt: Optimizer) -> tuple[str, str]:
    from diyopt.engines import to_torch

    q = _quadratic()
    reference, _ = _steps(opt, q, 10)

    def leaves(p):
        return {k: v.clone().requires_grad_() for k, v in p.items()}

    def run(torch_opt, ps, n):
        def closure():  # the closed-form gradient into .grad; step(closure) reruns it where the rule asks
            current = {k: v.detach() for k, v in ps.items()}
            for k, g in q.grad(current).items():
                ps[k].grad = g
            return q.loss(current)

        for _ in range(n):
            closure()
            torch_opt.step(closure)

    a = leaves(q.start())
    opt_a = to_torch(opt, a)
    run(opt_a, a, 5)
    saved = copy.deepcopy(opt_a.state_dict())
    b = leaves({k: v.detach() for k, v in a.items()})
    opt_b = to_torch(opt, b)
    opt_b.load_state_dict(saved)
    run(opt_a, a, 5)
    run(opt_b, b, 5)
    for k in reference:
        if not _close(a[k].detach(), reference[k]):
            return FAIL, f"to_torch differs from the functional form in {k!r} after 10 steps"
        if not _close(b[k].detach(), a[k].detach()):
            return FAIL, f"a fresh to_torch loaded from state_dict diverged in {k!r} after 5 more steps"
    return PASS, "to_torch == functional form; state_dict reload continues in lockstep (10 steps)"


def _close(x: Tensor, y: Tensor) -> bool:
    return bool(((x - y).abs() <= 1e-12 * y.abs().clamp_min(1.0)).all())


def _no_graph(opt: Optimizer, steps: int = 1000) -> tuple[str, str]:
    q = _quadratic()
    params = q.start()
    state = opt.init(params)
    update = _update(opt, q)
    counts = {}
    for step in range(1, steps + 1):
        updates, state = update(q.grad(params), state, params)
        if step in (1, 10, steps):
            for path, leaf in pytree.tree_flatten_with_path((updates, state))[0]:
                if isinstance(leaf, Tensor) and (leaf.requires_grad or leaf.grad_fn is not None):
                    what = "update" if path[0].idx == 0 else "state"
                    return FAIL, (
                        f"{what}{pytree.keystr(path[1:])} has grad_fn "
                        f"{type(leaf.grad_fn).__name__} at step {step}: an autograd graph is kept "
                        "and grows every step (a requires_grad tensor in a closure or "
                        "hyperparameter? use .detach() or torch.no_grad())"
                    )
        params = apply_updates(params, updates)
        if step in (10, steps):
            counts[step] = _live_tensors()
    growth = counts[steps] - counts[10]
    if growth > 20:
        return FAIL, f"{growth} more live tensors after {steps} steps than after 10: something accumulates"
    return PASS, f"no grad_fn in updates or state; live tensors flat over {steps} steps ({growth:+d})"


def _flat_buffer(opt: Optimizer, steps: int = 5) -> tuple[str, str]:
    """A ``flattenable`` optimizer must give the same updates on one flat buffer as on the named tensors
    (the fit loop relies on it); a rule that looks at whole tensors must say ``whole_tensor=True``."""
    if not opt.flattenable:
        return SKIP, "not flattenable: the fit loop always gives it the named tensors"
    gen = torch.Generator().manual_seed(0)
    named = {
        "w": torch.randn(3, 2, generator=gen, dtype=torch.float64),
        "v": 10 * torch.randn(4, generator=gen, dtype=torch.float64),
    }
    flat = {"flat": torch.cat([t.reshape(-1) for t in named.values()])}
    s_named, s_flat = opt.init(named), opt.init(flat)
    # sum(p**2) in closed form, on either layout: its gradient 2p differs in scale per tensor
    bowl = _Problem(
        named, lambda p: sum((t.detach() ** 2).sum() for t in p.values()), lambda p: {k: 2 * t for k, t in p.items()}
    )
    update = _update(opt, bowl)
    for step in range(steps):
        u_named, s_named = update(bowl.grad(named), s_named, named)
        u_flat, s_flat = update(bowl.grad(flat), s_flat, flat)
        joined = torch.cat([u.reshape(-1) for u in u_named.values()])
        if not torch.allclose(joined, u_flat["flat"], rtol=1e-12, atol=1e-15):
            return FAIL, (
                f"step {step}: updates on one flat buffer differ from per-tensor updates; a rule that "
                "looks at whole tensors (norms, shapes) must be declared @elementwise(whole_tensor=True)"
            )
        named = {k: t + u_named[k] for k, t in named.items()}
        flat = {"flat": flat["flat"] + u_flat["flat"]}
    return PASS, f"flat-buffer and per-tensor updates agree over {steps} steps"


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some lazily deprecated module objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, Tensor))


# ---------------------------------------------------------------- losses


def check_loss(
    loss_fn: Callable[[Params], Tensor], params: Mapping[str, Tensor] | torch.nn.Module, *, name: str | None = None
) -> CheckReport:
    """Check a loss ``loss_fn(params) -> scalar Tensor`` at ``params``.

    Rows: ``scalar output`` (a 0-dim tensor with a gradient path to the params), ``gradient`` (autograd
    equals central finite differences, ``torch.autograd.gradcheck`` in float64), ``NaN input`` (INFO: what
    the loss returns when one parameter is NaN -- propagating NaN is the safe behaviour).
    """
    from diyopt.core.checks import check_gradients, check_loss_value
    from diyopt.core.tree import as_params

    report = CheckReport(name or getattr(loss_fn, "__name__", "loss"))
    if isinstance(params, torch.nn.Module):  # as in fit: the loss may call the module or close over it
        from diyopt.core.modules import bind_module

        loss_fn, params = bind_module(loss_fn, params)
    p0 = as_params(params)
    names = list(p0)

    def scalar():
        leaves = {k: v.clone().requires_grad_() for k, v in p0.items()}
        loss = loss_fn(leaves)
        check_loss_value(loss, leaves)
        check_gradients(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True))))
        if loss.dim() != 0:
            return FAIL, f"returns shape {tuple(loss.shape)}; return a 0-dim tensor (e.g. .sum() or .squeeze())"
        return PASS, f"0-dim {loss.dtype} tensor, value {float(loss.detach()):.6g}"

    def gradient():
        xs = tuple(p0[k].detach().double().clone().requires_grad_() for k in names)

        def f(*ts):
            return loss_fn(dict(zip(names, ts)))

        try:
            torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-5, rtol=1e-4)
        except GradcheckError as e:
            first = str(e).strip().splitlines()[0]
            return FAIL, f"autograd gradient differs from finite differences: {first}"
        return PASS, "autograd == central finite differences (gradcheck, float64)"

    def nan_input():
        bad = {k: v.clone() for k, v in p0.items()}
        bad[names[0]].view(-1)[0] = float("nan")
        try:
            value = loss_fn(bad)
        except Exception as e:
            return INFO, f"raises {type(e).__name__}: {' '.join(str(e).split())}"
        v = float(value.detach().reshape(-1)[0]) if isinstance(value, Tensor) else value
        if v != v:
            return INFO, "returns nan (NaN propagates: a fit stops on it as diverged)"
        return INFO, f"returns {v!r} (a finite value: NaN inputs are silently absorbed)"

    for check_name, run in (("scalar output", scalar), ("gradient", gradient), ("NaN input", nan_input)):
        try:
            status, detail = run()
        except Exception as e:
            status, detail = FAIL, f"raised {type(e).__name__}: {' '.join(str(e).split())}"
        report.results.append(CheckResult(check_name, status, detail))
    return report
