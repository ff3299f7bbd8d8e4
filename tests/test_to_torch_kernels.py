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
from diyopt.engines import _kernels
from diyopt.errors import DivergedError

# Each record's kernel_settings (tests/optim_db.py)
CASES = [(info.name, kw, info.torch_cls) for info in optim_db for kw in info.kernel_settings]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture(params=[None, 24, 40], ids=["one-chunk", "chunk24B", "chunk40B"])
def chunk(request, monkeypatch):
    """The multi-tensor steps' cache-blocking chunk (``_kernels.CHUNK_BYTES``): the default (these small
    groups fit one chunk) and two small enough to cut every tensor of :func:`start_params` into pieces (24
    bytes: 3 float64 or 6 float32 elements) or to pack some whole and cut others (40 bytes)."""
    if request.param is not None:
        monkeypatch.setattr(_kernels, "CHUNK_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,kwargs,cls", CASES, ids=[case_id(name, kw) for name, kw, _ in CASES])
def test_kernel_equals_pure_rule_and_torch(name, kwargs, cls, dtype, kernel_calls, chunk):
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
def test_every_kernel_keeps_the_pure_engines_state(name, kwargs, cls, dtype, kernel_calls, chunk):
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
def test_guard_raises_before_writing(name, kwargs, dtype, kernel_calls, chunk):
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


# ---------------------------------------------------------------- cache blocking (_kernels.chunks)

MIXED = [3, 2, 50, 1, 4, 13]  # packed whole, cut into pieces, packed whole again, one just over a chunk
FOREACH_CASES = [c for c in CASES if c[0] in _kernels.FOREACH]  # torch.optim's multi-tensor steps


def test_the_chunk_plan_covers_every_element_once():
    plan = _kernels._plan(tuple(MIXED), 8, 12 * 8)  # 12 float64 elements a chunk
    assert plan[0] == ((0, 0, 3, True), (1, 0, 2, True))  # packed whole
    covered = {j: [] for j in range(len(MIXED))}
    for chunk in plan:
        assert sum(b - a for _, a, b, _ in chunk) <= 12
        for j, a, b, first in chunk:
            covered[j].append((a, b, first))
    for j, n in enumerate(MIXED):
        pieces = sorted(covered[j])
        assert pieces[0][0] == 0 and pieces[-1][1] == n
        assert all(x[1] == y[0] for x, y in zip(pieces, pieces[1:]))  # contiguous, no overlap
        assert sum(f for _, _, f in pieces) == 1  # one piece steps the 0-dim state
    assert [len(c) for c in plan] == [2, 1, 1, 1, 1, 1, 2, 1, 1]  # 50 cut in 5, [1, 4] packed, 13 in 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,kwargs,cls", FOREACH_CASES, ids=[case_id(n, kw) for n, kw, _ in FOREACH_CASES])
def test_a_chunked_group_of_mixed_sizes_equals_the_pure_rule(name, kwargs, cls, dtype, monkeypatch):
    """Tensors packed, cut into pieces and one left whole, all in chunks of 12 elements: each step equals the
    pure rule's, and torch's step ran once per chunk."""
    monkeypatch.setattr(_kernels, "CHUNK_BYTES", 12 * torch.finfo(dtype).bits // 8)
    module = __import__(f"torch.optim.{name}", fromlist=[name])
    calls = []
    step = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(len(a[0])) or step(*a, **k))
    g = torch.Generator().manual_seed(1)
    start = [torch.randn(n, generator=g, dtype=dtype) for n in MIXED]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    theirs = [torch.nn.Parameter(p.clone()) for p in start]
    opt = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs), ours)
    # the same rule without its kernel field: the pure engine, the reference
    pure = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs)._replace(kernel=None), theirs)
    for k in range(4):
        for p, q, n in zip(ours, theirs, MIXED):
            p.grad = torch.randn(n, generator=g, dtype=dtype)
            q.grad = p.grad.clone()
        opt.step()
        pure.step()
        for j, (p, q) in enumerate(zip(ours, theirs)):
            assert_rel(p.detach(), q.detach(), TOL[dtype], f"step {k} param {j}")
            assert sorted(opt.state[p]) == sorted(pure.state[q])
            for key, v in pure.state[q].items():
                assert opt.state[p][key].shape == v.shape, key
                if v.numel() and not torch.equal(opt.state[p][key], v):  # empty: rmsprop's uncentered grad_avg
                    assert_rel(opt.state[p][key], v, TOL[dtype], f"step {k} param {j} {key}")
    assert len(calls) == 4 * len(_kernels._plan(tuple(MIXED), dtype.itemsize, _kernels.CHUNK_BYTES))


@pytest.mark.parametrize("where", [0, -1], ids=["last-chunk", "first-chunk"])
@pytest.mark.parametrize("name,kwargs", [("rmsprop", {}), ("nadam", {}), ("asgd", {}), ("radam", {})])
def test_a_nonfinite_gradient_in_any_chunk_writes_nothing(name, kwargs, where, monkeypatch):
    """The guard checks every gradient before the first chunk runs (the kernels run the group last tensor
    first): a nan in the chunk that runs last (the first tensor's) or in the one that runs first raises with every
    param and state as it was."""
    monkeypatch.setattr(_kernels, "CHUNK_BYTES", 24)  # 3 float64 elements: every tensor cut
    ps = [torch.nn.Parameter(p.clone()) for p in start_params(torch.float64)]
    opt = diyopt.to_torch(getattr(diyopt.optim, name)(**kwargs), ps)
    for p, g in zip(ps, step_grads(0, torch.float64)):
        p.grad = g
    opt.step()
    before = [p.detach().clone() for p in ps]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in ps]
    for p, g in zip(ps, step_grads(1, torch.float64)):
        p.grad = g
    ps[where].grad[where] = float("inf")
    with pytest.raises(DivergedError):
        opt.step()
    for p, b, s in zip(ps, before, state):
        assert torch.equal(p.detach(), b)
        assert all(torch.equal(opt.state[p][k], v) for k, v in s.items())


def test_a_non_contiguous_tensor_larger_than_a_chunk_runs_the_group_whole(monkeypatch):
    """A transposed param has no flat view to cut: the group runs unchunked (one call), equal to the pure
    engine."""
    monkeypatch.setattr(_kernels, "CHUNK_BYTES", 24)
    module = __import__("torch.optim.nadam", fromlist=["nadam"])
    calls, step = [], module.nadam
    monkeypatch.setattr(module, "nadam", lambda *a, **k: calls.append(1) or step(*a, **k))
    g = torch.Generator().manual_seed(2)
    start = [torch.randn(6, 5, generator=g, dtype=torch.float64).t(), torch.randn(9, generator=g, dtype=torch.float64)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]  # clone keeps the transposed strides
    theirs = [torch.nn.Parameter(p.clone()) for p in start]
    assert not ours[0].is_contiguous()
    opt = diyopt.to_torch(diyopt.optim.nadam(), ours)
    pure = diyopt.to_torch(diyopt.optim.nadam()._replace(kernel=None), theirs)
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            q.grad = p.grad.clone()
        opt.step()
        pure.step()
        for p, q in zip(ours, theirs):
            assert_rel(p.detach(), q.detach(), TOL[torch.float64], "param")
    assert len(calls) == 3
