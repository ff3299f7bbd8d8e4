"""Run under ``torchrun --nproc_per_node=2`` by tests/test_contract.py: every optimizer of the extended
contract and the recent ones (muon_adamw, soap, prodigy, adopt, adan) through ``fit(..., distributed="mean")`` and through ``to_torch`` + DistributedDataParallel, each
rank on its half of the data; rank 0 saves what it found.

    python -m torch.distributed.run --nproc_per_node=2 tests/contract_dist_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import diyopt
from diyopt.engines import distributed as dd

sys.path.insert(0, str(Path(__file__).parent))
from contract_cases import MINE, RECENT, mlp, named, train_loop  # noqa: E402

STEPS = 100


def run(out: Path) -> None:
    rank, world = dd.init()
    found = {"world": world}
    for case, make in {**MINE, **RECENT}.items():
        model, loss_fn = mlp(torch.float64, shard=dd.shard)
        r = diyopt.fit(loss_fn, named(model), make(), STEPS, distributed="mean")
        found[f"fit:{case}"] = {"params": r.params, "losses": r.losses}
        model, _ = mlp(torch.float64, shard=dd.shard)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        found[f"ddp:{case}"] = train_loop(make, model, STEPS, forward=ddp)
    if dd.is_main():
        torch.save(found, out / "found.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
