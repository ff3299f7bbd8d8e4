"""Issue 15, target 7: a real training step -- a small GPT-style transformer trained with ``to_torch(adamw())``
vs ``torch.optim.AdamW(fused=True)``, and with diyopt's ``partition`` of ``muon`` (the blocks' 2-D weights)
and ``adamw`` (the rest: embeddings, position table, biases, norms) vs ``torch.optim.Muon`` + ``AdamW(fused=True)``
on the same split.

The model: 2 pre-norm decoder blocks (causal self-attention, 4 heads, MLP 4x), d=128, seq 64, batch 16, a
256-token vocabulary, tied input/output embeddings; synthetic tokens (a fixed random batch stream, seeded).
Both models start from the same weights and see the same batches; their steps run alternately (round-robin),
so a shared machine's load hits both alike. Prints the median time per training step (forward, backward,
optimizer step) and of the optimizer step alone, their ratios (target <= 1.0x), and the largest relative
difference between the two loss curves (target <= 1e-6, float32).

    python benchmarks/transformer_step.py [--steps 100]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import machine, target_row
from torch import nn
from torch.nn import functional as F

import diyopt

VOCAB, D, HEADS, LAYERS, SEQ, BATCH = 256, 128, 4, 2, 64, 16


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc, self.out = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D)
        x = x + self.proj(a)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, D), nn.Parameter(torch.zeros(SEQ, D))
        nn.init.normal_(self.tok.weight, std=0.02)  # GPT-2's scale (the tied output layer reads it too)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D)

    def forward(self, idx):
        x = self.tok(idx) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.T


def batches(steps: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g) for _ in range(steps)]


def hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """Muon's share: the blocks' 2-D weights. The tied embedding and the position table are 2-D but not
    hidden layers, so they go to AdamW with the biases and norms (as torch's Muon docs advise)."""
    return p.ndim == 2 and name.startswith("blocks.")


def muon_adamw_pair(model: nn.Module) -> torch.optim.Optimizer:
    """``torch.optim.Muon`` on the hidden matrices + ``AdamW(fused=True)`` on the rest, stepped together."""
    named = list(model.named_parameters())
    muon = torch.optim.Muon([p for n, p in named if hidden_matrix(n, p)], lr=0.02, weight_decay=0.01)
    adamw = torch.optim.AdamW([p for n, p in named if not hidden_matrix(n, p)], lr=1e-3, fused=True)

    class Pair:
        def zero_grad(self):
            muon.zero_grad()
            adamw.zero_grad()

        def step(self):
            muon.step()
            adamw.step()

    return Pair()


def muon_adamw_ours(model: nn.Module) -> torch.optim.Optimizer:
    rule = diyopt.transforms.partition(
        {"muon": diyopt.optim.muon(lr=0.02, weight_decay=0.01), "adamw": diyopt.optim.adamw(lr=1e-3)},
        lambda name, p: "muon" if hidden_matrix(name, p) else "adamw",
    )
    return diyopt.to_torch(rule, model)


def race(contenders: dict, data: list[torch.Tensor]) -> tuple[dict, dict, dict]:
    """Train every (model, optimizer) on the same batches, one step each in turn; per-step times and losses."""
    losses = {k: [] for k in contenders}
    step_s = {k: [] for k in contenders}
    opt_s = {k: [] for k in contenders}
    for idx in data:
        for name, (model, opt) in contenders.items():
            t0 = time.perf_counter()
            opt.zero_grad()
            logits = model(idx[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            step_s[name].append(t2 - t0)
            opt_s[name].append(t2 - t1)
            losses[name].append(loss.item())
    return losses, step_s, opt_s


def report(contenders: dict, losses: dict, step_s: dict, opt_s: dict, what: str) -> None:
    warm = slice(5, None)  # the first steps build state and warm caches
    ref, ours = contenders
    med = {k: statistics.median(v[warm]) * 1e3 for k, v in step_s.items()}
    med_opt = {k: statistics.median(v[warm]) * 1e3 for k, v in opt_s.items()}
    print(f"{'optimizer':44s} {'train step ms':>14s} {'optimizer step ms':>18s} {'final loss':>11s}")
    for k in contenders:
        print(f"{k:44s} {med[k]:14.2f} {med_opt[k]:18.3f} {losses[k][-1]:11.6f}")
    diff = max(abs(a - b) / abs(b) for a, b in zip(losses[ours], losses[ref]))
    ratio = statistics.median(o / r for o, r in zip(step_s[ours][warm], step_s[ref][warm]))
    print(f"loss curves: largest relative difference over {len(losses[ref])} steps {diff:.2g}")
    target_row(7, f"{what} train step vs {ref}", ratio, 1.0, "x")
    target_row(7, f"{what}: same loss curve (max relative difference, float32)", diff, 1e-6, "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(0)
    start = GPT()
    n = sum(p.numel() for p in start.parameters())
    print(
        f"target 7: GPT-style transformer ({LAYERS} layers, d={D}, seq {SEQ}, batch {BATCH}, {n / 1e6:.2f}M "
        f"params in {len(list(start.parameters()))} tensors), {args.steps} steps -- {machine()}"
    )
    data = batches(args.steps)
    ref_model, our_model = copy.deepcopy(start), copy.deepcopy(start)
    contenders = {
        "torch.optim.AdamW(fused=True)": (ref_model, torch.optim.AdamW(ref_model.parameters(), lr=1e-3, fused=True)),
        "diyopt.to_torch(adamw())": (our_model, diyopt.to_torch(diyopt.optim.adamw(lr=1e-3), our_model)),
    }
    report(contenders, *race(contenders, data), "to_torch(adamw())")
    print()
    ref_model, our_model = copy.deepcopy(start), copy.deepcopy(start)
    contenders = {
        "torch.optim.Muon + AdamW(fused=True)": (ref_model, muon_adamw_pair(ref_model)),
        "diyopt.to_torch(partition(muon, adamw))": (our_model, muon_adamw_ours(our_model)),
    }
    report(contenders, *race(contenders, data), "to_torch(partition(muon, adamw))")


if __name__ == "__main__":
    main()
