"""The divergence guard: a non-finite loss or gradient at step k stops the fit at step k.

The NaN is planted in the loss itself, as a function of the params (so it survives torch.compile): plain
gradient descent on (a - 1)^2 with lr = 0.1 walks a_k = 1 - 0.8^k (closed form), and the loss turns nan --
or only its gradient, through torch.where's unselected branch -- once a crosses c, set between a_{k-1}
and a_k. The expected step and the last finite params come from that closed form.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import diyopt
from diyopt.errors import DivergedError

K = 7
A = [1 - 0.8**k for k in range(K + 1)]  # a_k, gradient descent with lr=0.1 on (a-1)^2
C = (A[K - 1] + A[K]) / 2


def planted(what: str):
    """Loss over params a (1,) and b (2,); b is zero-gradient except where the nan is planted."""

    def loss(p):
        a, b = p["a"], p["b"]
        value = ((a - 1) ** 2).sum() + (b**2).sum()
        crossed = a > C
        if what == "loss":
            return value + torch.where(crossed, torch.full_like(a, math.nan), torch.zeros_like(a)).sum()
        # finite value, nan gradient for b: the unselected branch sqrt(c - a) is nan once a > c
        hidden = torch.where(crossed, torch.zeros_like(b), torch.sqrt(C - a.detach()) * b * 0)
        return value + hidden.sum()

    return loss


def params0(dtype=torch.float64):
    return {"a": torch.zeros(1, dtype=dtype), "b": torch.zeros(2, dtype=dtype)}


# (engine, layout): compiling is slow on CI's 2 cores, so the compiled engine runs the flat layout only.
CASES = [("eager", True), ("eager", False), ("compiled", True)]


@pytest.mark.parametrize("engine, flat", CASES, ids=["eager-flat", "eager-named", "compiled-flat"])
@pytest.mark.parametrize("what, param", [("loss", None), ("grad", "b")])
def test_nan_at_step_k_stops_at_k_with_last_finite_params(engine, what, param, flat):
    p0 = params0() if flat else {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float32)}
    r = diyopt.fit(planted(what), p0, diyopt.optim.gradient_descent(lr=0.1), 50, engine=engine)
    assert r.stop_reason == "diverged"
    assert r.steps == K and len(r.losses) == K
    event = r.info["diverged"]
    assert (event["step"], event["what"]) == (K, what)
    if what == "grad":
        assert event["param"] == param
    assert r.params["a"].item() == pytest.approx(A[K], rel=1e-12)
    assert torch.isfinite(r.losses).all()
    expected_losses = torch.tensor([(1 - a) ** 2 for a in A[:K]], dtype=torch.float64)
    torch.testing.assert_close(r.losses.double(), expected_losses, rtol=1e-12, atol=0)


def test_raise_policy_names_step_and_param():
    with pytest.raises(DivergedError, match=r"non-finite gradient of parameter 'b' at step 7"):
        diyopt.fit(planted("grad"), params0(), diyopt.optim.gradient_descent(lr=0.1), 50, on_nonfinite="raise")


def test_skip_policy_leaves_params_and_state_as_they_were():
    # Once a crosses c every step is non-finite and skipped: the params stay at a_K, the Adam state at
    # what it was after K updates (a reference fit of K steps), and the history records the nans.
    opt = diyopt.optim.adam(lr=0.1)
    ref = diyopt.fit(lambda p: ((p["a"] - 1) ** 2).sum() + (p["b"] ** 2).sum(), params0(), opt, 20)
    crossing = next(k for k, v in enumerate(ref.losses.tolist()) if 1 - math.sqrt(v) > C)
    ref_k = diyopt.fit(lambda p: ((p["a"] - 1) ** 2).sum() + (p["b"] ** 2).sum(), params0(), opt, crossing)
    r = diyopt.fit(planted("loss"), params0(), opt, 20, on_nonfinite="skip")
    assert r.stop_reason == "max_steps" and r.steps == 20
    assert r.info["skipped"] == list(range(crossing, 20))
    assert torch.equal(r.params["a"], ref_k.params["a"])
    assert torch.isnan(r.losses[crossing:]).all() and torch.equal(r.losses[:crossing], ref.losses[:crossing])
    for x, y in zip(torch.utils._pytree.tree_leaves(r.state), torch.utils._pytree.tree_leaves(ref_k.state)):
        assert torch.equal(x, y)


def test_divergence_saves_the_last_finite_params_to_the_checkpoint(tmp_path):
    ck = tmp_path / "c.pt"
    r = diyopt.fit(
        planted("loss"), params0(), diyopt.optim.gradient_descent(lr=0.1), 50, checkpoint=ck, checkpoint_every=5
    )
    saved = diyopt.checkpoint.load(ck)
    assert saved["step"] == K
    assert torch.equal(saved["params"]["a"], r.params["a"])


def test_cli_exit_code_3_and_outputs_hold_the_last_finite_params(tmp_path, capsys):
    import json

    from diyopt.cli import main

    # Gradient descent with lr=10 on the seed line's sse overflows: the loss goes inf within steps.
    out = tmp_path / "out"
    code = main(
        [
            "fit",
            "--problem",
            "line",
            "--loss",
            "sse",
            "--optimizer",
            "gradient_descent:lr=10",
            "--steps",
            "500",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 3 and "diverged: non-finite" in err
    result = json.loads((out / "result.json").read_text())
    assert result["stop_reason"] == "diverged"
    assert all(math.isfinite(v) for vs in result["params"].values() for v in vs)


def test_guard_is_off_with_ignore():
    r = diyopt.fit(planted("loss"), params0(), diyopt.optim.gradient_descent(lr=0.1), 10, on_nonfinite="ignore")
    assert r.stop_reason == "max_steps" and torch.isnan(r.losses[K:]).all()


def test_unknown_policy():
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        diyopt.fit(planted("loss"), params0(), diyopt.optim.gradient_descent(lr=0.1), 10, on_nonfinite="halt")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_torch_optim_class_is_guarded_too(policy):
    # torch.optim.SGD(lr=0.1) takes the same steps as gradient_descent: a_k = 1 - 0.8^k.
    r = diyopt.fit(planted("grad"), params0(), torch.optim.SGD, 20, lr=0.1, on_nonfinite=policy)
    assert r.params["a"].item() == pytest.approx(A[K], rel=1e-12)
    assert torch.isfinite(r.params["b"]).all()
    if policy == "stop":
        assert r.stop_reason == "diverged" and r.steps == K
        assert r.info["diverged"]["step"] == K and r.info["diverged"]["param"] == "b"
    else:
        assert r.steps == 20 and r.info["skipped"] == list(range(K, 20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_final_loss_after_a_divergence_is_the_loss_at_the_returned_params(dtype):
    """A rule whose update goes nan at step 3 (and lr=inf at step 0): Result.params are the last finite
    params, and final_loss (what result.json and the demo print) is the loss there, not nan."""
    import diyopt

    loss = lambda p: ((p["x"] - 3.0) ** 2).sum()
    x0 = {"x": torch.ones(2, dtype=dtype)}

    @diyopt.elementwise
    def nan_at_3(grad, state, param, *, lr=0.1):
        return torch.where(state >= 3, torch.nan, -lr * grad), state + 1

    nan_at_3.init(lambda p: torch.zeros((), dtype=p.dtype))
    cases = [(nan_at_3(), {}), (diyopt.optim.sgd(lr=float("inf")), {}), (torch.optim.SGD, {"lr": float("inf")})]
    for optimizer, kwargs in cases:
        r = diyopt.fit(loss, x0, optimizer, 10, **kwargs)
        assert r.stop_reason == "diverged" and torch.isfinite(r.params["x"]).all()
        assert r.final_loss == pytest.approx(float(loss(r.params)), rel=1e-6)
    assert len(r.losses) == 0 and r.final_loss == pytest.approx(8.0)  # lr=inf: nothing taken, loss at x0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_per_step_check_sees_every_nonfinite_element_of_one_flat_buffer(dtype):
    # fit's flat buffer takes one dot product of the gradient and the new params: a nan or inf in either
    # must still make it non-finite, also opposite an exact zero (inf * 0 is nan) -- against torch.isfinite.
    from diyopt.core.checks import all_finite

    gen = torch.Generator().manual_seed(3)
    loss = torch.tensor(1.5, dtype=dtype)
    planted = itertools.product(
        [float("nan"), float("inf"), -float("inf")], ["grad", "new"], [False, True], [0, 4, 8]
    )  # every value x where x with/without an exact zero opposite x first/middle/last element
    cases = [None] * 6 + list(planted)  # None: nothing planted, all finite
    for case in cases:
        g, new = torch.randn(9, generator=gen, dtype=dtype), torch.randn(9, generator=gen, dtype=dtype)
        if case is not None:
            bad, where, zero_opposite, at = case
            target, other = (g, new) if where == "grad" else (new, g)
            target[at] = bad
            if zero_opposite:
                other[at] = 0.0
        want = bool(torch.isfinite(g).all() and torch.isfinite(new).all())
        assert want == (case is None)  # the enumeration planted what it says
        assert all_finite(loss, {"flat": g}, {"flat": new}) == want, (case, g, new)
    finite = {"flat": torch.ones(9, dtype=dtype)}
    assert all_finite(loss, finite, finite) and not all_finite(torch.tensor(float("nan"), dtype=dtype), finite, finite)
