"""B4: ``diyopt demo`` end to end, process start to exit, with a warm install (goal <= 5 s).

Prints the best of ``--reps`` runs (after one run that warms the OS file cache) of
  - ``python -c "import torch"``: the floor of any torch program,
  - the seed's packaged-Adam fit alone (its loop from ../shared/anchors/seed_loops.py, 4,000 steps) in a
    fresh process: the floor of any demo that reproduces it with ``torch.optim.Adam``. Its first
    ``torch.optim`` constructor imports ``torch._dynamo`` (torch's ``_disable_dynamo`` wrapper), ~2 s here,
  - ``diyopt demo`` (both fits, six figures, summary.json; the Adam fit in a forked worker), and the same
    with the two fits one after the other (``run_demo(parallel=False)``).
Run: python benchmarks/demo.py [--reps 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from common import machine, row

SEED_ADAM_ALONE = r"""
import numpy as np, torch
rng = np.random.RandomState(0)
x = 2 * rng.rand(100); y = -x + 1 + 0.1 * rng.randn(100)
a = torch.randn(1, requires_grad=True); b = torch.randn(1, requires_grad=True)
xt, yt = torch.tensor(x), torch.tensor(y)
opt = torch.optim.Adam([a, b])
for i in range(4000):
    opt.zero_grad()
    loss = (yt - (a * xt + b)).norm()
    loss.item()
    loss.backward()
    opt.step()
"""


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def best(cmd: list[str], reps: int) -> float:
    wall(cmd)  # warm the OS file cache
    return min(wall(cmd) for _ in range(reps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"B4 diyopt demo, process start to exit -- {machine()}")
    py = sys.executable
    floor = best([py, "-c", "import torch"], args.reps)
    seed_adam = best([py, "-c", SEED_ADAM_ALONE], args.reps)
    with tempfile.TemporaryDirectory() as out:
        demo = best([py, "-m", "diyopt.cli", "demo", "--out", out], args.reps)
        serial = best([py, "-c", f"from diyopt.demo import run_demo; run_demo({out!r}, parallel=False)"],
                      args.reps)
    print(row("python -c 'import torch' (the floor)", floor, "s"))
    print(row("the seed's torch.optim.Adam fit alone, 4000 steps", seed_adam, "s",
              "the floor of a demo that reproduces it"))
    print(row("diyopt demo, the two fits one after the other", serial, "s"))
    print(row("diyopt demo --out TMP (Adam fit in a forked worker)", demo, "s",
              f"{demo / seed_adam:.2f}x the seed's Adam fit alone (goal <= 5 s)"))


if __name__ == "__main__":
    main()
