"""Every named optimizer, in its functional form (init / update / apply_updates), runs in lockstep with the
matching torch.optim class from the same start, float64, over every setting of the one table
(tests/optimizer_table.py): parameters and state agree to 1e-12 relative after every one of 100 steps.

diyopt's state fields carry torch's state names (exp_avg, square_avg, momentum_buffer, ...), so the state
is compared field by field under the same name. Lion, which torch lacks, is compared with the paper's
Algorithm 2 written out below, and with optax.lion where JAX is installed.
"""
from __future__ import annotations

import pytest
import torch
from optimizer_table import OPTIMIZERS_UNDER_TEST, case_id, cases, lockstep_problem

import diyopt

STEPS = 100
RTOL = 1e-12


pytestmark = pytest.mark.usefixtures("float64_default")


def grads_of(loss, params, step=0):
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    return dict(zip(leaves, torch.autograd.grad(loss(leaves, step), list(leaves.values()))))


def named_state(state, names) -> dict[str, dict[str, torch.Tensor]]:
    """``{param_name: {field: tensor}}`` gathered from every per-parameter NamedTuple in a chain's state.

    A field seen twice (``step`` in both an adaptive scaling and a trace) keeps its first value.
    """
    out: dict[str, dict] = {n: {} for n in names}

    def walk(node):
        if isinstance(node, dict) and set(node) == set(names):
            for n, sub in node.items():
                if hasattr(sub, "_fields"):
                    for field in sub._fields:
                        out[n].setdefault(field, getattr(sub, field))
        elif isinstance(node, (tuple, list)):
            for sub in node:
                walk(sub)
        elif isinstance(node, dict):
            for sub in node.values():
                walk(sub)

    walk(state)
    return out


def assert_close(actual, expected, what):
    """``|a - b| <= 1e-12 (|b| + max|b|)`` elementwise: relative, with the tensor's scale as the floor
    for elements that pass through zero. (torch.testing.assert_close is too slow per step.)"""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    err = (actual - expected).abs()
    bound = RTOL * (expected.abs() + expected.abs().max())
    if not bool((err <= bound).all()):
        worst = (err / (expected.abs() + expected.abs().max())).max()
        raise AssertionError(f"{what}: relative error {float(worst):.3g} > {RTOL}")


TORCH_CASES = [c for c in cases() if c[1] is not None]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[case_id(c) for c in TORCH_CASES])
def test_matches_torch_optim_in_lockstep(case):
    name, torch_cls, kwargs = case
    params0, loss = lockstep_problem()
    opt = getattr(diyopt.optim, name)(**kwargs)
    params = {k: v.clone() for k, v in params0.items()}
    state = opt.init(params)

    leaves = [v.clone().requires_grad_() for v in params0.values()]
    names = list(params0)
    ref = torch_cls(leaves, **kwargs)

    for step in range(STEPS):
        updates, state = opt.update(grads_of(loss, params, step), state, params)
        params = diyopt.apply_updates(params, updates)

        ref.zero_grad()
        loss(dict(zip(names, leaves)), step).backward()
        ref.step()

        ours = named_state(state, names)
        for n, leaf in zip(names, leaves):
            assert_close(params[n], leaf.detach(), f"step {step + 1}, param {n!r}")
            for field, value in ref.state[leaf].items():
                if value is None:  # SGD without momentum keeps momentum_buffer=None
                    continue
                assert field in ours[n], f"diyopt state lacks torch's {field!r} (has {sorted(ours[n])})"
                assert_close(ours[n][field], value, f"step {step + 1}, state {field!r} of {n!r}")
    assert torch.isfinite(params["w"]).all()


def test_table_covers_every_flag():
    # Every argument of every factory is set to a non-default value by at least one row.
    import inspect

    for name, _, rows in OPTIMIZERS_UNDER_TEST:
        assert len(rows) >= 5, name
        params = inspect.signature(getattr(diyopt.optim, name)).parameters
        if isinstance(getattr(diyopt.optim, name), diyopt.elementwise):
            params = getattr(diyopt.optim, name).defaults
        for arg, p in params.items():
            if arg in diyopt.optim.IMPLEMENTATION_FLAGS:  # torch's foreach/fused/...: no numbers change
                continue
            default = p.default if hasattr(p, "default") else p
            assert any(arg in kw and kw[arg] != default for kw in rows), f"{name}: no row sets {arg!r}"


# ---------------------------------------------------------------- Lion


def lion_paper(loss, params0, steps, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
    """Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2, written out."""
    beta1, beta2 = betas
    theta = {k: v.clone() for k, v in params0.items()}
    m = {k: torch.zeros_like(v) for k, v in params0.items()}
    trajectory = []
    for t in range(steps):
        g = grads_of(loss, theta, t)
        for k in theta:
            gk = -g[k] if maximize else g[k]
            update = torch.sign(beta1 * m[k] + (1 - beta1) * gk)          # interpolate, take the sign
            theta[k] = theta[k] - lr * (update + weight_decay * theta[k])  # decoupled weight decay
            m[k] = beta2 * m[k] + (1 - beta2) * gk                         # momentum, with beta2
        trajectory.append(({k: v.clone() for k, v in theta.items()}, {k: v.clone() for k, v in m.items()}))
    return trajectory


LION_SETTINGS = [kw for name, _, rows in OPTIMIZERS_UNDER_TEST if name == "lion" for kw in rows]


@pytest.mark.parametrize("kwargs", LION_SETTINGS, ids=[case_id(("lion", None, kw)) for kw in LION_SETTINGS])
def test_lion_matches_the_paper(kwargs):
    params0, loss = lockstep_problem(seed=1)
    expected = lion_paper(loss, params0, STEPS, **kwargs)
    opt = diyopt.optim.lion(**kwargs)
    params = {k: v.clone() for k, v in params0.items()}
    state = opt.init(params)
    for step, (theta, m) in enumerate(expected):
        updates, state = opt.update(grads_of(loss, params, step), state, params)
        params = diyopt.apply_updates(params, updates)
        ours = named_state(state, list(params))
        for k in params:
            assert_close(params[k], theta[k], f"step {step + 1}, param {k!r}")
            assert_close(ours[k]["exp_avg"], m[k], f"step {step + 1}, momentum of {k!r}")


def test_lion_matches_optax():
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    params0, loss = lockstep_problem(seed=2)
    kwargs = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1}
    tx = optax.lion(learning_rate=kwargs["lr"], b1=kwargs["betas"][0], b2=kwargs["betas"][1],
                    weight_decay=kwargs["weight_decay"])
    jparams = {k: jnp.asarray(v.numpy()) for k, v in params0.items()}
    jstate = tx.init(jparams)
    opt = diyopt.optim.lion(**kwargs)
    params = {k: v.clone() for k, v in params0.items()}
    state = opt.init(params)
    for step in range(STEPS):
        grads = grads_of(loss, params, step)
        updates, state = opt.update(grads, state, params)
        params = diyopt.apply_updates(params, updates)
        jgrads = {k: jnp.asarray(grads_of(loss, {n: torch.from_numpy(np.array(v)) for n, v in jparams.items()}, step)[k]
                                 .numpy()) for k in jparams}
        jupdates, jstate = tx.update(jgrads, jstate, jparams)
        jparams = optax.apply_updates(jparams, jupdates)
    for k in params:
        assert_close(params[k], torch.from_numpy(np.array(jparams[k])), f"param {k!r}")
