"""Every named optimizer, in its functional form (init / update / apply_updates), runs in lockstep with the
matching torch.optim class from the same start, float64, over every setting of its record in the optimizer
database (tests/optim_db.py): parameters and state agree to 1e-12 relative after every one of 100 steps.

diyopt's state fields carry torch's state names (exp_avg, square_avg, momentum_buffer, ...), so the state
is compared field by field under the same name. An optimizer torch lacks (Lion) is compared with its
record's ``reference``, the paper's algorithm written out in tests/optim_references.py, and Lion with
optax.lion where JAX is installed.
"""

from __future__ import annotations

import pytest
import torch
from optim_db import UPDATE, cases, lockstep_problem
from optim_references import grads_of

import diyopt

STEPS = 100
RTOL = 1e-12


pytestmark = pytest.mark.usefixtures("float64_default")


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


@pytest.mark.parametrize("info,kwargs", cases(UPDATE, where=lambda info: info.torch_cls is not None))
def test_matches_torch_optim_in_lockstep(info, kwargs):
    params0, loss = lockstep_problem()
    opt = getattr(diyopt.optim, info.name)(**kwargs)
    params = {k: v.clone() for k, v in params0.items()}
    state = opt.init(params)

    leaves = [v.clone().requires_grad_() for v in params0.values()]
    names = list(params0)
    ref = info.torch_cls(leaves, **kwargs)

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


# ---------------------------------------------------------------- optimizers torch lacks


@pytest.mark.parametrize("info,kwargs", cases(UPDATE, where=lambda info: info.torch_cls is None))
def test_matches_its_reference_in_lockstep(info, kwargs):
    """Optimizers torch lacks, against their record's ``reference`` (the paper's loop), 1e-12 per step."""
    params0, loss = lockstep_problem(seed=1)
    expected = info.reference(loss, params0, STEPS, **kwargs)
    opt = getattr(diyopt.optim, info.name)(**kwargs)
    params = {k: v.clone() for k, v in params0.items()}
    state = opt.init(params)
    for step, (theta, fields) in enumerate(expected):
        updates, state = opt.update(grads_of(loss, params, step), state, params)
        params = diyopt.apply_updates(params, updates)
        ours = named_state(state, list(params))
        for k in params:
            assert_close(params[k], theta[k], f"step {step + 1}, param {k!r}")
            for field, value in fields[k].items():
                assert_close(ours[k][field], value, f"step {step + 1}, state {field!r} of {k!r}")


def test_lion_matches_optax():
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    params0, loss = lockstep_problem(seed=2)
    kwargs = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1}
    tx = optax.lion(
        learning_rate=kwargs["lr"], b1=kwargs["betas"][0], b2=kwargs["betas"][1], weight_decay=kwargs["weight_decay"]
    )
    jparams = {k: jnp.asarray(v.numpy()) for k, v in params0.items()}
    jstate = tx.init(jparams)
    opt = diyopt.optim.lion(**kwargs)
    params = {k: v.clone() for k, v in params0.items()}
    state = opt.init(params)
    for step in range(STEPS):
        grads = grads_of(loss, params, step)
        updates, state = opt.update(grads, state, params)
        params = diyopt.apply_updates(params, updates)
        jgrads = {
            k: jnp.asarray(
                grads_of(loss, {n: torch.from_numpy(np.array(v)) for n, v in jparams.items()}, step)[k].numpy()
            )
            for k in jparams
        }
        jupdates, jstate = tx.update(jgrads, jstate, jparams)
        jparams = optax.apply_updates(jparams, jupdates)
    for k in params:
        assert_close(params[k], torch.from_numpy(np.array(jparams[k])), f"param {k!r}")
