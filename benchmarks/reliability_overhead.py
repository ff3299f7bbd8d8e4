"""What the divergence guard and checkpoints cost per step on the seed fit (eager engine).

Reference: the same fit with the guard off (``on_nonfinite="ignore"``), measured in the same run.

    .venv/bin/python benchmarks/reliability_overhead.py [--steps 4000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import diyopt


def seed_fit(steps: int, **options) -> float:
    x, y = diyopt.data.make_line(seed=0)
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    start = time.perf_counter()
    diyopt.fit(
        lambda p: diyopt.losses.l2_norm(p["a"] * x + p["b"], y), p0, diyopt.optim.adam(lr=1e-3), steps, **options
    )
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    cases = {
        "guard off (reference)": dict(on_nonfinite="ignore"),
        "guard on (default)": dict(on_nonfinite="stop"),
        "guard + checkpoint every 100": dict(on_nonfinite="stop", checkpoint_every=100),
        "guard + checkpoint every 1000": dict(on_nonfinite="stop", checkpoint_every=1000),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    seed_fit(200)  # warm-up
    for i in range(args.repeats):  # interleaved, so load changes on a shared machine hit every case alike
        for j, (name, options) in enumerate(cases.items()):
            if "checkpoint_every" in options:
                options = {**options, "checkpoint": folder / f"{j}-{i}.pt"}
            times[name].append(seed_fit(args.steps, **options))
    best = {name: min(t) for name, t in times.items()}
    ref = best["guard off (reference)"]
    print(f"seed fit, Adam, {args.steps} steps, float64, eager; best of {args.repeats}")
    print(f"{'case':34s} {'us/step':>9s} {'ratio':>7s}")
    for name, t in best.items():
        print(f"{name:34s} {t:9.2f} {t / ref:7.3f}")


if __name__ == "__main__":
    main()
