"""fit on an nn.Module: every natural loss style trains it, the module holds the result (issue 10, bug 1).

The reference is the plain PyTorch loop -- ``torch.optim.SGD`` on a deep copy of the module, the same loss
-- so a fit that silently trains nothing (the old zeros-for-missing-gradients behaviour) fails here.
"""

import copy
import warnings

import pytest
import torch

import diyopt
from diyopt.problems.losses import mse

STEPS = 30
LR = 0.1


def make(kind: str, dtype: torch.dtype):
    torch.manual_seed(0)
    if kind == "linear":
        model = torch.nn.Linear(3, 2)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model = model.to(dtype)
    x = torch.randn(40, 3, dtype=dtype)
    y = torch.sin(x @ torch.randn(3, 2, dtype=dtype))
    return model, x, y


def styles(model, x, y):
    """The two module styles: the loss calls what it is given, or closes over the module."""
    return {"given": lambda m: mse(m(x), y), "closure": lambda p: mse(model(x), y)}


def reference(model, x, y, steps=STEPS, lr=LR):
    """torch.optim.SGD on a copy, the loss before each step: (losses, final named params)."""
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = mse(ref(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), {k: v.detach() for k, v in ref.named_parameters() if v.requires_grad}


def tolerances(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


def assert_trained_like(result, model, x, y, dtype):
    losses, params = reference_of[id(model)]
    tol = tolerances(dtype)
    torch.testing.assert_close(result.losses, losses, **tol)
    assert list(result.params) == list(params)
    for k, v in params.items():
        torch.testing.assert_close(result.params[k], v, **tol)
        torch.testing.assert_close(model.get_parameter(k).detach(), result.params[k], rtol=0, atol=0)
    assert result.losses[-1] < 0.9 * result.losses[0]  # it trained (the bug: a constant loss)


reference_of: dict = {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("style", ["given", "closure"])
def test_module_styles_train_like_torch_sgd(style, kind, dtype):
    model, x, y = make(kind, dtype)
    reference_of[id(model)] = reference(model, x, y)
    r = diyopt.fit(styles(model, x, y)[style], model, diyopt.optim.sgd(lr=LR), STEPS)
    assert r.stop_reason == "max_steps"
    assert_trained_like(r, model, x, y, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("style", ["given", "closure"])
def test_module_styles_with_a_torch_optim_class(style, dtype):
    model, x, y = make("mlp", dtype)
    reference_of[id(model)] = reference(model, x, y)
    r = diyopt.fit(styles(model, x, y)[style], model, torch.optim.SGD, STEPS, lr=LR)
    assert_trained_like(r, model, x, y, dtype)


@pytest.mark.parametrize(
    "style, dtype", [("given", torch.float64), ("closure", torch.float64), ("given", torch.float32)]
)  # each compiles: ~5-15 s
def test_module_styles_compiled(style, dtype):
    model, x, y = make("mlp", dtype)
    losses, params = reference(model, x, y, steps=16)
    r = diyopt.fit(styles(model, x, y)[style], model, diyopt.optim.sgd(lr=LR), 16, engine="compiled", chunk=8)
    tol = tolerances(dtype)
    torch.testing.assert_close(r.losses, losses, **tol)
    for k, v in params.items():
        torch.testing.assert_close(model.get_parameter(k).detach(), v, **tol)
        torch.testing.assert_close(r.params[k], v, **tol)
    assert r.losses[-1] < r.losses[0]


@pytest.mark.parametrize("style", ["given", "closure"])
def test_module_styles_in_a_sweep(style):
    model, x, y = make("linear", torch.float64)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = diyopt.sweep(styles(model, x, y)[style], model, diyopt.optim.sgd(), 20, grid={"lr": [0.1, 0.05]})
    for k, lr in enumerate([0.1, 0.05]):
        losses, params = reference(model, x, y, steps=20, lr=lr)
        torch.testing.assert_close(result.losses[k], losses, rtol=1e-10, atol=1e-12)
        for name, v in params.items():
            torch.testing.assert_close(result.run_params(k)[name], v, rtol=1e-10, atol=1e-12)
    for k, v in before.items():  # many runs, no one result: the module is left as it was
        assert torch.equal(model.get_parameter(k), v)


def test_dict_style_with_a_module_still_works():
    model, x, y = make("linear", torch.float64)
    reference_of[id(model)] = reference(model, x, y)
    loss = lambda p: mse(torch.func.functional_call(model, p, (x,)), y)
    r = diyopt.fit(loss, model, diyopt.optim.sgd(lr=LR), STEPS)
    assert_trained_like(r, model, x, y, torch.float64)

    model, x, y = make("linear", torch.float64)
    reference_of[id(model)] = reference(model, x, y)
    r = diyopt.fit(lambda p: mse(x @ p["weight"].T + p["bias"], y), model, diyopt.optim.sgd(lr=LR), STEPS)
    assert_trained_like(r, model, x, y, torch.float64)


@pytest.mark.parametrize("engine", ["eager", "compiled", "torch"])
def test_a_loss_on_no_optimized_tensor_is_an_error_naming_them(engine):
    model, x, y = make("linear", torch.float32)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = lambda p: mse(model(x), y)  # closes over the module, but the fit is given a dict
    opt = torch.optim.SGD if engine == "torch" else diyopt.optim.sgd(lr=LR)
    kwargs = {"lr": LR} if engine == "torch" else {"engine": engine}
    with pytest.raises(ValueError, match=r"does not depend on the parameters.*'weight', 'bias'"):
        diyopt.fit(loss, params, opt, 5, **kwargs)


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)


@pytest.mark.parametrize("engine", ["eager", "torch"])
def test_unused_params_are_named_in_one_warning(engine):
    torch.manual_seed(0)
    model = TwoHeads().double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    unused = {k: v.detach().clone() for k, v in model.unused.named_parameters()}
    opt = torch.optim.SGD if engine == "torch" else diyopt.optim.sgd(lr=LR)
    kwargs = {"lr": LR} if engine == "torch" else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = diyopt.fit(lambda m: mse(m.used(x), y), model, opt, 10, **kwargs)
    messages = [str(w.message) for w in caught if "no gradient" in str(w.message)]
    assert len(messages) == 1 and "'unused.weight', 'unused.bias'" in messages[0], messages
    assert r.losses[-1] < r.losses[0]
    for k, v in unused.items():
        assert torch.equal(model.unused.get_parameter(k), v)


def test_frozen_params_are_not_optimized():
    model, x, y = make("mlp", torch.float64)
    model[0].requires_grad_(False)
    frozen = {k: v.detach().clone() for k, v in model[0].named_parameters()}
    reference_of[id(model)] = reference(model, x, y)  # torch.optim.SGD skips grad-less params too
    r = diyopt.fit(lambda m: mse(m(x), y), model, diyopt.optim.sgd(lr=LR), STEPS)
    assert list(r.params) == ["2.weight", "2.bias"]
    assert_trained_like(r, model, x, y, torch.float64)
    for k, v in frozen.items():
        assert torch.equal(model[0].get_parameter(k), v)


def test_a_module_with_nothing_to_train_is_refused():
    model, x, y = make("linear", torch.float64)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        diyopt.fit(lambda m: mse(m(x), y), model, diyopt.optim.sgd(lr=LR), 5)


@pytest.mark.parametrize("style", ["given", "closure"])
def test_lbfgs_on_a_module_reaches_least_squares(style):
    """The closed form (lstsq) as the reference: L-BFGS on a Linear module's MSE, both styles."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randn(30, 1, dtype=torch.float64)
    r = diyopt.lbfgs(
        styles(model, x, y)[style],
        model,
        max_iter=100,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(30, 1, dtype=torch.float64)], 1), y).solution[:, 0]
    torch.testing.assert_close(model.weight.detach().reshape(-1), sol[:3], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.bias.detach(), sol[3:], rtol=1e-7, atol=1e-9)
    assert torch.equal(r.params["weight"], model.weight.detach())


@pytest.mark.parametrize("engine", ["eager", "compiled", "torch"])
def test_a_loss_without_any_gradient_path_names_the_params(engine):
    _, x, y = make("linear", torch.float64)
    params = {"w": torch.zeros(3, 2, dtype=torch.float64)}
    loss = lambda p: mse(x @ p["w"].detach(), y)  # detached: no path from the loss to the params at all
    opt = torch.optim.SGD if engine == "torch" else diyopt.optim.sgd(lr=LR)
    kwargs = {"lr": LR} if engine == "torch" else {"engine": engine}
    with pytest.raises(ValueError, match="no gradient path to the params 'w'"):
        diyopt.fit(loss, params, opt, 5, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", ["least_squares", "newton"])
def test_float64_solvers_on_a_module(solver, dtype):
    """least_squares and newton work in float64: a float32 module still computes in float32, and both
    styles reach the closed-form least-squares fit; the module holds it afterwards."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).to(dtype)
    x = torch.randn(30, 3, dtype=dtype)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=dtype) + 0.3 + 0.01 * torch.randn(30, 1, dtype=dtype)
    design = torch.cat([x, torch.ones(30, 1, dtype=dtype)], 1).double()
    sol = torch.linalg.lstsq(design, y.double()).solution[:, 0]
    tol = tolerances(dtype) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for loss in (lambda m: (m(x) - y).reshape(-1), lambda p: (model(x) - y).reshape(-1)):
        with torch.no_grad():
            model.weight.zero_(), model.bias.zero_()
        if solver == "least_squares":
            r = diyopt.least_squares(loss, model)
        else:
            gtol = 1e-4 if dtype == torch.float32 else 1e-10  # a float32 loss's gradient is float32-exact
            r = diyopt.newton(lambda p, loss=loss: loss(p).square().sum(), model, gtol=gtol)
        assert r.stop_reason == "converged", r.info["message"]
        torch.testing.assert_close(model.weight.detach().reshape(-1).double(), sol[:3], **tol)
        torch.testing.assert_close(model.bias.detach().double(), sol[3:], **tol)
        assert model.weight.dtype == dtype


def test_check_loss_on_a_module_and_on_a_loss_that_ignores_its_params():
    model, x, y = make("linear", torch.float64)
    closure = lambda p: mse(model(x), y)
    assert diyopt.check_loss(closure, model).passed  # given the module: its gradient is checked against FD
    detached = diyopt.check_loss(closure, {k: v.detach().clone() for k, v in model.named_parameters()})
    row = detached["scalar output"]
    assert row.status == "FAIL" and "'weight', 'bias'" in row.detail  # was PASS: both gradients "zero"
