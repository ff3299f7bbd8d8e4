"""``to_torch``'s kernel engine (torch's fused in-place steps: ``adam``, ``adamw``, ``sgd``, ``adagrad``; torch.optim's
multi-tensor steps: ``rmsprop``, ``adadelta``, ``adamax``, ``nadam``, ``radam``, ``rprop``, ``asgd``) against the pure rule (``optimizer.update``, the reference) and the torch.optim class, in float64 and
float32; which settings take the kernel and which fall back; state names, checkpoints, the guard."""

from __future__ import annotations

import pytest
import torch
from optim_db import case_id, optim_db
from to_torch_helpers import assert_rel, start_params, step_grads

import diyopt
import diyopt.schedules
from diyopt.errors import DivergedError

# Each record's kernel_settings (tests/optim_db.py)
CASES = [(info.name, kw, info.torch_cls) for info in optim_db for kw in info.kernel_settings]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,kwargs,cls", CASES, ids=[case_id(name, kw) for name, kw, _ in CASES])
def test_kernel_equals_pure_rule_and_torch(name, kwargs, cls, dtype, kernel_calls):
    rule = getattr(diyopt.optim, name)(**kwargs)
    assert rule.kernel == name  # recognised by the field the factory sets
    ours = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    theirs = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    opt = diyopt.to_torch(rule, ours)
    ref = cls(theirs, foreach=True, **kwargs)
    pure = dict(enumerate(p.clone() for p in start_params(dtype)))
    state = rule.init(pure)
    # torch.optim.ASGD computes eta from its float32 step count; diyopt's pure rule (and so the kernel, which
    # must equal it) from a step in the params' dtype: with float64 params they agree to float32 rounding
    torch_tol = max(TOL[dtype], 1e-6) if name == "asgd" else TOL[dtype]
    for step in range(6):
        gs = step_grads(step, dtype)
        for p, q, g in zip(ours, theirs, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        updates, state = rule.update(dict(enumerate(gs)), state, pure)
        pure = diyopt.apply_updates(pure, updates)
        for k, (p, q) in enumerate(zip(ours, theirs)):
            assert_rel(p.detach(), pure[k], TOL[dtype], f"step {step} param {k} vs pure")
            assert_rel(p.detach(), q.detach(), torch_tol, f"step {step} param {k} vs torch")
            for key, v in ref.state[q].items():
                assert_rel(opt.state[p][key].to(v.dtype), v, torch_tol, f"step {step} state {key}")
    assert kernel_calls.get(name) == 6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,kwargs,cls", CASES, ids=[case_id(name, kw) for name, kw, _ in CASES])
def test_every_kernel_keeps_the_pure_engines_state(name, kwargs, cls, dtype, kernel_calls):
    """Step by step, the kernel's state tensors equal the pure engine's: names, dtypes, shapes, values."""
    fast_p = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    pure_p = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    fast = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs), fast_p)
    pure = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs)._replace(kernel=None), pure_p)
    for step in range(4):
        for p, q, g in zip(fast_p, pure_p, step_grads(step, dtype)):
            p.grad, q.grad = g.clone(), g.clone()
        fast.step()
        pure.step()
        for p, q in zip(fast_p, pure_p):
            assert sorted(fast.state[p]) == sorted(pure.state[q])
            for key, b in pure.state[q].items():
                a = fast.state[p][key]
                assert (a.dtype, a.shape) == (b.dtype, b.shape), key
                if b.numel():
                    assert_rel(a, b, TOL[dtype], f"step {step} {key}")
    assert kernel_calls[name] == 4


def test_state_names_and_tensors_match_the_pure_engine(kernel_calls):
    """Same names, dtypes and shapes as the pure path; a checkpoint moves across engines both ways."""
    for name, kwargs in (("adam", {"amsgrad": True}), ("sgd", {"momentum": 0.9})):
        fast_p = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
        pure_p = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
        fast = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs), fast_p)
        # the same rule without its kernel field: the pure engine
        pure = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs)._replace(kernel=None), pure_p)
        for step in range(3):
            for p, q, g in zip(fast_p, pure_p, step_grads(step, torch.float64)):
                p.grad, q.grad = g.clone(), g.clone()
            fast.step()
            pure.step()
        for p, q in zip(fast_p, pure_p):
            assert sorted(fast.state[p]) == sorted(pure.state[q])
            for key in fast.state[p]:
                a, b = fast.state[p][key], pure.state[q][key]
                assert a.dtype == b.dtype and a.shape == b.shape
                assert_rel(a, b, 1e-12, key)
        # a pure-engine checkpoint loads into the kernel engine and continues like the pure one
        fresh_p = [torch.nn.Parameter(q.detach().clone()) for q in pure_p]
        resumed = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs), fresh_p)
        resumed.load_state_dict(pure.state_dict())
        for p, q, g in zip(fresh_p, pure_p, step_grads(9, torch.float64)):
            p.grad, q.grad = g.clone(), g.clone()
        resumed.step()
        pure.step()
        for p, q in zip(fresh_p, pure_p):
            assert_rel(p.detach(), q.detach(), 1e-12, "resumed")
    assert kernel_calls["adam"] == 4 and kernel_calls["sgd"] == 4


def test_lr_scheduler_and_param_groups_keep_the_kernel(kernel_calls):
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    qs = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    opt = diyopt.to_torch(diyopt.optim.adamw(lr=1e-2), [{"params": ps[:2]}, {"params": ps[2:], "lr": 1e-3}])
    ref = torch.optim.AdamW([{"params": qs[:2]}, {"params": qs[2:], "lr": 1e-3}], lr=1e-2, foreach=True)
    s1 = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(ref, 2, gamma=0.5)
    for step in range(5):
        for p, q, g in zip(ps, qs, step_grads(step, torch.float64)):
            p.grad, q.grad = g.clone(), g.clone()
        for stepper in (opt, ref, s1, s2):
            stepper.step()
        for p, q in zip(ps, qs):
            assert_rel(p.detach(), q.detach(), 1e-12, f"step {step}")
    assert kernel_calls["adamw"] == 10


@pytest.mark.parametrize(
    "make",
    [
        lambda: diyopt.optim.adam(lr=diyopt.schedules.constant(1e-3)),
        lambda: diyopt.optim.adam(lr=torch.tensor(1e-3)),
        lambda: diyopt.optim.adam(betas=(torch.tensor(0.9), torch.tensor(0.999))),
        lambda: diyopt.optim.sgd(lr=1e-2, momentum=torch.tensor(0.9)),
        lambda: diyopt.optim.rmsprop(lr=diyopt.schedules.constant(1e-2)),
        lambda: diyopt.optim.nadam(lr=torch.tensor(2e-3)),
        lambda: diyopt.optim.asgd(lr=torch.tensor(1e-2)),
        lambda: diyopt.optim.adagrad(lr_decay=1e-2),
        lambda: diyopt.chain(diyopt.optim.adam()),
    ],
)
def test_settings_the_kernel_cannot_do_fall_back(make, kernel_calls):
    rule = make()
    assert rule.kernel is None
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    opt = diyopt.to_torch(rule, ps)
    for p, g in zip(ps, step_grads(0, torch.float64)):
        p.grad = g
    opt.step()
    assert kernel_calls == {}


def test_a_group_with_a_tensor_lr_falls_back_per_group(kernel_calls):
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    opt = diyopt.to_torch(diyopt.optim.adam(), [{"params": ps[:2]}, {"params": ps[2:], "lr": torch.tensor(1e-2)}])
    for p, g in zip(ps, step_grads(0, torch.float64)):
        p.grad = g
    opt.step()
    assert kernel_calls == {"adam": 1}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("adam", {}),
        ("sgd", {"momentum": 0.9}),
        ("adagrad", {}),
        ("sgd", {}),
        ("rmsprop", {}),
        ("nadam", {}),
        ("asgd", {}),
    ],
)
def test_guard_raises_before_writing(name, kwargs, dtype, kernel_calls):
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(dtype)]
    opt = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs), ps)
    for p, g in zip(ps, step_grads(0, dtype)):
        p.grad = g
    opt.step()
    before = [p.detach().clone() for p in ps]
    state = {k: v.clone() for k, v in opt.state[ps[2]].items()}
    for p, g in zip(ps, step_grads(1, dtype)):
        p.grad = g
    ps[2].grad[3] = float("nan")
    with pytest.raises(DivergedError, match="2"):
        opt.step()
    for p, b in zip(ps, before):
        assert torch.equal(p.detach(), b)
    for k, v in state.items():
        assert torch.equal(opt.state[ps[2]][k], v)
    # on_nonfinite="ignore": no check, the kernel writes the nan as torch.optim does
    ignoring = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs), ps, on_nonfinite="ignore")
    ignoring.step()
    assert torch.isnan(ps[2]).any()
    assert kernel_calls[name] == 2


def test_sgd_with_a_param_joining_late_matches_torch(kernel_calls):
    """A param with no grad at first has step 0 while the others have 1: the fused SGD step's single
    ``is_first_step`` cannot say that, so that step runs the pure rule; the next one the kernel again."""
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    qs = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    opt = diyopt.to_torch(diyopt.optim.sgd(lr=1e-2, momentum=0.9), ps)
    ref = torch.optim.SGD(qs, lr=1e-2, momentum=0.9, foreach=True)
    for step in range(4):
        for k, (p, q, g) in enumerate(zip(ps, qs, step_grads(step, torch.float64))):
            p.grad, q.grad = (None, None) if (k == 0 and step == 0) else (g.clone(), g.clone())
        opt.step()
        ref.step()
        for p, q in zip(ps, qs):
            assert_rel(p.detach(), q.detach(), 1e-12, f"step {step}")
    assert kernel_calls["sgd"] == 3  # steps 0, 2, 3; step 1 mixed first and later steps


def test_a_group_mixing_dtypes_runs_the_pure_rule_and_matches_torch(kernel_calls):
    ps = [torch.nn.Parameter(torch.randn(5, dtype=torch.float64)), torch.nn.Parameter(torch.randn(4))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = diyopt.to_torch(diyopt.optim.adam(lr=1e-2), ps)
    ref = torch.optim.Adam(qs, lr=1e-2, foreach=False)
    for step in range(3):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, dtype=p.dtype)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for p, q in zip(ps, qs):
            assert_rel(p.detach(), q.detach(), TOL[p.dtype], f"step {step}")
    assert kernel_calls == {}
