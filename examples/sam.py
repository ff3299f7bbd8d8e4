"""SAM (Foret et al., 2021, arXiv:2010.01412) as a user writes it with diyopt: step with the gradient at
the worst nearby point, w + rho g / ||g||, around any base optimizer. ``grad_fn`` is the gradient at other
params; declaring it in ``extra_args`` is all it takes for fit, sweep and ``to_torch(...).step(closure)``.

    python examples/sam.py
"""

import torch

import diyopt


def my_sam(base: diyopt.Optimizer, rho: float = 0.05) -> diyopt.Optimizer:
    def update(grads, state, params, *, grad_fn):
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        ascent = {k: p + rho * grads[k] / (norm + 1e-12) for k, p in params.items()}
        return base.update(grad_fn(ascent), state, params)  # the base steps from w, with the gradient there

    return diyopt.Optimizer(base.init, update, extra_args=frozenset({"grad_fn"}))


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(128, 3, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    r = diyopt.fit(lambda m: torch.nn.functional.mse_loss(m(x), y), model, my_sam(diyopt.optim.sgd(lr=0.1)), 300)
    print(f"fit: loss {r.losses[0]:.4f} -> {r.final_loss:.4f}")
    opt = diyopt.to_torch(my_sam(diyopt.optim.sgd(lr=0.1)), model)  # a torch.optim.Optimizer

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(100):
        loss = opt.step(closure).detach()  # two gradients per step: at w, then at the ascent point
    print(f"to_torch: loss {loss.item():.4f}")
