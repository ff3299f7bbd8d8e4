"""``diyopt.to_torch``: every optimizer of the optimizer database (tests/optim_db.py), every setting, in
lockstep with its torch.optim class.

Reference: torch.optim itself (float64, a random least-squares problem with a little nonlinearity, 100+
steps). Params and state must agree to 1e-12 relative; the functional form (init/update, no adapter) gives
the same numbers; a fresh instance loaded from a state_dict continues in lockstep; schedulers, per-group
hyperparameters, hooks and params without grads behave as in torch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_db import TO_TORCH, UPDATE, cases
from optim_db import lockstep_problem as problem

import diyopt

STEPS = 100
RTOL = 1e-12


pytestmark = pytest.mark.usefixtures("float64_default")


def leaves(p0):
    return {k: v.clone().requires_grad_() for k, v in p0.items()}


def step(opt, params, loss, i=0):
    opt.zero_grad()
    loss(params, i).backward()
    opt.step()


def assert_rel(actual, expected, what=""):
    """``|actual - expected| <= RTOL * (|expected| + max|expected|)`` elementwise: relative to each element
    and to the tensor's scale (an element that passes near zero is not held to 1e-12 of itself)."""
    actual, expected = torch.as_tensor(actual).detach().double(), torch.as_tensor(expected).detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bound = RTOL * (expected.abs() + expected.abs().max())
    if not (err <= bound).all():
        worst = (err / (expected.abs() + expected.abs().max())).max()
        raise AssertionError(f"{what}: relative error {float(worst):.3g} > {RTOL}")


def assert_state_equal(ours: dict, theirs: dict):
    """Every state entry torch keeps is in ours under the same name (or ``<i>.name`` when two transforms
    both keep one, e.g. two step counters) with the same value."""
    for key, ref in theirs.items():
        if ref is None:  # SGD without momentum keeps momentum_buffer=None
            continue
        matches = [k for k in ours if k == key or k.endswith("." + key)]
        assert matches, f"torch state {key!r} missing from ours: {sorted(ours)}"
        for k in matches:
            assert_rel(ours[k], ref, k)


@pytest.mark.parametrize("info,kw", cases(TO_TORCH, where=lambda info: info.torch_cls is not None))
def test_lockstep_with_torch_and_state_dict_reload(info, kw):
    name, torch_class = info.name, info.torch_cls
    p0, loss = problem()
    ours_p, theirs_p = leaves(p0), leaves(p0)
    ours = diyopt.to_torch(getattr(diyopt.optim, name)(**kw), ours_p)
    theirs = torch_class(list(theirs_p.values()), **kw)
    for i in range(STEPS // 2):
        step(ours, ours_p, loss, i)
        step(theirs, theirs_p, loss, i)
    # a fresh instance, on copies of the params, loaded from the state dict, must continue in lockstep
    fresh_p = leaves({k: v.detach() for k, v in ours_p.items()})
    fresh = diyopt.to_torch(getattr(diyopt.optim, name)(**kw), fresh_p)
    fresh.load_state_dict(copy.deepcopy(ours.state_dict()))
    for i in range(STEPS // 2, STEPS):
        step(ours, ours_p, loss, i)
        step(fresh, fresh_p, loss, i)
        step(theirs, theirs_p, loss, i)
    for k in p0:
        assert_rel(ours_p[k], theirs_p[k], k)
        assert_rel(fresh_p[k], theirs_p[k], k)
        assert_state_equal(ours.state[ours_p[k]], theirs.state[theirs_p[k]])
        assert_state_equal(fresh.state[fresh_p[k]], theirs.state[theirs_p[k]])
    assert not torch.equal(ours_p["w"], p0["w"])  # it moved


@pytest.mark.parametrize("info,kw", cases(UPDATE))
def test_functional_form_equals_adapter(info, kw):
    name = info.name
    p0, loss = problem(1)
    opt = getattr(diyopt.optim, name)(**kw)
    adapter_p = leaves(p0)
    adapter = diyopt.to_torch(opt, adapter_p)
    params, state = {k: v.clone() for k, v in p0.items()}, opt.init(p0)
    for i in range(STEPS):
        step(adapter, adapter_p, loss, i)
        current = leaves(params)
        grads = dict(zip(current, torch.autograd.grad(loss(current, i), list(current.values()))))
        updates, state = opt.update(grads, state, params)
        params = diyopt.apply_updates(params, updates)
    for k in p0:
        assert_rel(adapter_p[k], params[k], k)


def test_state_dict_uses_torchs_names_for_adam():
    p0, loss = problem()
    ours_p, theirs_p = leaves(p0), leaves(p0)
    ours = diyopt.to_torch(diyopt.optim.adam(amsgrad=True), ours_p)
    theirs = torch.optim.Adam(list(theirs_p.values()), amsgrad=True)
    step(ours, ours_p, loss)
    step(theirs, theirs_p, loss)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert set(ours_sd["state"]) == set(theirs_sd["state"]) == {0, 1}
    assert set(ours_sd["state"][0]) == set(theirs_sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert ours_sd["param_groups"][0]["lr"] == theirs_sd["param_groups"][0]["lr"] == 1e-3
    assert ours_sd["param_groups"][0]["param_names"] == ["w", "b"]


def test_step_lr_changes_the_lr_used():
    p0, loss = problem()
    ours_p, theirs_p, plain_p = leaves(p0), leaves(p0), leaves(p0)
    ours = diyopt.to_torch(diyopt.optim.adam(lr=1e-2), ours_p)
    theirs = torch.optim.Adam(list(theirs_p.values()), lr=1e-2)
    plain = diyopt.to_torch(diyopt.optim.adam(lr=1e-2), plain_p)
    sched_ours = torch.optim.lr_scheduler.StepLR(ours, step_size=10, gamma=0.1)
    sched_theirs = torch.optim.lr_scheduler.StepLR(theirs, step_size=10, gamma=0.1)
    for i in range(35):
        step(ours, ours_p, loss, i)
        step(theirs, theirs_p, loss, i)
        step(plain, plain_p, loss, i)
        sched_ours.step()
        sched_theirs.step()
    assert ours.param_groups[0]["lr"] == pytest.approx(1e-5)
    for k in p0:
        assert_rel(ours_p[k], theirs_p[k], k)
    assert not torch.allclose(ours_p["w"], plain_p["w"], rtol=1e-6, atol=0)


def test_per_group_hyperparameters_are_honoured():
    p0, loss = problem()
    ours_p, theirs_p = leaves(p0), leaves(p0)

    def groups(p):
        return [{"params": [p["w"]], "lr": 3e-2, "betas": (0.8, 0.99)}, {"params": [p["b"]]}]

    ours = diyopt.to_torch(diyopt.optim.adam(lr=1e-3, weight_decay=0.1), groups(ours_p))
    theirs = torch.optim.Adam(groups(theirs_p), lr=1e-3, weight_decay=0.1)
    for i in range(60):
        if i == 30:  # change a group's hyperparameter mid-run, as a user or scheduler would
            for opt in (ours, theirs):
                opt.param_groups[1]["weight_decay"] = 0.0
        step(ours, ours_p, loss, i)
        step(theirs, theirs_p, loss, i)
    for k in p0:
        assert_rel(ours_p[k], theirs_p[k], k)
        assert_state_equal(ours.state[ours_p[k]], theirs.state[theirs_p[k]])


def test_params_without_grad_are_skipped_like_torch():
    p0, loss = problem()
    ours_p, theirs_p = leaves(p0), leaves(p0)
    ours = diyopt.to_torch(diyopt.optim.adam(lr=1e-2), ours_p)
    theirs = torch.optim.Adam(list(theirs_p.values()), lr=1e-2)
    for i in range(40):
        for opt, p in ((ours, ours_p), (theirs, theirs_p)):
            opt.zero_grad()
            loss(p, i).backward()
            if i % 3 == 0:
                p["b"].grad = None
            opt.step()
    for k in p0:
        assert_rel(ours_p[k], theirs_p[k], k)
        assert_state_equal(ours.state[ours_p[k]], theirs.state[theirs_p[k]])
    assert int(ours.state[ours_p["b"]]["step"]) == 26  # 40 steps, 14 of them without a grad for b
    fresh = {k: v.clone().requires_grad_() for k, v in p0.items()}
    never = diyopt.to_torch(diyopt.optim.adam(), fresh)
    fresh["w"].grad = torch.ones_like(fresh["w"])
    never.step()
    assert not never.state[fresh["b"]] and torch.equal(fresh["b"].detach(), p0["b"])


def test_hooks_fire_and_closure_loss_is_returned():
    p0, loss = problem()
    ps = leaves(p0)
    opt = diyopt.to_torch(diyopt.optim.adam(), ps)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))

    def closure():
        opt.zero_grad()
        value = loss(ps)
        value.backward()
        return value

    expected = loss(ps).detach()
    returned = opt.step(closure)
    opt.step(closure)
    assert calls == ["pre", "post", "pre", "post"]
    torch.testing.assert_close(returned.detach(), expected)
    assert isinstance(opt, torch.optim.Optimizer)


def test_users_elementwise_rule_equals_torch_sgd_with_momentum():
    @diyopt.elementwise
    def heavy_ball(grad, state, param, *, lr=1e-2, momentum=0.9):
        buf = momentum * state + grad
        return -lr * buf, buf

    @heavy_ball.init
    def _(param):
        return torch.zeros_like(param)

    p0, loss = problem()
    model = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        model.weight.copy_(p0["w"].T)
        model.bias.copy_(p0["b"])
    ours_p = dict(model.named_parameters())
    theirs_p = leaves({"weight": p0["w"].T.contiguous(), "bias": p0["b"]})
    ours = diyopt.to_torch(heavy_ball(lr=2e-2), model)
    theirs = torch.optim.SGD(list(theirs_p.values()), lr=2e-2, momentum=0.9)

    def module_loss(p, i=0):
        return loss({"w": p["weight"].T, "b": p["bias"]}, i)

    for i in range(STEPS):
        step(ours, ours_p, module_loss, i)
        step(theirs, theirs_p, module_loss, i)
    for k in theirs_p:
        assert_rel(ours_p[k], theirs_p[k], k)
        assert_rel(ours.state[ours_p[k]]["value"], theirs.state[theirs_p[k]]["momentum_buffer"], k)
    assert ours.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


@pytest.mark.slow
def test_compiled_engine_matches_eager_with_a_scheduler():
    p0, loss = problem()
    eager_p, compiled_p = leaves(p0), leaves(p0)
    eager = diyopt.to_torch(diyopt.optim.adam(lr=1e-2, amsgrad=True), eager_p)
    compiled = diyopt.to_torch(diyopt.optim.adam(lr=1e-2, amsgrad=True), compiled_p, compiled=True)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5) for o in (eager, compiled)]
    for i in range(30):
        step(eager, eager_p, loss, i)
        step(compiled, compiled_p, loss, i)
        for s in scheds:
            s.step()
    for k in p0:
        assert_rel(compiled_p[k], eager_p[k], k)
        assert_state_equal(compiled.state[compiled_p[k]], eager.state[eager_p[k]])


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((lambda p: p, None), TypeError, "diyopt Optimizer"),
        ((diyopt.optim.adam(), []), ValueError, "empty parameter list"),
        ((diyopt.optim.adam(), [{"lr": 1e-2}]), ValueError, "'params'"),
    ],
)
def test_bad_arguments(args, error, match):
    opt, params = args
    if params is None:
        params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(error, match=match):
        diyopt.to_torch(opt, params)


def test_any_optimizer_works_a_bare_chain_included():
    """A chain built by hand runs as built; its settings are its members' (here scale_by_adam's b1, b2, eps,
    amsgrad), so a param group may override them -- and a setting no member has is refused."""
    p0, loss = problem()
    ours_p, theirs_p = leaves(p0), leaves(p0)
    bare = diyopt.chain(diyopt.transforms.scale_by_adam(b1=0.8), diyopt.transforms.scale_by_lr(1e-2))
    ours = diyopt.to_torch(bare, ours_p)
    theirs = torch.optim.Adam(list(theirs_p.values()), lr=1e-2, betas=(0.8, 0.999))
    for i in range(STEPS):
        step(ours, ours_p, loss, i)
        step(theirs, theirs_p, loss, i)
    for k in p0:
        assert_rel(ours_p[k], theirs_p[k], k)
        assert_state_equal(ours.state[ours_p[k]], theirs.state[theirs_p[k]])
    assert set(bare.hyperparams) == {"b1", "b2", "eps", "amsgrad"}
    with pytest.raises(TypeError, match=r"param group sets \['lr'\], but this optimizer has no hyperparameter 'lr'"):
        diyopt.to_torch(bare, [{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.1}])
    # a group's b1 = torch's betas[0] for that group (the reference: torch.optim.Adam with two groups)
    ours_p, theirs_p = leaves(p0), leaves(p0)
    first, *rest = list(p0)
    ours = diyopt.to_torch(bare, [{"params": [ours_p[first]], "b1": 0.5}, {"params": [ours_p[k] for k in rest]}])
    theirs = torch.optim.Adam(
        [{"params": [theirs_p[first]], "betas": (0.5, 0.999)}, {"params": [theirs_p[k] for k in rest]}],
        lr=1e-2,
        betas=(0.8, 0.999),
    )
    for i in range(STEPS):
        step(ours, ours_p, loss, i)
        step(theirs, theirs_p, loss, i)
    for k in p0:
        assert_rel(ours_p[k], theirs_p[k], k)


def test_param_groups_given_as_generators_keep_every_param():
    # model.parameters() is a generator: read once, each group keeps all its params (and names in order)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    opt = diyopt.to_torch(diyopt.optim.adam(), [{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.1}])
    assert [g["param_names"] for g in opt.param_groups] == [["0", "1"], ["2", "3"]]
    opt.add_param_group({"params": torch.nn.Linear(1, 1).parameters()})
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2, 2]
