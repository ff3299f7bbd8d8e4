"""The seed's experiment, checked against the seed's own loops and the closed-form line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import diyopt
from diyopt.analysis.demo import initial_params, run_demo
from diyopt.problems.data import least_squares_line, make_line
from diyopt.problems.losses import l2_norm

STEPS = 300


def seed_data(seed=0):
    # The seed's generator, written out independently of diyopt.data.
    rng = np.random.RandomState(seed)
    x = 2 * rng.rand(100)
    y = -1 * x + 1 + 0.1 * rng.randn(100)
    return torch.tensor(x), torch.tensor(y)


def seed_adam_loop(x, y, a, b, epoch, **adam_kwargs):
    """The seed's package loop, verbatim in substance (float64 leaves)."""
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    optimizer = torch.optim.Adam([a, b], **adam_kwargs)
    loss_epoch = np.zeros(epoch)
    for i in range(epoch):
        optimizer.zero_grad()
        loss = (y - (a * x + b)).norm()
        loss_epoch[i] = loss.item()
        loss.backward()
        optimizer.step()
    return a.detach(), b.detach(), loss_epoch


def seed_gd_loop(x, y, a, b, epoch, eta=0.001):
    """The seed's own gradient loop."""
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss_epoch = np.zeros(epoch)
    for i in range(epoch):
        a.requires_grad_(True)
        b.requires_grad_(True)
        loss = (y - (a * x + b)).norm()
        loss_epoch[i] = loss.item()
        loss.backward()
        a.requires_grad_(False)
        b.requires_grad_(False)
        a = a - eta * a.grad
        b = b - eta * b.grad
    return a, b, loss_epoch


def line_loss(x, y):
    return lambda p: l2_norm(p["a"] * x + p["b"], y)


def test_make_line_is_the_seeds_generator():
    x, y = make_line(seed=3)
    xr, yr = seed_data(3)
    assert x.dtype == torch.float64 and torch.equal(x, xr) and torch.equal(y, yr)


def test_least_squares_line_matches_numpy():
    x, y = make_line(seed=1)
    ref = np.linalg.lstsq(np.stack([x.numpy(), np.ones(100)], 1), y.numpy(), rcond=None)[0]
    assert least_squares_line(x, y) == pytest.approx(tuple(ref), rel=1e-13)


@pytest.mark.parametrize("kwargs", [{}, {"lr": 1e-2}, {"lr": 1e-2, "betas": (0.8, 0.99), "amsgrad": True}])
def test_packaged_adam_path_equals_the_seed_loop(kwargs):
    x, y = seed_data()
    p0 = initial_params(0)
    a, b, ref = seed_adam_loop(x, y, p0["a"], p0["b"], STEPS, **kwargs)
    r = diyopt.fit(line_loss(x, y), p0, torch.optim.Adam, STEPS, optimizer_kwargs=kwargs)
    np.testing.assert_allclose(r.losses.numpy(), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(r.params["a"], a, rtol=1e-12, atol=0)
    torch.testing.assert_close(r.params["b"], b, rtol=1e-12, atol=0)
    assert r.steps == STEPS and r.stop_reason == "max_steps" and r.seconds > 0


def test_gradient_descent_equals_the_seed_loop():
    x, y = seed_data()
    p0 = initial_params(0)
    a, b, ref = seed_gd_loop(x, y, p0["a"], p0["b"], STEPS)
    r = diyopt.fit(line_loss(x, y), p0, diyopt.optim.gradient_descent(lr=0.001), STEPS)
    np.testing.assert_allclose(r.losses.numpy(), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(r.params["a"], a, rtol=1e-12, atol=0)
    torch.testing.assert_close(r.params["b"], b, rtol=1e-12, atol=0)


def test_result_losses_are_the_loss_before_each_update():
    x, y = seed_data()
    seen = []
    r = diyopt.fit(
        line_loss(x, y),
        initial_params(1),
        diyopt.optim.adam(lr=0.05),
        20,
        callback=lambda step, loss, params: seen.append(l2_norm(params["a"] * x + params["b"], y)),
    )
    # callback sees params after update i, whose loss is what step i+1 records.
    torch.testing.assert_close(r.losses[1:], torch.stack(seen[:-1]), rtol=1e-14, atol=0)
    torch.testing.assert_close(r.losses[0], line_loss(x, y)(initial_params(1)), rtol=1e-14, atol=0)


def test_diyopt_adam_equals_torch_adam_functionally():
    x, y = seed_data()
    p0 = initial_params(2)
    a, b, ref = seed_adam_loop(x, y, p0["a"], p0["b"], STEPS, lr=1e-2, weight_decay=0.1)
    r = diyopt.fit(line_loss(x, y), p0, diyopt.optim.adam(lr=1e-2, weight_decay=0.1), STEPS)
    np.testing.assert_allclose(r.losses.numpy(), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(r.params["a"], a, rtol=1e-12, atol=0)


def test_flat_buffer_and_named_tensors_agree():
    # Mixed dtypes force the named-tensor path; the same values in one dtype take the flat path.
    torch.manual_seed(0)
    target = torch.randn(3, 4, dtype=torch.float64)
    loss = lambda p: ((p["w"] @ p["v"] - target) ** 2).sum() + p["s"].double().square().sum()
    flat = {
        "w": torch.randn(3, 2, dtype=torch.float64),
        "v": torch.randn(2, 4, dtype=torch.float64),
        "s": torch.ones(2, dtype=torch.float64),
    }
    mixed = {**flat, "s": flat["s"].float()}
    r1 = diyopt.fit(loss, flat, diyopt.optim.adam(lr=1e-2), 50)
    r2 = diyopt.fit(loss, mixed, diyopt.optim.adam(lr=1e-2), 50)
    torch.testing.assert_close(r1.params["w"], r2.params["w"], rtol=1e-6, atol=1e-9)
    assert r1.params["w"].shape == (3, 2) and r2.params["s"].dtype == torch.float32


@pytest.mark.parametrize("seed", range(5))
def test_demo_fits_land_on_the_exact_line(tmp_path, seed):
    summary = run_demo(out=tmp_path / "demo", seed=seed, parallel=False)
    exact = summary["exact"]
    x, y = make_line(seed=seed)
    assert (exact["a"], exact["b"]) == pytest.approx(least_squares_line(x, y), rel=1e-12)
    for name in ("adam", "gradient_descent"):
        fit = summary["fits"][name]
        assert abs(fit["a"] - exact["a"]) < 1e-3 and abs(fit["b"] - exact["b"]) < 1e-3, (name, fit)
        assert fit["abs_error_a"] == pytest.approx(abs(fit["a"] - exact["a"]))


def test_demo_writes_figures_and_summary(tmp_path):
    import matplotlib.image

    out = tmp_path / "demo"
    run_demo(out=out, steps=200)
    for name in ("sample", "Adam_loss", "Adam", "original_loss", "original", "compare_loss"):
        img = matplotlib.image.imread(out / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0.01, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"data", "exact", "fits"}
    assert set(summary["exact"]) == {"a", "b"}
    for fit in summary["fits"].values():
        assert set(fit) >= {"a", "b", "final_loss", "seconds", "steps", "abs_error_a", "abs_error_b"}
        # Adam and gradient descent evaluate the loss and its gradient once per step, the Hessian never
        assert (fit["nfev"], fit["njev"], fit["nhev"]) == (fit["steps"], fit["steps"], 0) == (200, 200, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp folder left behind


def test_demo_parallel_fits_equal_sequential_fits(tmp_path):
    # the Adam fit in a forked worker is the same computation as in this process: equal to the last bit
    par = run_demo(out=tmp_path / "par", steps=300, parallel=True)["fits"]
    seq = run_demo(out=tmp_path / "seq", steps=300, parallel=False)["fits"]
    assert list(par) == list(seq) == ["adam", "gradient_descent"]
    for name in par:
        assert {k: par[name][k] for k in ("a", "b", "final_loss", "steps")} == {
            k: seq[name][k] for k in ("a", "b", "final_loss", "steps")
        }


def test_demo_cli_subprocess(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.run(
        [sys.executable, "-m", "diyopt.cli", "demo", "--out", str(out), "--steps", "500"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "gradient_descent" in proc.stdout and (out / "summary.json").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["demo", "--steps", "-5"], "--steps"),
        (["demo", "--steps", "0"], "--steps"),
        (["demo", "--lr", "abc"], "--lr"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_demo_cli_bad_input_is_one_line_exit_2(tmp_path, argv, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "diyopt.cli", *argv, *(["--out", str(tmp_path / "o")] if argv[0] == "demo" else [])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "o").exists()


def test_non_scalar_loss_names_the_shape():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        diyopt.fit(lambda p: p["w"] * 2, {"w": torch.ones(3)}, diyopt.optim.adam(), 5)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        diyopt.fit(lambda p: p["w"] * 2, {"w": torch.ones(3)}, torch.optim.SGD, 5, lr=0.1)


def test_loss_without_gradient_path_is_refused():
    with pytest.raises(ValueError, match="no gradient path"):
        diyopt.fit(lambda p: torch.tensor(float(p["w"].sum())), {"w": torch.ones(3)}, diyopt.optim.adam(), 5)


def test_invalid_learning_rate_uses_torch_wording():
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -1$"):
        diyopt.optim.adam(lr=-1)


def test_bad_steps_and_params():
    loss = lambda p: p["w"].square().sum()
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            diyopt.fit(loss, {"w": torch.ones(2)}, diyopt.optim.adam(), steps)
    with pytest.raises(TypeError, match="floating point"):
        diyopt.fit(loss, {"w": torch.ones(2, dtype=torch.long)}, diyopt.optim.adam(), 3)
    with pytest.raises(TypeError, match="not an instance"):
        diyopt.fit(loss, {"w": torch.ones(2)}, torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=1), 3)


def test_module_params_are_accepted():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    loss = lambda p: ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()
    r = diyopt.fit(loss, model, diyopt.optim.gradient_descent(lr=0.1), 2000)
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(20, 1, dtype=torch.float64)], 1), y).solution
    torch.testing.assert_close(r.params["weight"].reshape(-1), sol[:3, 0], rtol=1e-6, atol=1e-8)
    assert list(r.params) == ["weight", "bias"]
