"""The contract: elementwise rules, chain, apply_updates, configurable factories, the public surface."""

import pytest
import torch

import diyopt
from diyopt import transforms as T


def test_every_public_name_imports():
    for name in diyopt.__all__:
        assert getattr(diyopt, name) is not None, name


def test_elementwise_user_rule_with_init_is_momentum():
    @diyopt.elementwise
    def heavy_ball(grad, state, param, *, lr=0.1, momentum=0.9):
        buf = momentum * state + grad
        return -lr * buf, buf

    @heavy_ball.init
    def _(param):
        return torch.zeros_like(param)

    opt = heavy_ball(lr=0.05)
    assert opt.hyperparams == {"lr": 0.05, "momentum": 0.9}
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    ref = torch.optim.SGD([w := params["w"].clone().requires_grad_()], lr=0.05, momentum=0.9)
    state = opt.init(params)
    for _ in range(30):
        grads = {"w": 2 * params["w"]}
        updates, state = opt.update(grads, state, params)
        params = diyopt.apply_updates(params, updates)
        ref.zero_grad()
        (w**2).sum().backward()
        ref.step()
    torch.testing.assert_close(params["w"], w.detach(), rtol=1e-13, atol=1e-15)


def test_elementwise_rejects_unknown_hyperparameters_and_missing_defaults():
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        diyopt.optim.gradient_descent(learning_rate=0.1)
    with pytest.raises(TypeError, match="need defaults"):
        diyopt.elementwise(lambda grad, state, param, *, lr: (grad, state))


def test_update_is_pure():
    params = {"w": torch.randn(4, dtype=torch.float64)}
    grads = {"w": torch.randn(4, dtype=torch.float64)}
    opt = diyopt.optim.adam(lr=0.1)
    state = opt.init(params)
    before = (params["w"].clone(), grads["w"].clone(), [t.clone() for t in diyopt.core.tree_leaves(state)])
    u1, s1 = opt.update(grads, state, params)
    u2, s2 = opt.update(grads, state, params)
    torch.testing.assert_close(u1, u2, rtol=0, atol=0)
    assert torch.equal(params["w"], before[0]) and torch.equal(grads["w"], before[1])
    for a, b in zip(diyopt.core.tree_leaves(state), before[2]):
        assert torch.equal(a, b)


def test_chain_order_and_replace_hyperparams():
    g = {"w": torch.tensor([2.0])}
    opt = diyopt.chain(T.scale(3.0), T.scale_by_lr(0.5))
    u, _ = opt.update(g, opt.init(g), g)
    assert u["w"].item() == -3.0
    adam = diyopt.optim.adam(lr=1e-3)
    faster = adam.replace_hyperparams(lr=1e-1)
    assert faster.hyperparams["lr"] == 1e-1 and faster.hyperparams["betas"] == (0.9, 0.999)
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        adam.replace_hyperparams(learning_rate=1.0)


def test_schedule_as_lr():
    g = {"w": torch.ones(1, dtype=torch.float64)}
    opt = diyopt.chain(T.scale_by_lr(lambda count: 0.1 * (count + 1)))
    state = opt.init(g)
    seen = []
    for _ in range(3):
        u, state = opt.update(g, state, g)
        seen.append(u["w"].item())
    assert seen == pytest.approx([-0.1, -0.2, -0.3])


def test_apply_updates_keeps_dtype():
    p = {"w": torch.ones(2, dtype=torch.float32)}
    out = diyopt.apply_updates(p, {"w": torch.ones(2, dtype=torch.float64)})
    assert out["w"].dtype == torch.float32 and out["w"].tolist() == [2.0, 2.0]


def test_whole_tensor_rule_sees_each_tensor_as_it_is():
    # Normalized gradient descent per tensor (LARS-like): the norm is over each named tensor.
    @diyopt.elementwise(whole_tensor=True)
    def normalized(grad, state, param, *, lr=0.1):
        return -lr * grad / grad.norm(), state

    target = {"w": torch.tensor([3.0, -1.0], dtype=torch.float64), "v": torch.tensor([[0.5, 2.0]], dtype=torch.float64)}
    loss = lambda p: sum(((p[k] - target[k]) ** 2).sum() for k in target)
    start = {"w": torch.zeros(2, dtype=torch.float64), "v": torch.zeros(1, 2, dtype=torch.float64)}
    r = diyopt.fit(loss, start, normalized(lr=0.1), 5)
    ref = {k: v.clone() for k, v in start.items()}
    for _ in range(5):  # the rule by hand, one tensor at a time
        ref = {k: v - 0.1 * (2 * (v - target[k])) / (2 * (v - target[k])).norm() for k, v in ref.items()}
    for k in ref:
        torch.testing.assert_close(r.params[k], ref[k], rtol=1e-14, atol=1e-15)
    assert not normalized().flattenable and diyopt.optim.gradient_descent().flattenable


# ---------------------------------------------------------------- a rule with state but no declared init


def _stateful_without_init(kind):
    if kind == "arithmetic":

        def momentum_no_init(grad, state, param, *, lr=0.1, beta=0.9):
            state = beta * state + grad
            return -lr * state, state
    else:

        def momentum_no_init(grad, state, param, *, lr=0.1, beta=0.9):
            m = beta * state["m"] + grad
            return -lr * m, {"m": m}

    return diyopt.elementwise(momentum_no_init)


@pytest.mark.parametrize("engine", ["eager", "compiled"])
@pytest.mark.parametrize("kind", ["arithmetic", "indexing"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_rule_using_undeclared_state_says_to_declare_init(kind, engine, dtype):
    import inspect

    rule = _stateful_without_init(kind)
    line = inspect.getsourcelines(rule.rule)[1]
    where = f"{__file__}:{line}"
    p0 = {"w": torch.ones(3, dtype=dtype)}
    with pytest.raises(TypeError) as info:
        diyopt.fit(lambda p: p["w"].square().sum(), p0, rule(), 5, engine=engine)
    message = str(info.value)
    assert "'momentum_no_init'" in message and where in message and "@momentum_no_init.init" in message


def test_a_stateless_rule_without_init_keeps_its_own_errors():
    @diyopt.elementwise
    def broken(grad, state, param, *, lr=0.1):
        step = -lr * grad.no_such_method()  # a bug of its own, not about the state
        return step, state

    with pytest.raises(AttributeError, match="no_such_method") as info:
        diyopt.fit(lambda p: p["w"].square().sum(), {"w": torch.ones(2)}, broken(), 3)
    assert ".init" not in str(info.value)


def test_a_users_chain_keeps_its_members_settings_and_sweeps_like_a_named_optimizer():
    """chain(clip, rule(lr=...)) exposes lr; rebuilding it changes only that member, and a sweep over lr
    equals one fit per lr (the reference: the same chain built by hand with each lr)."""
    from diyopt.transforms import clip_by_global_norm

    @diyopt.elementwise
    def signum(grad, state, param, *, lr=0.1):
        return -lr * torch.sign(grad), state

    mine = diyopt.chain(clip_by_global_norm(1.0), signum(lr=0.1))
    assert mine.hyperparams == {"lr": 0.1}
    assert mine.replace_hyperparams(lr=0.5).hyperparams == {"lr": 0.5}
    shared = diyopt.chain(signum(lr=0.1), signum(lr=0.2))
    assert shared.hyperparams is None and shared.build is None  # ambiguous name: left out

    x = torch.linspace(-1, 1, 20, dtype=torch.float64)
    y = 3 * x - 1
    loss = lambda p: ((p["a"] * x + p["b"] - y) ** 2).mean()
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    lrs = [0.01, 0.05]
    swept = diyopt.sweep(loss, p0, mine, 50, grid={"lr": lrs})
    for k, lr in enumerate(lrs):
        alone = diyopt.fit(loss, p0, diyopt.chain(clip_by_global_norm(1.0), signum(lr=lr)), 50)
        for name in p0:
            torch.testing.assert_close(swept.params[name][k], alone.params[name], rtol=0, atol=1e-12)
