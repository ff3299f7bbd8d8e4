"""The optimizers of the extended contract as tests/test_contract.py and its subprocesses (SIGKILL,
torchrun) run them: the settings, and the small MLP they train. Only torch and diyopt imported, so a
child process starts quickly."""

from __future__ import annotations

import torch

import diyopt
from diyopt.optim import ema, lookahead, sam, schedule_free_adamw, schedule_free_sgd


def mlp(dtype: torch.dtype, shard=None, halves: bool = False) -> tuple[torch.nn.Module, callable]:
    """A 3-5-1 tanh MLP on 32 random points, weights drawn N(0, 1) so the problem is not trivial; its mse
    loss on all the points, or on this rank's ``shard(x, y)`` of them. ``halves``: the loss on all the
    points written as the mean of the two halves' losses -- the same number, rounded as two ranks'
    all-reduced mean rounds it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g, dtype=dtype)
    y = torch.randn(32, 1, generator=g, dtype=dtype)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    if shard is not None:
        x, y = shard(x, y)
    model.data = (x, y)  # what the loss sees, for a torch training loop on the same points

    def loss_fn(p):
        if halves:
            return sum(mse_of_halves(lambda xs: torch.func.functional_call(model, p, (xs,)), x, y)) / 2
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    return model, loss_fn


def mse_of_halves(forward, x, y) -> list:
    return [torch.nn.functional.mse_loss(forward(xs), ys) for xs, ys in zip(x.tensor_split(2), y.tensor_split(2))]


def named(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


#: Each optimizer under test; tests/test_contract.py's RefRun builds its reference with the same settings.
MINE = {
    "schedule_free_sgd": lambda: schedule_free_sgd(lr=0.1, momentum=0.9, weight_decay=0.01, warmup_steps=10),
    "schedule_free_adamw": lambda: schedule_free_adamw(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=10),
    "sam": lambda: sam(diyopt.optim.sgd(lr=0.1, momentum=0.9), rho=0.05),
    "sam_adaptive": lambda: sam(diyopt.optim.adam(lr=0.01), rho=0.5, adaptive=True),
    "lookahead": lambda: lookahead(diyopt.optim.adam(lr=0.01), k=5, alpha=0.5),
    "ema": lambda: ema(diyopt.optim.adam(lr=0.01), decay=0.9),
}
CASES = list(MINE)

#: The recent optimizers (tests/test_recent_optimizers.py has their lockstep tests), with the settings of
#: tests/test_recent_forms.py, for the torchrun check: one launch runs CASES and these.
RECENT = {
    "muon_adamw": lambda: diyopt.optim.muon_adamw(lr=0.02, adamw_lr=1e-2),
    "soap": lambda: diyopt.optim.soap(precondition_frequency=3),
    "prodigy": lambda: diyopt.optim.prodigy(use_bias_correction=True),
    "adopt": lambda: diyopt.optim.adopt(lr=1e-2, weight_decay=0.01),
    "adan": lambda: diyopt.optim.adan(lr=1e-2, max_grad_norm=1.0),
}


def p0(dtype=torch.float64):
    return named(mlp(dtype)[0])


def loss64():
    return mlp(torch.float64)[1]


def killed_run(case: str, path: str, kill_at: int = 37) -> None:
    """A checkpointed fit that SIGKILLs itself after step ``kill_at`` (no cleanup at all), in a child."""
    import os
    import signal

    def kill(step, loss, params):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    diyopt.fit(loss64(), p0(), MINE[case](), 60, checkpoint=path, checkpoint_every=10, callback=kill)


def train_loop(opt_fn, model: torch.nn.Module, steps: int, forward=None, halves: bool = False) -> dict:
    """A plain torch loop with ``to_torch(opt_fn(), model)`` on the model's data; ``forward``: the module
    that runs the batch (a DistributedDataParallel around ``model``). step(closure) where the optimizer
    asks for it (SAM); ``halves`` as in :func:`mlp`. Returns the training params and, after ``.eval()``, the evaluation params."""
    x, y = model.data
    forward = forward or model
    opt = diyopt.to_torch(opt_fn(), model)

    def closure():
        opt.zero_grad()
        loss = sum(mse_of_halves(forward, x, y)) / 2 if halves else torch.nn.functional.mse_loss(forward(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        if opt.optimizer.extra_args:
            opt.step(closure)
        else:
            closure()
            opt.step()
    train = named(model)
    opt.eval()
    return {"train": train, "eval": named(model)}
