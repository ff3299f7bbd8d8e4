"""Multi-process fits on ``torch.distributed``: the same script, run with ``torchrun --nproc_per_node=N``.

Each rank holds a shard of the data, computes its loss and gradients, and the fit loop all-reduces them
(one ``all_reduce`` of one buffer per step: the gradients and the loss together), so every rank takes the
same step with the gradient of the loss over *all* the data. Rank 0 writes results and checkpoints.

    import diyopt, diyopt.distributed as dd
    dd.init()                                   # gloo on CPU, NCCL on GPU; from torchrun's environment
    x, y = dd.shard(*diyopt.data.make_line(n=1000))
    r = diyopt.fit(lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y), p0, diyopt.optim.adam(), 2000,
                   distributed="mean")
    if dd.is_main(): print(r)

Which losses decompose across ranks -- the reduction each needs (``REDUCTION``):

* ``"sum"``: the loss is a sum over samples (``sse``): total = sum of the shards' losses, any shard sizes.
* ``"mean"``: a mean over samples (``mse``, ``mae``, ``huber``): total = mean of the shards' losses.
  Exact only for **equal** shards, which is why :func:`shard` refuses an uneven split by default.
* ``"norm"``: ``l2_norm = ||r||`` is *not* a sum of per-shard norms. We compute it properly instead of
  refusing it: with shard norms :math:`L_r` and gradients :math:`g_r`, the whole residual's norm is
  :math:`L = \\sqrt{\\sum_r L_r^2}` and its gradient :math:`\\nabla L = \\sum_r L_r g_r / L`
  (because :math:`\\nabla L_r^2 = 2 L_r g_r`), so one all-reduce of :math:`[L_r g_r, L_r^2]` suffices.

Any other loss (a median, a max, a loss that couples samples across shards) does not decompose; the fit
has no way to tell, so choosing the reduction is the caller's statement that it does.

DDP: a ``torch.optim.Optimizer`` -- ``diyopt.to_torch(...)`` included -- works under
``torch.nn.parallel.DistributedDataParallel`` unchanged, since DDP averages gradients before ``step``.

Sweeps: runs are independent, so each rank takes a share of one grid axis with :func:`split_work` and
rank 0 collects the rows with :func:`gather` (``torch.distributed.all_gather_object``), in grid order::

    mine = diyopt.sweep(loss, p0, diyopt.optim.adam(), 4000, grid={"lr": dd.split_work(lrs)})
    rows = dd.gather(mine.rows)                 # every run's row on rank 0, None elsewhere
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

REDUCTIONS = ("mean", "sum", "norm")
REDUCTION = {"sse": "sum", "mse": "mean", "mae": "mean", "huber": "mean", "l2_norm": "norm"}


def init(backend: str | None = None) -> tuple[int, int]:
    """Start the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ...) if not started.

    ``backend`` defaults to NCCL when CUDA is available, gloo otherwise. Returns ``(rank, world_size)``;
    ``(0, 1)`` outside torchrun.
    """
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        # Ended before the interpreter's teardown, not during it: gloo's worker threads still holding work
        # abort a process that exits with the group alive ("terminate called without an active exception",
        # SIGABRT; pytorch/pytorch#190489) -- seen once on a `diyopt bench` rank under torchrun.
        atexit.register(_end_process_group)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def _end_process_group() -> None:
    """The group :func:`init` started, destroyed at exit (a no-op when the user already did)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files."""
    return rank() == 0


def shard(*tensors: Tensor, even: bool = True) -> tuple[Tensor, ...] | Tensor:
    """This rank's contiguous slice of each tensor along dim 0 (all tensors the same length).

    With ``even=True`` (the default) the length must divide by the number of ranks, as the ``"mean"``
    reduction needs; ``even=False`` allows shards that differ by one row (fine for ``"sum"`` and ``"norm"``).
    """
    lengths = {len(t) for t in tensors}
    if len(lengths) != 1:
        raise ValueError(f"shard: tensors must have the same length, got {sorted(lengths)}")
    n, world = lengths.pop(), world_size()
    if even and n % world:
        raise ValueError(
            f"cannot split {n} rows evenly across {world} ranks (the 'mean' reduction needs "
            "equal shards); use a sum loss with even=False, or drop rows"
        )
    out = tuple(t.tensor_split(world)[rank()] for t in tensors)
    return out[0] if len(out) == 1 else out


class GradReducer:
    """``(loss, grads) -> (loss, grads)`` of the whole data set, by one all-reduce per step."""

    def __init__(self, mode: str):
        if mode not in REDUCTIONS:
            raise ValueError(f"distributed must be one of {', '.join(map(repr, REDUCTIONS))}, got {mode!r}")
        self.mode, self.rank, self.world_size = mode, dist.get_rank(), dist.get_world_size()

    def __call__(self, loss: Tensor, grads: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss = loss.detach()
        gs = list(grads.values())
        dtype = gs[0].dtype
        own = loss.to(dtype).reshape(1)
        if self.mode == "norm":
            parts = [g.reshape(-1) * own for g in gs] + [own * own]
        else:
            parts = [g.reshape(-1) for g in gs] + [own]
        buf = torch.cat(parts)
        dist.all_reduce(buf)
        if self.mode == "mean":
            buf /= self.world_size
        total = buf[-1]
        if self.mode == "norm":
            total = total.sqrt()
            body = buf[:-1] / total
        else:
            body = buf[:-1]
        chunks = body.split([g.numel() for g in gs])
        return total.to(loss.dtype), {k: c.view_as(g) for (k, g), c in zip(grads.items(), chunks)}


def grad_reducer(mode: bool | str | None) -> GradReducer | None:
    """The reducer ``fit`` uses: None for a single process; ``mode=None`` means ``"mean"`` when under torchrun."""
    if mode is None or mode is True:
        return GradReducer("mean") if active() else None
    if not active():
        raise ValueError(
            f"distributed={mode!r} needs a torch.distributed process group with more than one "
            "rank: run under torchrun and call diyopt.distributed.init()"
        )
    return GradReducer(mode)


# ---------------------------------------------------------------- spreading independent runs (sweeps)


def split_work(items: Sequence[Any]) -> list[Any]:
    """Round-robin: this rank's share of ``items`` (e.g. the rows of a sweep grid)."""
    return list(items)[rank() :: world_size()]


def gather(rows: list[Any]) -> list[Any] | None:
    """All ranks' rows on rank 0, in the order :func:`split_work` dealt them (None on other ranks)."""
    if not active():
        return list(rows)
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, rows)
    if not is_main():
        return None
    out = []
    for i in range(max(len(r) for r in everyone)):
        out.extend(r[i] for r in everyone if i < len(r))
    return out
