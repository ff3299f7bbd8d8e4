"""Run under ``torchrun --nproc_per_node=N`` by tests/test_distributed.py; rank 0 saves what it found.

python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import diyopt
from diyopt.cli import main
from diyopt.engines import distributed as dd

STEPS = 1000


def line_fit(loss_name: str, reduction: str, n: int):
    """The seed line, this rank's shard of the data, loss and gradients reduced across ranks."""
    x, y = diyopt.data.make_line(n=n, seed=0)
    x, y = dd.shard(x, y, even=reduction == "mean")
    loss_on_pred = diyopt.losses.get(loss_name)
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    r = diyopt.fit(
        lambda p: loss_on_pred(p["a"] * x + p["b"], y), p0, diyopt.optim.adam(lr=1e-2), STEPS, distributed=reduction
    )
    return {"params": r.params, "losses": r.losses}


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def mlp_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    return x, torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(64, 1, generator=g, dtype=torch.float64)


def train_mlp(model: torch.nn.Module, x, y, steps: int = 200) -> dict:
    """A plain torch training loop with diyopt's Adam as a torch.optim.Optimizer."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    opt = diyopt.to_torch(diyopt.optim.adam(lr=1e-2), inner)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in inner.state_dict().items()}


def sweep_lrs() -> list[float]:
    return [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def sweep_row(lr: float) -> dict:
    x, y = diyopt.data.make_line(seed=0)
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    r = diyopt.fit(
        lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y), p0, diyopt.optim.adam(lr=lr), 300, distributed=False
    )  # independent runs: no gradient exchange
    return {"lr": lr, "final_loss": r.losses[-1].item(), "a": r.params["a"].item()}


def line_sweep(lrs: list[float]):
    """diyopt.sweep (vmapped runs) over learning rates on the seed line."""
    x, y = diyopt.data.make_line(seed=0)
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    return diyopt.sweep(
        lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y), p0, diyopt.optim.adam(), 300, grid={"lr": lrs}
    )


def run(out: Path) -> None:
    rank, world = dd.init()
    found = {
        "world": world,
        "mse": line_fit("mse", "mean", 100),
        "sse": line_fit("sse", "sum", 101),  # uneven shards: 51 + 50 rows
        "l2_norm": line_fit("l2_norm", "norm", 101),
    }
    x, y = mlp_data()
    model = torch.nn.parallel.DistributedDataParallel(mlp())
    xs, ys = dd.shard(x, y)
    found["ddp"] = train_mlp(model, xs, ys)
    found["sweep"] = dd.gather([sweep_row(lr) for lr in dd.split_work(sweep_lrs())])
    mine = line_sweep(dd.split_work(sweep_lrs()))
    found["vmap_sweep"] = dd.gather([{"lr": r["lr"], "final_loss": r["final_loss"]} for r in mine.rows])
    # The CLI under torchrun: the line data is sharded, rank 0 writes the outputs and the checkpoint.
    found["cli"] = main(
        [
            "fit",
            "--problem",
            "line",
            "--loss",
            "mse",
            "--optimizer",
            "adam",
            "--steps",
            "300",
            "--out",
            str(out / "cli"),
            "--checkpoint",
            str(out / "cli.pt"),
            "--checkpoint-every",
            "100",
        ]
    )
    if dd.is_main():
        torch.save(found, out / "found.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
