"""The extended contract (docs/contract.md): SAM, schedule-free, lookahead and EMA in every form.

Each optimizer runs in lockstep with an independent reference -- the ``schedulefree`` package,
``pytorch_optimizer``, ``torch.optim.swa_utils.AveragedModel``, SAM's Algorithm 1 written out here -- on
a small MLP (2-D weights, 1-D biases), every step compared, in float64 and float32; then through
``to_torch`` with two param groups and a ``state_dict`` reload halfway; then through every form of
diyopt (eager and compiled fit, sweep, checkpoint + SIGKILL + resume) or its refusal. ``torchrun`` is in
tests/test_contract_distributed.py.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diyopt
from diyopt import checkpoint as ckpt
from diyopt.optim import ema, lookahead, sam, schedule_free_adamw, schedule_free_sgd

schedulefree = pytest.importorskip("schedulefree")
po = pytest.importorskip("pytorch_optimizer")
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

DTYPES = [torch.float64, torch.float32]
STEPS = 123  # not a multiple of lookahead's k: its slow and fast weights differ at the end

# Relative tolerance per dtype, with its cause. float64: the references compute the same formulas in
# another order (in place, foreach) -- rounding only. float32: the same, amplified over 120 steps.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
# pytorch_optimizer.SAM forms the gradient norm in float32 whatever the params' dtype
# (utils/gradient.py: ``.float().square_()``), so in float64 it agrees only to float32 rounding of the
# ascent step's length; Algorithm 1 below is the float64 reference.
SAM_REF_TOL = {torch.float64: 1e-6, torch.float32: 5e-5}


def mlp(dtype: torch.dtype) -> tuple[torch.nn.Module, callable]:
    """A 3-5-1 tanh MLP on 32 random points, weights drawn N(0, 1) so the problem is not trivial."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g, dtype=dtype)
    y = torch.randn(32, 1, generator=g, dtype=dtype)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))

    def loss_fn(p):
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    return model, loss_fn


def named(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def grads_at(loss_fn, params: dict) -> dict:
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    return dict(zip(leaves, torch.autograd.grad(loss_fn(leaves), list(leaves.values()))))


def pure_steps(opt: diyopt.Optimizer, params: dict, loss_fn, steps: int):
    """The contract itself, no engine: ``update(grads, state, params, grad_fn=...)`` and apply."""
    state = opt.init(params)
    for _ in range(steps):
        extra = {"grad_fn": lambda at: grads_at(loss_fn, at)} if "grad_fn" in opt.extra_args else {}
        updates, state = opt.update(grads_at(loss_fn, params), state, params, **extra)
        params = diyopt.apply_updates(params, updates)
        yield params, state


def assert_close(got: dict, want: dict, rtol: float, what: str = "") -> None:
    """Every tensor within ``rtol`` of the reference, relative to its largest entry (or 1, for a bias
    near zero)."""
    for k in want:
        scale = max(float(want[k].abs().max()), 1.0)
        err = float((got[k] - want[k]).detach().abs().max()) / scale
        assert err <= rtol, f"{what} {k}: relative error {err:.3g} > {rtol:.0e}"


# ---------------------------------------------------------------- the references, one record each


class RefRun:
    """A reference optimizer training ``model`` in place: ``step``, its params, its evaluation params
    (through its own API), and a reload from its ``state_dict`` into a fresh instance."""

    def __init__(self, case: str, model: torch.nn.Module, groups: list[dict] | None = None):
        self.case, self.model = case, model
        self.groups = groups
        self.opt = self._build()
        self.avg = None
        if case == "ema":
            self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))

    def _params(self):
        if self.groups is None:
            return list(self.model.parameters())
        ps = list(self.model.parameters())
        return [{"params": ps[:2], **self.groups[0]}, {"params": ps[2:], **self.groups[1]}]

    def _build(self):
        ps, c = self._params(), self.case
        if c == "schedule_free_sgd":
            opt = schedulefree.SGDScheduleFree(ps, lr=0.1, momentum=0.9, weight_decay=0.01, warmup_steps=10)
        elif c == "schedule_free_adamw":
            opt = schedulefree.AdamWScheduleFree(ps, lr=0.01, betas=(0.9, 0.99), weight_decay=0.01,
                                                 warmup_steps=10)
        elif c == "sam":
            return po.SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        elif c == "sam_adaptive":
            return po.SAM(ps, torch.optim.Adam, rho=0.5, adaptive=True, lr=0.01)
        elif c == "lookahead":
            return po.Lookahead(torch.optim.Adam(ps, lr=0.01), k=5, alpha=0.5)
        else:
            return torch.optim.Adam(ps, lr=0.01)
        opt.train()  # schedulefree starts in eval mode
        return opt

    def step(self, loss_fn) -> None:
        def closure():
            self.opt.zero_grad()
            loss = loss_fn(dict(self.model.named_parameters()))
            loss.backward()
            return loss

        closure()
        if self.case.startswith("sam"):
            self.opt.step(closure)  # pytorch_optimizer.SAM: gradients first, then step(closure)
        else:
            self.opt.step()
        if self.avg is not None:
            self.avg.update_parameters(self.model)

    def params(self) -> dict:
        return named(self.model)

    def eval_params(self) -> dict:
        if self.case.startswith("schedule_free"):
            model, opt = copy.deepcopy((self.model, self.opt))  # one deepcopy keeps params <-> state links
            opt.eval()
            return named(model)
        if self.case == "lookahead":  # what its backup_and_load_cache() puts into the params
            return {k: self.opt.state[p]["slow_params"].clone() for k, p in self.model.named_parameters()}
        if self.case == "ema":
            return {k.removeprefix("module."): v.detach().clone() for k, v in self.avg.named_parameters()}
        return self.params()

    def reload(self) -> None:
        saved = copy.deepcopy(self.opt.state_dict())
        self.opt = self._build()
        self.opt.load_state_dict(saved)


#: diyopt's side of each case: the same settings as RefRun._build.
MINE = {
    "schedule_free_sgd": lambda: schedule_free_sgd(lr=0.1, momentum=0.9, weight_decay=0.01, warmup_steps=10),
    "schedule_free_adamw": lambda: schedule_free_adamw(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01,
                                                       warmup_steps=10),
    "sam": lambda: sam(diyopt.optim.sgd(lr=0.1, momentum=0.9), rho=0.05),
    "sam_adaptive": lambda: sam(diyopt.optim.adam(lr=0.01), rho=0.5, adaptive=True),
    "lookahead": lambda: lookahead(diyopt.optim.adam(lr=0.01), k=5, alpha=0.5),
    "ema": lambda: ema(diyopt.optim.adam(lr=0.01), decay=0.9),
}
CASES = list(MINE)


def tol(case: str, dtype: torch.dtype) -> float:
    return (SAM_REF_TOL if case.startswith("sam") else TOL)[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_lockstep_with_the_reference(case, dtype):
    """Every step: the training params equal the reference's; at the end the evaluation params too."""
    model, loss_fn = mlp(dtype)
    params = named(model)
    ref = RefRun(case, model)
    opt = MINE[case]()
    for step, (params, state) in enumerate(pure_steps(opt, params, loss_fn, STEPS)):
        ref.step(loss_fn)
        assert_close(params, ref.params(), tol(case, dtype), f"step {step}")
    evaluated = opt.eval_params(state, params) if opt.eval_params is not None else params
    assert_close(evaluated, ref.eval_params(), tol(case, dtype), "eval params")
    if case in ("schedule_free_sgd", "schedule_free_adamw", "lookahead", "ema"):
        assert not torch.equal(evaluated["0.weight"], params["0.weight"])  # they do differ


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_to_torch_two_groups_and_a_reload_halfway(case, dtype):
    """to_torch with two param groups (the second with its own lr where the case allows), its state_dict
    loaded into a fresh instance halfway, .eval()/.train() round trips on the way: equal to the reference
    run the same way, training params every step, evaluation params at the end."""
    groups = [{}, {}] if case.startswith("sam") else [{}, {"lr": 0.05}]
    model, loss_fn = mlp(dtype)
    twin = copy.deepcopy(model)
    ref = RefRun(case, twin, groups)

    def build():
        ps = list(model.named_parameters())
        return diyopt.to_torch(MINE[case](), [{"params": ps[:2], **groups[0]}, {"params": ps[2:], **groups[1]}])

    opt = build()

    def closure():
        opt.zero_grad()
        loss = loss_fn(dict(model.named_parameters()))
        loss.backward()
        return loss

    for step in range(STEPS):
        if step == STEPS // 2:
            saved = copy.deepcopy(opt.state_dict())
            opt = build()
            opt.load_state_dict(saved)
            ref.reload()
        if step % 7 == 3:  # evaluating mid-run leaves training bitwise where it was
            before = named(model)
            opt.eval()
            opt.train()
            assert all(torch.equal(v, before[k]) for k, v in named(model).items())
        if "grad_fn" in opt.optimizer.extra_args:
            opt.step(closure)
        else:
            closure()
            opt.step()
        ref.step(loss_fn)
        assert_close(named(model), ref.params(), tol(case, dtype), f"step {step}")
    opt.eval()
    assert_close(named(model), ref.eval_params(), tol(case, dtype), "eval params")
