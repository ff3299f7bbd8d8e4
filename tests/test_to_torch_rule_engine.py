"""``to_torch``'s engine for a user's ``elementwise`` rule: tensor by tensor, each tensor's state and param
written before the next is computed. Checked against the pure ``update`` (the reference) and torch.optim, in
float64 and float32; the guard before and during the step; a rule whose state changes shape."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from to_torch_helpers import assert_rel, start_params, step_grads

import diyopt
from diyopt.engines import _kernels, _to_torch
from diyopt.errors import DivergedError

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def my_adam():
    path = Path(__file__).resolve().parents[1] / "examples" / "my_adam.py"
    spec = importlib.util.spec_from_file_location("my_adam_example", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["my_adam_example"] = mod
    spec.loader.exec_module(mod)
    return mod.my_adam


@pytest.fixture(params=[None, 24], ids=["whole", "pieces24B"])
def chunk(request, monkeypatch):
    """``_kernels.RULE_CHUNK_BYTES``: the default (these small tensors run whole) and 24 bytes, which cuts
    every tensor of :func:`start_params` into pieces of 3 float64 or 6 float32 elements."""
    if request.param is not None:
        monkeypatch.setattr(_kernels, "RULE_CHUNK_BYTES", request.param)
    return request.param


@pytest.fixture
def rule_steps(monkeypatch):
    """Count the steps the tensor-by-tensor engine took (it runs unchanged)."""
    calls = []
    original = _to_torch.TorchOptimizer._rule_step

    def counted(self, *a):
        out = original(self, *a)
        calls.append(out)
        return out

    monkeypatch.setattr(_to_torch.TorchOptimizer, "_rule_step", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_users_adam_equals_its_pure_update_and_torch(my_adam, dtype, rule_steps, chunk):
    rule = my_adam(lr=1e-2)
    ours = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    theirs = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    opt = diyopt.to_torch(rule, ours)
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=True)
    pure = dict(enumerate(p.clone() for p in start_params(dtype)))
    state = rule.init(pure)
    for step in range(6):
        gs = step_grads(step, dtype)
        for p, q, g in zip(ours, theirs, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        updates, state = rule.update(dict(enumerate(gs)), state, pure)
        pure = diyopt.apply_updates(pure, updates)
        for k, (p, q) in enumerate(zip(ours, theirs)):
            # the same ops on the same tensors: equal to the bit
            assert torch.equal(p.detach(), pure[k]), f"step {step} param {k} vs pure"
            assert torch.equal(opt.state[p]["m"], state[k].m) and torch.equal(opt.state[p]["v"], state[k].v)
            assert_rel(p.detach(), q.detach(), TOL[dtype], f"step {step} param {k} vs torch")
    assert rule_steps == [True] * 6


def test_state_dict_moves_between_this_engine_and_the_pure_one(my_adam, rule_steps, chunk):
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    opt = diyopt.to_torch(my_adam(lr=1e-2), ps)
    for step in range(2):
        for p, g in zip(ps, step_grads(step, torch.float64)):
            p.grad = g
        opt.step()
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    pure = diyopt.to_torch(my_adam(lr=1e-2), qs)
    pure.load_state_dict(opt.state_dict())
    pure._rule_step = lambda *a: False  # this instance: the whole-group pure path
    for p, q, g in zip(ps, qs, step_grads(5, torch.float64)):
        p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    pure.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())
        assert sorted(opt.state[p]) == sorted(pure.state[q]) == ["m", "t", "v"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_nonfinite_gradient_raises_before_anything_is_written(my_adam, dtype, rule_steps, chunk):
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    opt = diyopt.to_torch(my_adam(), ps)
    for p, g in zip(ps, step_grads(0, dtype)):
        p.grad = g
    opt.step()
    before = [p.detach().clone() for p in ps]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in ps]
    for p, g in zip(ps, step_grads(1, dtype)):
        p.grad = g
    ps[2].grad[1] = float("inf")
    with pytest.raises(DivergedError, match="non-finite update of parameter '2'"):
        opt.step()
    for p, b, s in zip(ps, before, states):
        assert torch.equal(p.detach(), b)
        for k, v in s.items():
            assert torch.equal(opt.state[p][k], v)


@diyopt.elementwise
def divide_by_param(grad, state, param, *, lr=0.1):
    """A rule that divides by the param: a zero param gives a non-finite update from a finite gradient."""
    return -lr * grad / param, state


def test_a_nonfinite_update_from_finite_grads_raises_naming_the_tensors_already_stepped(rule_steps):
    ps = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(4)]
    with torch.no_grad():
        ps[2][0] = 0.0
    opt = diyopt.to_torch(divide_by_param(), ps)
    for p in ps:
        p.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(DivergedError, match=r"update of parameter '2'.*2 tensor\(s\) before it.*'0', '1'"):
        opt.step()
    assert torch.allclose(ps[0].detach(), torch.full((3,), 0.9, dtype=torch.float64))  # stepped
    assert torch.equal(ps[2].detach(), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))  # not written
    assert torch.equal(ps[3].detach(), torch.ones(3, dtype=torch.float64))


@diyopt.elementwise
def late_momentum(grad, state, param, *, lr=0.1, beta=0.5):
    """State ``()`` at init, a tensor from the first step on: the state's shape changes."""
    m = grad if state == () else beta * state + grad
    return -lr * m, m


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_rule_whose_state_changes_shape(dtype, rule_steps, chunk):
    rule = late_momentum()
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    opt = diyopt.to_torch(rule, ps)
    pure = dict(enumerate(p.clone() for p in start_params(dtype)))
    state = rule.init(pure)
    for step in range(3):
        gs = step_grads(step, dtype)
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        updates, state = rule.update(dict(enumerate(gs)), state, pure)
        pure = diyopt.apply_updates(pure, updates)
        for k, p in enumerate(ps):
            assert torch.equal(p.detach(), pure[k])
            assert torch.equal(opt.state[p]["value"], state[k])
    assert rule_steps == [True] * 3


@diyopt.elementwise
def uses_undeclared_state(grad, state, param, *, lr=0.1):
    m = state * 0.9 + grad  # no @uses_undeclared_state.init: the state is ()
    return -lr * m, m


def test_a_rule_using_undeclared_state_fails_on_the_first_tensor_with_nothing_written(rule_steps, chunk):
    ps = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(3)]
    opt = diyopt.to_torch(uses_undeclared_state(), ps)
    for p in ps:
        p.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"declare.*uses_undeclared_state\.init|@uses_undeclared_state\.init"):
        opt.step()
    for p in ps:
        assert torch.equal(p.detach(), torch.ones(3, dtype=torch.float64))


def test_a_nonfinite_update_in_a_later_piece_names_the_pieces_already_stepped(monkeypatch, rule_steps):
    """A tensor cut into pieces of 3 (24 bytes of float64): a zero param in its second piece raises with the
    first piece stepped (and the tensor before it), the rest of it and the tensors after it not written."""
    monkeypatch.setattr(_kernels, "RULE_CHUNK_BYTES", 24)
    ps = [torch.nn.Parameter(torch.ones(n, dtype=torch.float64)) for n in (2, 9, 4)]
    with torch.no_grad():
        ps[1][4] = 0.0
    opt = diyopt.to_torch(divide_by_param(), ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(DivergedError, match=r"update of parameter '1'.*2 tensor\(s\) before it.*'0', '1\[:3\]'"):
        opt.step()
    assert torch.allclose(ps[0].detach(), torch.full((2,), 0.9, dtype=torch.float64))
    assert torch.allclose(ps[1].detach()[:3], torch.full((3,), 0.9, dtype=torch.float64))  # the first piece
    assert torch.equal(ps[1].detach()[3:], torch.tensor([1.0, 0, 1, 1, 1, 1], dtype=torch.float64))
    assert torch.equal(ps[2].detach(), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_tensor_cut_into_pieces_steps_its_count_once(my_adam, dtype, monkeypatch, rule_steps):
    """my_adam's 0-dim ``t`` is per tensor: cut into 4 pieces, the tensor takes one step a step, and equals
    the pure rule on the whole tensor to the bit (the same elementwise ops on each slice)."""
    monkeypatch.setattr(_kernels, "RULE_CHUNK_BYTES", 3 * dtype.itemsize)
    rule, calls = my_adam(lr=1e-2), []
    counted = rule._replace(update=lambda g, s, p=None: calls.append(g["0"].numel()) or rule.update(g, s, p))
    p = torch.nn.Parameter(torch.linspace(-1, 1, 11, dtype=dtype))
    opt = diyopt.to_torch(counted, [p])
    pure = {"0": p.detach().clone()}
    state = rule.init(pure)
    for step in range(3):
        g = torch.sin(torch.arange(11, dtype=dtype) + step)
        p.grad = g.clone()
        opt.step()
        updates, state = rule.update({"0": g}, state, pure)
        pure = diyopt.apply_updates(pure, updates)
        assert torch.equal(p.detach(), pure["0"])
        assert float(opt.state[p]["t"]) == step + 1
        assert torch.equal(opt.state[p]["m"], state["0"].m) and torch.equal(opt.state[p]["v"], state["0"].v)
    assert calls == [2, 3, 3, 3] * 3 and rule_steps == [True] * 3


def test_small_tensors_run_as_one_pack_and_a_late_joiner_one_by_one(my_adam, rule_steps):
    """The four small tensors run through the rule in one call on their concatenation (the default chunk
    packs them), equal to the pure rule tensor by tensor to the bit. A param whose step count differs (it had
    no gradient at first) cannot share the pack's ``t``: that step runs them one by one, still exact."""
    rule, calls = my_adam(lr=1e-2), []
    counted = rule._replace(update=lambda g, s, p=None: calls.append(len(g)) or rule.update(g, s, p))
    ours = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float32)]
    opt = diyopt.to_torch(counted, ours)
    pure = dict(enumerate(p.clone() for p in start_params(torch.float32)))
    state = rule.init(pure)
    for step in range(4):
        gs = step_grads(step, torch.float32)
        live = range(4) if step != 1 else range(3)  # param 3 has no gradient at step 1
        for k, p in enumerate(ours):
            p.grad = gs[k].clone() if k in live else None
        calls.clear()
        opt.step()
        updates, new = rule.update({k: gs[k] for k in live}, {k: state[k] for k in live}, pure)
        state.update(new)
        pure = diyopt.apply_updates(pure, {k: updates.get(k, torch.zeros_like(pure[k])) for k in pure})
        for k, p in enumerate(ours):
            assert torch.equal(p.detach(), pure[k]), f"step {step} param {k}"
            assert torch.equal(opt.state[p]["m"], state[k].m) and torch.equal(opt.state[p]["t"], state[k].t)
        assert len(calls) == (1 if step in (0, 1) else 4), step  # step 1: three params packed, all equal
    assert rule_steps == [True] * 4
