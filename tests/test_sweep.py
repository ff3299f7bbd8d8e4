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
