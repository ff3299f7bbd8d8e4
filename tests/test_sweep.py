"""``diyopt.sweep``'s two ways through its one loop over the runs: the vmapped batches and, for a loss or rule
vmap cannot map, one eager ``fit`` per run. Both must give the same rows, curves and params."""

from __future__ import annotations

import math

import pytest
import torch

import diyopt


def rosenbrock(p):
    x = p["x"]
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def branchy_rosenbrock(p):
    # the same loss, behind data-dependent control flow: vmap refuses it, so sweep runs a loop of fits
    if p["x"].sum() > 0:
        return rosenbrock(p)
    return rosenbrock(p)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_loop_fallback_equals_the_batched_runs(dtype):
    p0 = {"x": torch.tensor([-1.2, 1.0, -1.2], dtype=dtype)}
    grid = {"lr": [1e-4, 1e-3, 1.0]}  # lr=1 diverges: its curve is nan from there, its params the last finite
    opt = diyopt.optim.gradient_descent()
    batched = diyopt.sweep(rosenbrock, p0, opt, 25, grid=grid, seeds=2, batch_size=4)  # 6 runs: batches 4 + 2
    with pytest.warns(UserWarning, match="cannot be vectorized"):
        loop = diyopt.sweep(branchy_rosenbrock, p0, opt, 25, grid=grid, seeds=2)
    assert (batched.info["engine"], batched.info["batches"], loop.info["engine"], loop.info["batches"]) == (
        "vmap",
        2,
        "loop",
        6,
    )
    assert [r["diverged"] for r in loop.rows] == [r["diverged"] for r in batched.rows] == [False] * 4 + [True] * 2
    torch.testing.assert_close(loop.losses, batched.losses, rtol=1e-12, atol=0, equal_nan=True)
    torch.testing.assert_close(loop.params["x"], batched.params["x"], rtol=1e-12, atol=0)
    for a, b in zip(loop.rows, batched.rows):
        assert {k: a[k] for k in ("lr", "seed", "run")} == {k: b[k] for k in ("lr", "seed", "run")}
        assert math.isclose(a["final_loss"], b["final_loss"], rel_tol=1e-12) or a["final_loss"] == b["final_loss"]
    # and each run is the eager fit of its setting (the reference)
    ref = diyopt.fit(rosenbrock, p0, diyopt.optim.gradient_descent(lr=1e-3), 25)
    torch.testing.assert_close(batched.run_params(2)["x"], ref.params["x"], rtol=1e-12, atol=0)
    torch.testing.assert_close(batched.losses[2], ref.losses, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- the broadcast step (per-element rules)


def ranked_problem(dtype):
    """A loss over params of three ranks (a matrix, a vector, a scalar), with a quartic term so a large
    step diverges."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randn(12, generator=gen, dtype=torch.float64).to(dtype)

    def loss(p):
        pred = torch.tanh(x @ p["W"]) @ p["v"].to(x.dtype) + p["c"]
        return ((pred - target) ** 2).mean() + 0.1 * (p["W"] ** 4).sum()

    params = {
        "W": (0.5 * torch.randn(3, 2, generator=gen, dtype=torch.float64)).to(dtype),
        "v": torch.tensor([0.3, -0.2], dtype=dtype),
        "c": torch.tensor(0.1, dtype=dtype),
    }
    return loss, params


def fit_as_sweep_reports(loss, params, opt, steps):
    """The eager ``fit`` of one run as the sweep reports it: the loss curve, nan from a diverged step on,
    and the last finite params (``fit`` stops there)."""
    r = diyopt.fit(loss, params, opt, steps)
    curve = torch.full((steps,), math.nan, dtype=r.losses.dtype)
    curve[: len(r.losses)] = r.losses
    return curve, r.params


def assert_runs_equal_fits(result, loss, opt, steps, rtol):
    from test_engines import start  # what the docs say a seed means, written out

    dtype = result.params["W"].dtype
    for k, row in enumerate(result.rows):
        # run k's settings as the sweep passes them (its docs): tensors in the params' dtype -- in float32 a
        # tensor beta rounds otherwise than a Python float does (torch's rule for tensor betas)
        setting = {n: _as_tensors(row[n], dtype) for n in result.hyperparameters()}
        p0 = start(ranked_problem(dtype)[1], row["seed"])
        curve, params = fit_as_sweep_reports(loss, p0, opt.replace_hyperparams(**setting), steps)
        torch.testing.assert_close(result.losses[k], curve, rtol=rtol, atol=0, equal_nan=True, msg=f"run {k}")
        for n in params:
            torch.testing.assert_close(result.params[n][k], params[n], rtol=rtol, atol=0, msg=f"run {k} {n}")


def _as_tensors(value, dtype):
    if isinstance(value, tuple):
        return tuple(torch.tensor(v, dtype=dtype) for v in value)
    return torch.tensor(value, dtype=dtype)


RTOL = 1e-12  # both dtypes: with the settings as tensors, each run is bitwise its fit here


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_broadcast_step_sweeps_lr_and_betas_over_seeds_like_single_fits(dtype):
    loss, p0 = ranked_problem(dtype)
    opt = diyopt.optim.adam()
    grid = {"lr": [1e-2, 5e-2], "betas": [(0.9, 0.999), (0.5, 0.9)]}
    result = diyopt.sweep(loss, p0, opt, 30, grid=grid, seeds=[0, 1, 2])
    assert result.info["update"] == "broadcast" and len(result) == 12
    assert_runs_equal_fits(result, loss, opt, 30, RTOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_broadcast_step_keeps_a_diverged_run_at_its_last_finite_params(dtype):
    loss, p0 = ranked_problem(dtype)
    opt = diyopt.optim.sgd(momentum=0.9)
    grid = {"lr": [1e-2, 30.0], "momentum": [0.0, 0.9]}  # lr=30 blows up on the quartic term
    result = diyopt.sweep(loss, p0, opt, 25, grid=grid, seeds=[0, 3], batch_size=5)  # 8 runs: batches 5 + 3
    assert result.info["update"] == "broadcast" and result.info["batches"] == 2
    assert [r["diverged"] for r in result.rows] == [False] * 4 + [True] * 4
    assert_runs_equal_fits(result, loss, opt, 25, RTOL)


def test_rules_that_mix_elements_stay_on_the_vmapped_step():
    loss, p0 = ranked_problem(torch.float64)

    @diyopt.elementwise
    def per_size(grad, state, param, *, lr=0.1):  # declared per element, but reads the tensor's size
        return -lr * grad / grad.numel(), state

    clipped = diyopt.chain(diyopt.transforms.clip_by_global_norm(0.1), diyopt.optim.gradient_descent(lr=0.1))
    for opt, why in [(clipped, "linalg_vector_norm"), (per_size(), "differs from the vmapped")]:
        result = diyopt.sweep(loss, p0, opt, 10, grid={"lr": [0.05, 0.1]}, seeds=[0, 1])
        assert result.info["update"] == "vmap" and why in result.info["update_why"]
        assert_runs_equal_fits(result, loss, opt, 10, 1e-12)
