"""Muon as a user writes it with diyopt: one whole-tensor rule, routed to the matrices by ``partition``.

    python examples/muon.py                      # trains a small MLP, Muon + AdamW

Equal to ``torch.optim.Muon`` (nesterov, Keller Jordan's lr adjustment): ``tests/test_example_muon.py``.
"""

import math

import torch

import diyopt


def newton_schulz(g, steps=5, eps=1e-7, a=3.4445, b=-4.7750, c=2.0315):
    """About U V^T of g = U S V^T: a quintic Newton-Schulz iteration, in bfloat16 (Jordan et al., 2024)."""
    x = g.bfloat16()
    x = x.T if g.size(0) > g.size(1) else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b A + c A^2) x
    return x.T if g.size(0) > g.size(1) else x


@diyopt.elementwise(whole_tensor=True)  # it looks at whole matrices: never run on a flat buffer
def muon(grad, buf, param, *, lr=1e-3, momentum=0.95, weight_decay=0.1):
    buf = torch.lerp(buf, grad, 1 - momentum)  # momentum: buf = mu buf + (1-mu) g
    ortho = newton_schulz(torch.lerp(grad, buf, momentum)).to(param.dtype)  # Nesterov, orthogonalized
    scale = lr * math.sqrt(max(1, param.size(0) / param.size(1)))  # same RMS for any matrix shape
    return -scale * ortho - lr * weight_decay * param, buf


@muon.init
def _(param):
    return torch.zeros_like(param)


def muon_adamw(lr=0.02, adamw_lr=3e-3):
    """Muon for the 2-D weights, AdamW for everything else (biases, norms)."""
    return diyopt.transforms.partition(
        {"muon": muon(lr=lr), "adamw": diyopt.optim.adamw(lr=adamw_lr)},
        lambda name, p: "muon" if p.ndim == 2 else "adamw",
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    result = diyopt.fit(lambda m: torch.nn.functional.mse_loss(m(x), y), model, muon_adamw(), 300)
    print(f"loss {float(result.losses[0]):.4f} -> {float(result.losses[-1]):.4f} in {result.steps} steps")
