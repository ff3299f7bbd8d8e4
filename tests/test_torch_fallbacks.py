"""What diyopt reads from torch's private modules has a fallback when another torch (pyproject: ``torch>=2.3``)
lacks it or has it otherwise: Inductor's ``emulate_precision_casts`` option, Dynamo's ``TensorifyState``,
``torch.optim._muon.muon`` (muon's kernel; the pure rule instead, the same numbers)."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch
import torch._dynamo.symbolic_convert
import torch._inductor.config

import diyopt
from diyopt.engines import _to_torch as torch_optim
from diyopt.engines import compiled


def test_faithful_casts_without_the_inductor_option_is_a_null_context(monkeypatch):
    monkeypatch.setattr(torch._inductor, "config", types.SimpleNamespace(patch=None))  # no such option
    with compiled.faithful_casts() as ctx:
        assert ctx is None
    assert isinstance(compiled.faithful_casts(), contextlib.nullcontext)


def test_faithful_casts_with_the_option_sets_it():
    if not hasattr(torch._inductor.config, "emulate_precision_casts"):
        pytest.skip("this torch has no emulate_precision_casts")
    before = torch._inductor.config.emulate_precision_casts
    with compiled.faithful_casts():
        assert torch._inductor.config.emulate_precision_casts is True
    assert torch._inductor.config.emulate_precision_casts == before


@pytest.mark.parametrize("state", [None, object(), types.SimpleNamespace(empty=lambda: False)])
def test_forget_float_specializations_with_another_tensorify_state(monkeypatch, state):
    monkeypatch.setattr(torch._dynamo.symbolic_convert, "TensorifyState", state, raising=False)
    compiled._forget_float_specializations()  # nothing to call: no AttributeError


def test_forget_float_specializations_clears_a_nonempty_state(monkeypatch):
    cleared = []
    state = types.SimpleNamespace(empty=lambda: False, clear=lambda: cleared.append(True))
    monkeypatch.setattr(torch._dynamo.symbolic_convert, "TensorifyState", state, raising=False)
    compiled._forget_float_specializations()
    assert cleared == [True]


def _muon_run(dtype):
    """Three steps of to_torch(muon) on 2-D params, and the pure rule's params after the same steps."""
    rule = diyopt.optim.muon(lr=0.05, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(3, 5, generator=g, dtype=dtype)]
    grads = [[torch.randn(p.shape, generator=g, dtype=dtype) for p in start] for _ in range(3)]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = diyopt.to_torch(rule, params)
    pure = dict(enumerate(p.clone() for p in start))
    state = rule.init(pure)
    for gs in grads:
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
        updates, state = rule.update(dict(enumerate(gs)), state, pure)
        pure = diyopt.apply_updates(pure, updates)
    return [p.detach() for p in params], [pure[k] for k in range(len(start))]


def _count_muon_kernel(monkeypatch):
    calls = []
    state, run = torch_optim._KERNELS["muon"]
    monkeypatch.setitem(torch_optim._KERNELS, "muon", (state, lambda *a: calls.append(run(*a)) or calls[-1]))
    return calls


def _incompatible_muon(params, grads, bufs, *, lr):  # another torch's signature: calling it as ours is a TypeError
    raise AssertionError("called with arguments it does not take")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("replace", ["incompatible", "absent"])
def test_muon_falls_back_to_the_pure_rule_when_torchs_function_differs_or_is_absent(monkeypatch, dtype, replace):
    muon_module = pytest.importorskip("torch.optim._muon")
    if replace == "absent":
        monkeypatch.delattr(muon_module, "muon")
    else:
        monkeypatch.setattr(muon_module, "muon", _incompatible_muon)
    calls = _count_muon_kernel(monkeypatch)
    ours, pure = _muon_run(dtype)
    assert calls and not any(calls)  # the kernel was asked and declined each time
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    for a, b in zip(ours, pure):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_muon_takes_the_kernel_with_this_torch(monkeypatch):
    pytest.importorskip("torch.optim._muon")
    calls = _count_muon_kernel(monkeypatch)
    ours, pure = _muon_run(torch.float64)
    assert calls and all(calls)
    for a, b in zip(ours, pure):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
