"""Transforms against independent references: clip_grad_norm_ / clip_grad_value_, torch param groups,
runs that skip or average gradients by hand, and equivalences between compositions."""

from __future__ import annotations

import pytest
import torch
from optim_db import UPDATE, records

import diyopt
from diyopt import optim, schedules
from diyopt import transforms as T

torch_f64 = torch.float64


pytestmark = pytest.mark.usefixtures("float64_default")


def random_tree(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": scale * torch.randn(4, 3, generator=g),
        "b": scale * torch.randn(3, generator=g),
        "c": scale * torch.randn(2, 2, 2, generator=g),
    }


def run(opt, grads_seq, params):
    """Apply ``opt`` to a fixed sequence of gradients; return the params after each step and the state."""
    state = opt.init(params)
    out = []
    for grads in grads_seq:
        updates, state = opt.update(grads, state, params)
        params = diyopt.apply_updates(params, updates)
        out.append(params)
    return out, state


# ---------------------------------------------------------------- clipping


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 3.0, 1e3])
def test_clip_by_global_norm_equals_clip_grad_norm(max_norm):
    grads = random_tree(1, scale=0.7)
    leaves = [torch.zeros_like(v, requires_grad=True) for v in grads.values()]
    for leaf, g in zip(leaves, grads.values()):
        leaf.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(leaves, max_norm)
    ours, _ = T.clip_by_global_norm(max_norm).update(grads, (), None)
    for leaf, (k, u) in zip(leaves, ours.items()):
        torch.testing.assert_close(u, leaf.grad, rtol=1e-14, atol=0, msg=k)
    # On one flat buffer (the fit loop's layout) the same numbers, to rounding of the norm.
    flat, _ = T.clip_by_global_norm(max_norm).update(
        {"flat": torch.cat([g.reshape(-1) for g in grads.values()])}, (), None
    )
    torch.testing.assert_close(flat["flat"], torch.cat([leaf.grad.reshape(-1) for leaf in leaves]), rtol=1e-13, atol=0)


def test_clip_equals_clip_grad_value():
    grads = random_tree(2)
    leaves = [torch.zeros_like(v, requires_grad=True) for v in grads.values()]
    for leaf, g in zip(leaves, grads.values()):
        leaf.grad = g.clone()
    torch.nn.utils.clip_grad_value_(leaves, 0.5)
    for max_delta in (0.5, torch.tensor(0.5)):
        ours, _ = T.clip(max_delta=max_delta).update(grads, T.clip().init(grads), None)
        for leaf, u in zip(leaves, ours.values()):
            assert torch.equal(u, leaf.grad)


# ---------------------------------------------------------------- masked / freeze, against param groups


def test_masked_weight_decay_equals_torch_param_groups():
    params = random_tree(3)
    grads_seq = [random_tree(10 + i) for i in range(30)]
    # Weight decay on "w" only: torch's way is two param groups.
    opt = diyopt.chain(T.masked(T.add_decayed_weights(0.1), {"w"}), T.scale_by_adam(), T.scale_by_lr(1e-2))
    ours, _ = run(opt, grads_seq, params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    ref = torch.optim.Adam(
        [{"params": [leaves["w"]], "weight_decay": 0.1}, {"params": [leaves["b"], leaves["c"]]}], lr=1e-2
    )
    for grads in grads_seq:
        for k, leaf in leaves.items():
            leaf.grad = grads[k].clone()
        ref.step()
    for k, leaf in leaves.items():
        torch.testing.assert_close(ours[-1][k], leaf.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mask", [{"b"}, {"b": True, "w": False}, lambda name: name == "b"])
def test_freeze_keeps_named_params_and_leaves_the_rest_to_the_optimizer(mask):
    params = random_tree(4)
    grads_seq = [random_tree(20 + i) for i in range(10)]
    ours, _ = run(diyopt.chain(T.freeze(mask), optim.sgd(lr=0.1, momentum=0.9)), grads_seq, params)
    assert torch.equal(ours[-1]["b"], params["b"])
    rest = {k: params[k] for k in ("w", "c")}
    expected, _ = run(optim.sgd(lr=0.1, momentum=0.9), [{k: g[k] for k in rest} for g in grads_seq], rest)
    for k in rest:
        torch.testing.assert_close(ours[-1][k], expected[-1][k], rtol=0, atol=0)
    assert not T.freeze(mask).flattenable


def test_mask_naming_an_unknown_parameter_is_an_error():
    with pytest.raises(ValueError, match=r"mask names unknown parameter\(s\) \['bias'\]"):
        T.freeze({"bias"}).init(random_tree())


# ---------------------------------------------------------------- apply_if_finite, accumulate


def test_apply_if_finite_skips_bad_steps_and_counts_them():
    params = random_tree(5)
    grads_seq = [random_tree(30 + i) for i in range(12)]
    bad = {3, 4, 9}
    for i in bad:
        grads_seq[i] = {k: v.clone() for k, v in grads_seq[i].items()}
        grads_seq[i]["w"][0, 0] = float("nan") if i != 4 else float("inf")
    ours, state = run(T.apply_if_finite(optim.adam(lr=1e-2)), grads_seq, params)
    # Reference: Adam on the finite gradients only.
    expected, _ = run(optim.adam(lr=1e-2), [g for i, g in enumerate(grads_seq) if i not in bad], params)
    for k in params:
        torch.testing.assert_close(ours[-1][k], expected[-1][k], rtol=0, atol=0)
        assert torch.equal(ours[3][k], ours[2][k]) and torch.equal(ours[4][k], ours[2][k])
    assert int(state.total_notfinite) == 3
    assert int(state.notfinite_count) == 0 and bool(state.last_finite)


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
    params = {"x": torch.ones(2)}
    nan = {"x": torch.tensor([float("nan"), 1.0])}
    out, state = run(T.apply_if_finite(optim.sgd(lr=0.1), max_consecutive_errors=2), [nan] * 3, params)
    assert torch.equal(out[1]["x"], params["x"])  # skipped twice ...
    assert torch.isnan(out[2]["x"][0])  # ... then applied
    assert int(state.notfinite_count) == 3 and int(state.total_notfinite) == 3


@pytest.mark.parametrize("every_k", [1, 3, 4])
def test_accumulate_equals_one_step_on_the_mean_gradient(every_k):
    params = random_tree(6)
    micro = [random_tree(40 + i) for i in range(every_k * 5)]
    ours, state = run(T.accumulate(optim.sgd(lr=0.1, momentum=0.9, nesterov=True), every_k), micro, params)
    means = [
        {k: torch.stack([g[k] for g in micro[i : i + every_k]]).mean(0) for k in params}
        for i in range(0, len(micro), every_k)
    ]
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    ref = torch.optim.SGD(list(leaves.values()), lr=0.1, momentum=0.9, nesterov=True)
    for j, mean in enumerate(means):
        for k, leaf in leaves.items():
            leaf.grad = mean[k].clone()
        ref.step()
        for k, leaf in leaves.items():
            torch.testing.assert_close(ours[(j + 1) * every_k - 1][k], leaf.detach(), rtol=1e-13, atol=1e-15)
            if every_k > 1:  # no movement between applied steps
                assert torch.equal(ours[j * every_k][k], ours[j * every_k - 1][k] if j else params[k])
    assert int(state.gradient_step) == 5 and int(state.mini_step) == 0


def test_accumulate_rejects_a_bad_every_k():
    with pytest.raises(ValueError, match="every_k must be a positive integer, got 0"):
        T.accumulate(optim.sgd(), 0)


# ---------------------------------------------------------------- equivalences between compositions


def test_adamw_is_adam_with_decoupled_weight_decay():
    params, grads_seq = random_tree(7), [random_tree(50 + i) for i in range(20)]
    a, _ = run(optim.adamw(lr=1e-2, weight_decay=0.3, amsgrad=True), grads_seq, params)
    b, _ = run(optim.adam(lr=1e-2, weight_decay=0.3, amsgrad=True, decoupled_weight_decay=True), grads_seq, params)
    for k in params:
        assert torch.equal(a[-1][k], b[-1][k])


def test_sgd_without_momentum_is_the_seeds_gradient_descent():
    params, grads_seq = random_tree(8), [random_tree(60 + i) for i in range(20)]
    a, _ = run(optim.sgd(lr=0.05), grads_seq, params)
    b, _ = run(optim.gradient_descent(lr=0.05), grads_seq, params)
    for k in params:
        assert torch.equal(a[-1][k], b[-1][k])


def test_lion_without_momentum_is_sign_descent():
    params, grads_seq = random_tree(9), [random_tree(70 + i) for i in range(20)]
    a, _ = run(optim.lion(lr=1e-2, betas=(0.0, 0.0)), grads_seq, params)
    x = params
    for g in grads_seq:
        x = {k: x[k] - 1e-2 * torch.sign(g[k]) for k in x}
    for k in params:
        assert torch.equal(a[-1][k], x[k])


def test_rmsprop_is_adam_without_momentum_and_bias_correction():
    # With b1 = 0 and eps = 0, Adam's direction is g sqrt(1 - b2^t) / sqrt(v_t) and RMSprop's (alpha = b2)
    # is g / sqrt(v_t), over the same second-moment EMA v_t.
    params, grads_seq = random_tree(12), [random_tree(120 + i) for i in range(10)]
    adam, rms = T.scale_by_adam(b1=0.0, b2=0.95, eps=0.0), T.scale_by_rms(alpha=0.95, eps=0.0)
    sa, sr = adam.init(params), rms.init(params)
    for t, g in enumerate(grads_seq, start=1):
        a, sa = adam.update(g, sa, params)
        r, sr = rms.update(g, sr, params)
        for k in g:
            torch.testing.assert_close(a[k], r[k] * (1 - 0.95**t) ** 0.5, rtol=1e-14, atol=0)
            torch.testing.assert_close(sa[k].exp_avg_sq, sr[k].square_avg, rtol=1e-15, atol=0)


def test_adagrad_lr_decay_is_an_inverse_time_schedule():
    params, grads_seq = random_tree(13), [random_tree(80 + i) for i in range(20)]
    a, _ = run(optim.adagrad(lr=0.1, lr_decay=0.05), grads_seq, params)
    b, _ = run(optim.adagrad(lr=lambda t: 0.1 / (1 + t * 0.05)), grads_seq, params)
    for k in params:
        torch.testing.assert_close(a[-1][k], b[-1][k], rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "sched,torch_sched",
    [
        (
            lambda: schedules.step(1e-2, step_size=7, gamma=0.5),
            lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
        ),
        (lambda: schedules.cosine_decay(1e-2, 30), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30)),
    ],
)
def test_a_schedule_as_lr_equals_torch_with_its_lr_scheduler(sched, torch_sched):
    params, grads_seq = random_tree(14), [random_tree(90 + i) for i in range(30)]
    ours, _ = run(optim.adam(lr=sched(), weight_decay=0.1, decoupled_weight_decay=True), grads_seq, params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    ref = torch.optim.AdamW(list(leaves.values()), lr=1e-2, weight_decay=0.1)
    scheduler = torch_sched(ref)
    for i, grads in enumerate(grads_seq):
        for k, leaf in leaves.items():
            leaf.grad = grads[k].clone()
        ref.step()
        scheduler.step()
        for k, leaf in leaves.items():
            torch.testing.assert_close(ours[i][k], leaf.detach(), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- tensor hyperparameters


def _tensorize(kwargs):
    def conv(v):
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            return torch.tensor(float(v))
        if isinstance(v, tuple):
            return tuple(conv(x) for x in v)
        return v

    return {k: conv(v) for k, v in kwargs.items()}


TABLE = [(info.name, kw) for info in records(UPDATE) for kw in info.settings]


@pytest.mark.parametrize("name,kwargs", TABLE, ids=[f"{n}-{kw}" for n, kw in TABLE])
def test_tensor_hyperparameters_give_the_same_numbers(name, kwargs):
    # The compiled and batched engines pass hyperparameters as tensors; the rules must not branch on them.
    params, grads_seq = random_tree(15), [random_tree(100 + i) for i in range(15)]
    factory = getattr(optim, name)
    a, _ = run(factory(**kwargs), grads_seq, params)
    b, _ = run(factory(**_tensorize(kwargs)), grads_seq, params)
    for k in params:
        torch.testing.assert_close(b[-1][k], a[-1][k], rtol=1e-13, atol=1e-15)


def test_vmap_over_learning_rates_equals_separate_runs():
    params, grads = random_tree(16), random_tree(17)
    lrs = torch.tensor([1e-3, 1e-2, 1e-1])

    def one(lr):
        opt = optim.adam(lr=lr, amsgrad=True)
        state = opt.init(params)
        u, state = opt.update(grads, state, params)
        u, state = opt.update(grads, state, diyopt.apply_updates(params, u))
        return u["w"]

    batched = torch.func.vmap(one)(lrs)
    for i, lr in enumerate(lrs.tolist()):
        torch.testing.assert_close(batched[i], one(lr), rtol=1e-14, atol=0)


# ---------------------------------------------------------------- dtype and state structure


CASES32 = [(info.name, kw) for info in records(UPDATE) for kw in info.settings[:2]]


@pytest.mark.parametrize("name,kwargs", CASES32, ids=[f"{n}-{kw}" for n, kw in CASES32])
def test_keeps_float32_and_a_stable_state_structure(name, kwargs):
    from torch.utils import _pytree as pytree

    params = {k: v.float() for k, v in random_tree(18).items()}
    opt = getattr(optim, name)(**kwargs)
    state = opt.init(params)
    spec = pytree.tree_structure(state)
    for i in range(3):
        grads = {k: v.float() for k, v in random_tree(130 + i).items()}
        updates, state = opt.update(grads, state, params)
        params = diyopt.apply_updates(params, updates)
        assert pytree.tree_structure(state) == spec
    assert all(u.dtype == torch.float32 for u in updates.values())
    for leaf in pytree.tree_leaves(state):
        assert isinstance(leaf, torch.Tensor) and leaf.dtype == torch.float32, (name, leaf.dtype)
