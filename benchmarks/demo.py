"""B4 / issue 15's target 6: ``diyopt demo`` end to end, process start to exit, vs the seed notebook run as a
script (the same work: data, the two fits, the five figures), with a warm install (goal <= 0.6x).

Prints the best of ``--reps`` runs (after one run that warms the OS file cache) of
  - ``python -c "import torch"``: the floor of any torch program,
  - the seed's packaged-Adam fit alone (its loop from ../shared/anchors/seed_loops.py, 4,000 steps) in a
    fresh process: the floor of any demo that reproduces it with ``torch.optim.Adam``. Its first
    ``torch.optim`` constructor imports ``torch._dynamo`` (torch's ``_disable_dynamo`` wrapper), ~2 s here,
  - the seed notebook as a script (``SEED_SCRIPT``: its cells as written, figures saved with matplotlib's
    Agg backend) and ``diyopt demo`` (both fits, six figures, summary.json; the Adam fit in a forked
    worker), timed in turn ``--reps`` times (the ratio is the median of those pairs), and the same demo
    with the two fits one after the other (``run_demo(parallel=False)``).
Run: python benchmarks/demo.py [--reps 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, row, target_row

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


SEED_SCRIPT = r"""
# The seed notebook (../shared/seed), cell by cell, as one script: its data, its two fits, its five figures.
import sys, os
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.autograd import Variable
import torch.optim as optim

out = sys.argv[1]
N = 100
a_data = -1
b_data = 1
sigma_data = 0.1
x_data = 2 * np.random.rand(N)
y_data = a_data * x_data + b_data + sigma_data * np.random.randn(N)
plt.figure(); plt.scatter(x_data, y_data); plt.savefig(os.path.join(out, "sample.png")); plt.close()

a = Variable(torch.randn(1), requires_grad=True)
b = Variable(torch.randn(1), requires_grad=True)
x_train = torch.tensor(x_data)
y_train = torch.tensor(y_data)
optimizer = optim.Adam([a, b])
epoch = 4000
loss_epoch = np.zeros(epoch)
for i in range(epoch):
    optimizer.zero_grad()
    y_hat = a * x_train + b
    loss = (y_train - y_hat).norm()
    loss_epoch[i] = loss.item()
    loss.backward()
    optimizer.step()
plt.figure(); plt.plot(loss_epoch); plt.savefig(os.path.join(out, "Adam_loss.png")); plt.close()
plt.figure(); plt.scatter(x_data, y_data); xs = np.linspace(0, 2, 10)
plt.plot(xs, a.item() * xs + b.item(), "r"); plt.savefig(os.path.join(out, "Adam.png")); plt.close()

a = torch.randn(1, requires_grad=True)
b = torch.randn(1, requires_grad=True)
eta = 0.001
loss_epoch = np.zeros(epoch)
for i in range(epoch):
    a.requires_grad_(True)
    b.requires_grad_(True)
    y_hat = a * x_train + b
    loss = (y_train - y_hat).norm()
    loss_epoch[i] = loss.item()
    loss.backward()
    a.requires_grad_(False)
    b.requires_grad_(False)
    a = a - eta * a.grad
    b = b - eta * b.grad
plt.figure(); plt.plot(loss_epoch); plt.savefig(os.path.join(out, "original_loss.png")); plt.close()
plt.figure(); plt.scatter(x_data, y_data)
plt.plot(xs, a.item() * xs + b.item(), "r"); plt.savefig(os.path.join(out, "original.png")); plt.close()
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
        seed_cmd = [py, "-c", SEED_SCRIPT, out]
        demo_cmd = [py, "-m", "diyopt", "demo", "--out", str(Path(out) / "demo")]
        wall(seed_cmd), wall(demo_cmd)  # warm the OS file cache
        pairs = [(wall(seed_cmd), wall(demo_cmd)) for _ in range(args.reps)]  # in turn: the same load
        serial = best(
            [
                py,
                "-c",
                f"from diyopt.analysis.demo import run_demo; run_demo({str(Path(out) / 'serial')!r}, parallel=False)",
            ],
            args.reps,
        )
    seed_script, demo = min(p[0] for p in pairs), min(p[1] for p in pairs)
    ratio = sorted(d / s for s, d in pairs)[len(pairs) // 2]
    print(row("python -c 'import torch' (the floor)", floor, "s"))
    print(
        row(
            "the seed's torch.optim.Adam fit alone, 4000 steps",
            seed_adam,
            "s",
            "the floor of a demo that reproduces it",
        )
    )
    print(row("the seed notebook as a script (data, 2 fits, 5 figures)", seed_script, "s"))
    print(row("diyopt demo, the two fits one after the other", serial, "s"))
    print(
        row(
            "diyopt demo --out TMP (Adam fit in a forked worker)",
            demo,
            "s",
            f"{ratio:.2f}x the seed script (median of {len(pairs)} pairs)",
        )
    )
    target_row(6, "diyopt demo vs the seed notebook as a script, process start to exit", ratio, 0.6)


if __name__ == "__main__":
    main()
