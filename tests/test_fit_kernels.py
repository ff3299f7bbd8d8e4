"""The eager fit's fast paths against their references.

- A built-in with one of torch's fused kernels (``adam``, ``adamw``, ``adagrad``) runs it in place on
  the fit's flat buffer (``engines._fit_step.KernelStep``): every step's params (through the callback), the
  loss history, the state and every count equal the pure rule's fit (the reference: the same rule without
  its kernel field), in float64 and float32, and the guard's events and last finite params are the pure
  path's -- also where finite gradients overflow the params, which only a check after the kernel sees.
- The fit against hand-written loops: the seed's own gradient-descent loop (bitwise) and a
  ``torch.optim.Adam(fused=True)`` loop.
- The gradients' direct engine call equals ``torch.autograd.grad``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._pytree as pytree
from optim_db import case_id, optim_db
from to_torch_helpers import assert_rel

import diyopt
from diyopt.engines import _fit_step
from diyopt.errors import DivergedError

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
CASES = [(i.name, kw) for i in optim_db if i.name in _fit_step.FUSED for kw in i.kernel_settings]
STEPS = 8


def problem(dtype):
    """Least squares with params of three shapes (a matrix, a vector, a 1-element tensor)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 2, generator=g, dtype=dtype), torch.randn(5, 3, generator=g, dtype=dtype)
    p0 = {
        "w": torch.randn(2, 3, generator=g, dtype=dtype),
        "b": torch.randn(3, generator=g, dtype=dtype),
        "c": torch.randn(1, generator=g, dtype=dtype),
    }
    return (lambda p: ((x @ p["w"] + p["b"] - y) ** 2).sum() + (p["c"] ** 2).sum()), p0


def fit_recorded(loss, p0, optimizer, steps, **kw):
    """The fit, and the params the callback saw after each update (kept: later steps must not change them)."""
    seen = []
    r = diyopt.fit(loss, p0, optimizer, steps, callback=lambda i, value, p: seen.append(p), **kw)
    return r, seen


def assert_same_result(fast, pure, dtype):
    """Everything a fit records: counts, stop reason, events, history, params, state (names, dtypes, values)."""
    assert (fast.steps, fast.stop_reason, fast.nfev, fast.njev) == (pure.steps, pure.stop_reason, pure.nfev, pure.njev)
    assert fast.info.keys() == pure.info.keys() and fast.info.get("skipped") == pure.info.get("skipped")
    if "diverged" in pure.info:
        a, b = fast.info["diverged"], pure.info["diverged"]
        assert {k: a[k] for k in ("step", "what", "param")} == {k: b[k] for k in ("step", "what", "param")}
        assert math.isfinite(a["loss"]) == math.isfinite(b["loss"])
    assert fast.losses.dtype == pure.losses.dtype and fast.losses.shape == pure.losses.shape
    finite = torch.isfinite(pure.losses)
    assert torch.equal(torch.isfinite(fast.losses), finite)
    if finite.any():
        assert_rel(fast.losses[finite], pure.losses[finite], TOL[dtype], "losses")
    for k in pure.params:
        assert_rel(fast.params[k], pure.params[k], TOL[dtype], f"param {k}")
    (a_leaves, a_spec), (b_leaves, b_spec) = pytree.tree_flatten(fast.state), pytree.tree_flatten(pure.state)
    assert a_spec == b_spec
    for a, b in zip(a_leaves, b_leaves):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        if b.numel():
            assert_rel(a, b, TOL[dtype], "state")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,kwargs", CASES, ids=[case_id(n, kw) for n, kw in CASES])
def test_fit_through_the_kernel_equals_the_pure_rule_step_by_step(name, kwargs, dtype, fit_kernel_calls):
    loss, p0 = problem(dtype)
    rule = getattr(diyopt.optim, name)(**kwargs)
    fast, fast_seen = fit_recorded(loss, p0, rule, STEPS)
    assert fit_kernel_calls.get(name) == STEPS  # the kernel ran every step
    pure, pure_seen = fit_recorded(loss, p0, rule._replace(kernel=None), STEPS)
    assert fit_kernel_calls.get(name) == STEPS  # and the reference did not
    assert_same_result(fast, pure, dtype)
    assert len(fast_seen) == len(pure_seen) == STEPS
    for step, (a, b) in enumerate(zip(fast_seen, pure_seen)):
        for k in b:
            assert_rel(a[k], b[k], TOL[dtype], f"step {step} param {k}")
    assert all(torch.equal(p0[k], problem(dtype)[1][k]) for k in p0)  # the caller's tensors are not written


def planted(kind: str, at: float):
    """A loss that goes non-finite once ``a`` passes ``at``: the loss itself (``"loss"``) or only the
    gradient of ``b``, through torch.where's unselected branch (``"grad"``)."""

    def loss(p):
        a, b = p["a"], p["b"]
        value = ((a - 1) ** 2).sum() + ((b - 2) ** 2).sum()
        crossed = a > at
        if kind == "loss":
            return value + torch.where(crossed, torch.full_like(a, math.nan), torch.zeros_like(a)).sum()
        return value + torch.where(crossed, torch.zeros_like(b), torch.sqrt(at - a.detach()) * b * 0).sum()

    return loss


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["loss", "grad"])
@pytest.mark.parametrize("policy", ["stop", "skip", "raise"])
def test_the_guard_on_the_kernel_path_is_the_pure_paths(policy, kind, dtype, fit_kernel_calls):
    p0 = {"a": torch.zeros(1, dtype=dtype), "b": torch.zeros(2, dtype=dtype)}
    loss, rule = planted(kind, 0.45), diyopt.optim.adam(lr=0.1)  # a_k = 0.1 k at first
    if policy == "raise":
        for optimizer in (rule, rule._replace(kernel=None)):
            with pytest.raises(DivergedError, match=r"non-finite (loss|gradient of parameter 'b') at step 5"):
                diyopt.fit(loss, p0, optimizer, 20, on_nonfinite="raise")
        assert fit_kernel_calls["adam"] == 6  # 5 taken, the 6th rejected
        return
    fast = diyopt.fit(loss, p0, rule, 20, on_nonfinite=policy)
    pure = diyopt.fit(loss, p0, rule._replace(kernel=None), 20, on_nonfinite=policy)
    assert fit_kernel_calls["adam"] == (6 if policy == "stop" else 20)
    assert_same_result(fast, pure, dtype)
    assert (fast.steps, fast.stop_reason) == ((5, "diverged") if policy == "stop" else (20, "max_steps"))
    assert fast.info.get("skipped") == (None if policy == "stop" else list(range(5, 20)))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_finite_gradients_that_overflow_the_params_leave_params_and_state_untouched(policy, fit_kernel_calls):
    # float32 params near the top of the range and lr=1e37: Adam's first step (about lr in size) overflows
    # a to inf from finite gradients. The kernel has written it by then; the fit puts back the last finite
    # params and state, bit for bit the pure path's (which never wrote them), with the pure path's event.
    p0 = {"a": torch.tensor([3.35e38]), "b": torch.tensor([1.0])}
    loss = lambda p: -p["a"].sum() + (p["b"] ** 2).sum()  # noqa: E731 -- d/da = -1: a grows by about lr
    rule = diyopt.optim.adam(lr=1e37)
    fast = diyopt.fit(loss, p0, rule, 3, on_nonfinite=policy)
    pure = diyopt.fit(loss, p0, rule._replace(kernel=None), 3, on_nonfinite=policy)
    assert fit_kernel_calls["adam"] >= 1
    if policy == "stop":
        assert fast.info["diverged"] == pure.info["diverged"] and pure.info["diverged"]["what"] == "param"
    else:
        assert fast.info["skipped"] == pure.info["skipped"] == [0, 1, 2]
    assert all(torch.equal(fast.params[k], pure.params[k]) for k in p0)
    assert torch.equal(fast.params["a"], p0["a"])
    for a, b in zip(pytree.tree_leaves(fast.state), pytree.tree_leaves(pure.state)):
        assert torch.equal(a, b)


def test_a_resumed_kernel_fit_equals_an_uninterrupted_one(tmp_path, fit_kernel_calls):
    loss, p0 = problem(torch.float64)
    rule = diyopt.optim.adam(lr=0.05)
    whole = diyopt.fit(loss, p0, rule, 12)
    ck = tmp_path / "c.pt"
    diyopt.fit(loss, p0, rule, 5, checkpoint=ck, checkpoint_every=5)
    diyopt.fit(loss, p0, rule, 5, checkpoint=ck, resume=True)  # a run at its end: nothing to do
    resumed = diyopt.fit(loss, p0, rule, 12, checkpoint=ck, resume=True)
    assert fit_kernel_calls["adam"] == 12 + 5 + 7
    assert torch.equal(resumed.losses, whole.losses)
    assert all(torch.equal(resumed.params[k], whole.params[k]) for k in p0)
    for a, b in zip(pytree.tree_leaves(resumed.state), pytree.tree_leaves(whole.state)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer", ["gradient_descent", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_descent_fit_is_the_seeds_hand_loop_bit_for_bit(dtype, optimizer):
    """The seed's own loop (``a = a - eta * a.grad`` after ``loss.backward()``): same losses, same params;
    ``sgd(lr)`` too (the fit does not run torch's fused SGD, whose one-rounding ``p - lr g`` differs)."""
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.rand(100, generator=g, dtype=torch.float64)
    y = -x + 1 + 0.1 * torch.randn(100, generator=g, dtype=torch.float64)
    a0, b0 = torch.randn(1, generator=g, dtype=dtype), torch.randn(1, generator=g, dtype=dtype)
    a, b, losses = a0.clone(), b0.clone(), []
    for _ in range(200):
        a.requires_grad_(True)
        b.requires_grad_(True)
        loss = (y - (a * x + b)).norm()
        losses.append(loss.item())
        loss.backward()
        a.requires_grad_(False)
        b.requires_grad_(False)
        a, b = a - 1e-3 * a.grad, b - 1e-3 * b.grad
    rule = getattr(diyopt.optim, optimizer)(lr=1e-3)
    r = diyopt.fit(lambda p: (y - (p["a"] * x + p["b"])).norm(), {"a": a0, "b": b0}, rule, 200)
    assert r.losses.tolist() == losses
    assert torch.equal(r.params["a"], a) and torch.equal(r.params["b"], b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adam_fit_follows_torch_optim_adam_fused(dtype, fit_kernel_calls):
    loss, p0 = problem(dtype)
    params = {k: v.clone().requires_grad_() for k, v in p0.items()}
    opt = torch.optim.Adam(params.values(), lr=0.05, fused=True)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        value = loss(params)
        losses.append(value.detach().clone())
        value.backward()
        opt.step()
    r = diyopt.fit(loss, p0, diyopt.optim.adam(lr=0.05), 30)
    assert fit_kernel_calls["adam"] == 30
    assert_rel(r.losses, torch.stack(losses), TOL[dtype], "losses")
    for k in p0:
        assert_rel(r.params[k], params[k].detach(), TOL[dtype], k)


@pytest.mark.parametrize("debug_log", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_direct_engine_call_equals_torch_autograd_grad(dtype, debug_log, monkeypatch):
    # with torch's autograd debug log on, grad takes torch's own engine call (which adds its logging hooks)
    import logging

    from torch.autograd import graph

    monkeypatch.setattr(graph.log, "level", logging.DEBUG if debug_log else graph.log.level)
    a, b, unused = (torch.randn(3, dtype=dtype, requires_grad=True) for _ in range(3))
    for seed in (None, torch.ones((), dtype=dtype)):
        loss = (a.sin() * b).sum() + a.norm()
        want = torch.autograd.grad(loss, (a, b, unused), allow_unused=True, retain_graph=True)
        got = _fit_step.grad(loss, (a, b, unused), seed)
        assert got[2] is None and want[2] is None
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
