"""``to_torch`` of a ``partition``: each rule runs its own engine on its own params (``adamw``'s share through
torch's ``_fused_adamw_`` kernel, ``muon``'s through ``torch.optim._muon.muon``), against ``torch.optim.Muon`` +
``torch.optim.AdamW(fused=True)`` on the same split, against the pure partition, with the state where the
pure partition keeps it (checkpoints, moving between engines) and the guard writing nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import diyopt
from diyopt.errors import DivergedError

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def mlp(dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def hidden(name: str, p: torch.Tensor) -> bool:
    return p.ndim == 2 and name != "0.weight"  # the input layer's matrix goes to AdamW, as an embedding would


def muon_adamw(kernels: bool = True) -> diyopt.Optimizer:
    """``kernels=False``: the same rules without their kernel field, so to_torch runs the pure partition."""
    adamw, muon = diyopt.optim.adamw(lr=1e-2, weight_decay=0.05), diyopt.optim.muon(lr=0.02, weight_decay=0.01)
    assert (adamw.kernel, muon.kernel) == ("adamw", "muon")
    return diyopt.transforms.partition(
        {
            "muon": muon if kernels else muon._replace(kernel=None),
            "adamw": adamw if kernels else adamw._replace(kernel=None),
        },
        lambda n, p: "muon" if hidden(n, p) else "adamw",
    )


def train(model: nn.Module, opts: list, steps: int, dtype, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(32, 6, generator=g, dtype=dtype), torch.randn(32, 3, generator=g, dtype=dtype)
        for o in opts:
            o.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        for o in opts:
            o.step()


def max_rel(a: nn.Module, b: nn.Module) -> float:
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_partition_equals_torch_muon_plus_fused_adamw(dtype, kernel_calls):
    ours, theirs = mlp(dtype), mlp(dtype)
    opt = diyopt.to_torch(muon_adamw(), ours)
    named = list(theirs.named_parameters())
    ref = [
        torch.optim.Muon([p for n, p in named if hidden(n, p)], lr=0.02, weight_decay=0.01),
        torch.optim.AdamW([p for n, p in named if not hidden(n, p)], lr=1e-2, weight_decay=0.05, fused=True),
    ]
    train(ours, [opt], 25, dtype)
    train(theirs, ref, 25, dtype)
    # each share ran its kernel every step: torch's fused AdamW, torch.optim.Muon's own step
    assert kernel_calls == {"adamw": 25, "muon": 25}
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)  # to the last bit, as torch's own pair
    moved = mlp(dtype)
    assert max_rel(moved, theirs) > 1e-2  # the params did move


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_partition_of_kernels_is_bitwise_torch(dtype, kernel_calls):
    """Rules that all have kernels: the partition is torch's fused AdamW + fused SGD to the last bit (the pure
    adamw rule is not, in float32)."""
    ours, theirs = mlp(dtype), mlp(dtype)
    rule = diyopt.transforms.partition(
        {"adamw": diyopt.optim.adamw(lr=1e-2), "sgd": diyopt.optim.sgd(lr=0.05, momentum=0.9)},
        lambda n, p: "adamw" if p.ndim == 2 else "sgd",
    )
    opt = diyopt.to_torch(rule, ours)
    ps = list(theirs.parameters())
    ref = [
        torch.optim.AdamW([p for p in ps if p.ndim == 2], lr=1e-2, fused=True),
        torch.optim.SGD([p for p in ps if p.ndim != 2], lr=0.05, momentum=0.9, fused=True),
    ]
    train(ours, [opt], 20, dtype)
    train(theirs, ref, 20, dtype)
    assert kernel_calls == {"adamw": 20, "sgd": 20}
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)


def test_partition_kernel_path_equals_pure_path_float64(kernel_calls):
    dtype = torch.float64
    fast, pure = mlp(dtype), mlp(dtype)
    train(fast, [diyopt.to_torch(muon_adamw(), fast)], 20, dtype)
    assert kernel_calls == {"adamw": 20, "muon": 20}
    train(pure, [diyopt.to_torch(muon_adamw(kernels=False), pure)], 20, dtype)
    assert kernel_calls == {"adamw": 20, "muon": 20}  # the pure partition ran no kernel
    assert max_rel(fast, pure) <= 1e-12
    # and the pure rule by hand (diyopt's contract, no to_torch at all)
    rule, model = muon_adamw(), mlp(dtype)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = rule.init(params)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = torch.randn(32, 6, generator=g, dtype=dtype), torch.randn(32, 3, generator=g, dtype=dtype)
        ps = {n: p.requires_grad_() for n, p in params.items()}
        out = torch.func.functional_call(model, ps, (x,))
        grads = dict(zip(ps, torch.autograd.grad(((out - y) ** 2).mean(), list(ps.values()))))
        updates, state = rule.update(grads, state, {n: p.detach() for n, p in ps.items()})
        params = {n: p.detach() for n, p in diyopt.apply_updates(ps, updates).items()}
    for n, p in fast.named_parameters():
        assert ((p - params[n]).abs().max() / params[n].abs().max()).item() <= 1e-12, n


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_partition_state_dict_round_trip_halfway(dtype):
    whole, half = mlp(dtype), mlp(dtype)
    train(whole, [diyopt.to_torch(muon_adamw(), whole)], 20, dtype)
    opt = diyopt.to_torch(muon_adamw(), half)
    train(half, [opt], 10, dtype)
    saved = copy.deepcopy(opt.state_dict())
    keys = sorted(saved["state"][0]), sorted(saved["state"][2])
    assert keys == (
        ["adamw.exp_avg", "adamw.exp_avg_sq", "adamw.max_exp_avg_sq", "adamw.step"],
        ["muon.momentum_buffer"],
    )
    # the pure partition (no kernel) took the same steps and keeps the same state, under the same names
    other = mlp(dtype)
    pure_opt = diyopt.to_torch(muon_adamw(kernels=False), other)
    train(other, [pure_opt], 10, dtype)
    pure_saved = pure_opt.state_dict()
    for k, entry in saved["state"].items():
        assert sorted(entry) == sorted(pure_saved["state"][k])
        for name, v in entry.items():
            w = pure_saved["state"][k][name]
            assert v.shape == w.shape and (v.numel() == 0 or (v - w).abs().max() <= TOL[dtype] * w.abs().max()), (
                k,
                name,
            )
    # resume: a fresh optimizer on a copy of the model, the state loaded, ten more steps (of the same stream)
    resumed = copy.deepcopy(half)
    again = diyopt.to_torch(muon_adamw(), resumed)
    again.load_state_dict(saved)
    g_state = torch.Generator().manual_seed(0)
    for _ in range(10):  # skip the first ten batches
        torch.randn(32, 6, generator=g_state, dtype=dtype), torch.randn(32, 3, generator=g_state, dtype=dtype)
    for _ in range(10):
        x, y = torch.randn(32, 6, generator=g_state, dtype=dtype), torch.randn(32, 3, generator=g_state, dtype=dtype)
        again.zero_grad()
        ((resumed(x) - y) ** 2).mean().backward()
        again.step()
    for p, q in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(p, q)
    # the loaded state moves on to the pure partition too: same numbers as the uninterrupted run
    to_pure = copy.deepcopy(half)
    pure_again = diyopt.to_torch(muon_adamw(kernels=False), to_pure)
    pure_again.load_state_dict(saved)
    g_state = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = torch.randn(32, 6, generator=g_state, dtype=dtype), torch.randn(32, 3, generator=g_state, dtype=dtype)
        if _ < 10:
            continue
        pure_again.zero_grad()
        ((to_pure(x) - y) ** 2).mean().backward()
        pure_again.step()
    assert max_rel(to_pure, whole) <= TOL[dtype]


@pytest.mark.parametrize("bad", ["2.weight", "0.bias"])  # in muon's share, in adamw's (the kernel's)
def test_partition_guard_writes_nothing(bad, kernel_calls):
    dtype = torch.float64
    model = mlp(dtype)
    opt = diyopt.to_torch(muon_adamw(), model)
    train(model, [opt], 3, dtype)
    before = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    ((model(torch.randn(4, 6, dtype=dtype))) ** 2).mean().backward()
    dict(model.named_parameters())[bad].grad[0] = float("nan")
    with pytest.raises(DivergedError, match=bad.replace(".", r"\.") + "' at step 3") as raised:
        opt.step()
    assert raised.value.event["step"] == 3  # the partition's prefixed step (adamw.step), not -1
    assert kernel_calls == {"adamw": 3, "muon": 3}
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    after = opt.state_dict()
    for k, entry in before["state"].items():
        for name, v in entry.items():
            assert torch.equal(after["state"][k][name], v), (k, name)


def test_a_nonfinite_update_of_a_rule_without_a_step_names_the_partitions_step(kernel_calls):
    """muon (its kernel field removed: its pure update) with lr=inf beside adamw's kernel: finite gradients,
    a non-finite update in muon's share; the error names the step adamw keeps (muon keeps none), not -1."""
    dtype = torch.float64
    muon = diyopt.optim.muon(lr=float("inf"))._replace(kernel=None)
    rule = diyopt.transforms.partition(
        {"muon": muon, "adamw": diyopt.optim.adamw(lr=1e-2)}, lambda n, p: "muon" if hidden(n, p) else "adamw"
    )
    model = mlp(dtype)
    opt = diyopt.to_torch(rule, model)
    params = [p.detach().clone() for p in model.parameters()]
    ((model(torch.randn(4, 6, dtype=dtype))) ** 2).mean().backward()
    with pytest.raises(DivergedError, match=r"update of parameter '(2|4)\.weight' at step 0") as raised:
        opt.step()
    assert raised.value.event["step"] == 0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_a_partition_without_kernels_runs_the_pure_partition(kernel_calls):
    """Neither rule takes a kernel (muon's kernel field removed, adamw's lr a tensor): the pure partition."""
    dtype = torch.float64
    rule = diyopt.transforms.partition(
        {
            "muon": diyopt.optim.muon(lr=0.02, weight_decay=0.01)._replace(kernel=None),
            "adamw": diyopt.optim.adamw(lr=torch.tensor(1e-2, dtype=dtype), weight_decay=0.05),
        },
        lambda n, p: "muon" if hidden(n, p) else "adamw",
    )
    assert rule.update.routing.rules["adamw"].kernel is None
    model, ref = mlp(dtype), mlp(dtype)
    train(model, [diyopt.to_torch(rule, model)], 5, dtype)
    train(ref, [diyopt.to_torch(muon_adamw(kernels=False), ref)], 5, dtype)
    assert kernel_calls == {}
    assert max_rel(model, ref) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_muon_alone_is_torch_muon_bitwise_and_equals_its_pure_rule(dtype, kernel_calls):
    torch.manual_seed(1)
    start = [torch.randn(8, 5, dtype=dtype), torch.randn(3, 8, dtype=dtype)]
    ours, theirs, pure = ([nn.Parameter(p.clone()) for p in start] for _ in range(3))
    opt = diyopt.to_torch(diyopt.optim.muon(lr=0.05, weight_decay=0.1, nesterov=False), ours)
    ref = torch.optim.Muon(theirs, lr=0.05, weight_decay=0.1, nesterov=False)
    slow = diyopt.to_torch(diyopt.optim.muon(lr=0.05, weight_decay=0.1, nesterov=False)._replace(kernel=None), pure)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in start]
        for ps in (ours, theirs, pure):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
        for o in (opt, ref, slow):
            o.step()
    assert kernel_calls == {"muon": 20}
    for p, q, r in zip(ours, theirs, pure):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])
        # the pure rule: the same math, its update (new minus old param) added back; bfloat16 Newton-Schulz
        # lets a last-bit difference in the params grow a little over the steps
        assert ((p - r).abs().max() / r.abs().max()).item() <= (1e-12 if dtype == torch.float64 else 1e-5)
