"""The seed fit, per step: the seed's own two loops vs diyopt's eager `fit` doing the same work.

Run:  python benchmarks/seed_fit.py [--steps 4000] [--repeats 5]
Prints microseconds per step (best of --repeats) and the ratio diyopt / seed (lower is better).
Targets (issue 2): diyopt adam <= 0.7x the seed's torch.optim.Adam loop; gradient_descent <= 1.1x the
seed's hand-written loop; torch.optim.Adam through fit <= 1.1x the seed loop.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diyopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1].parent / "shared" / "anchors"))
from seed_loops import make_data, own_gradient_descent, package_adam  # noqa: E402


def best_us_per_step(fn, steps, repeats):
    fn(50)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(steps)
        times.append(time.perf_counter() - start)
    return min(times) / steps * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    x_np, y_np = make_data(0)
    x, y = torch.tensor(x_np), torch.tensor(y_np)
    loss = lambda p: (y - (p["a"] * x + p["b"])).norm()  # noqa: E731 -- the seed's loss
    # The seed's leaves: torch.randn(1), float32, against float64 data.
    p0 = {"a": torch.randn(1), "b": torch.randn(1)}
    rows = [
        ("diyopt adam vs seed torch.optim.Adam loop", lambda n: package_adam(x_np, y_np, n),
         lambda n: diyopt.fit(loss, p0, diyopt.optim.adam(), n), 0.7),
        ("diyopt gradient_descent vs seed hand loop", lambda n: own_gradient_descent(x_np, y_np, n),
         lambda n: diyopt.fit(loss, p0, diyopt.optim.gradient_descent(lr=1e-3), n), 1.1),
        ("fit(torch.optim.Adam) vs seed torch.optim.Adam loop", lambda n: package_adam(x_np, y_np, n),
         lambda n: diyopt.fit(loss, p0, torch.optim.Adam, n), 1.1),
    ]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"steps={args.steps}, best of {args.repeats}")
    print(f"{'work':<55}{'seed us/step':>13}{'diyopt us/step':>15}{'ratio':>7}{'target':>8}")
    for name, ref, ours, target in rows:
        # Interleave reference and diyopt so load changes on a shared machine hit both alike.
        ref_us = best_us_per_step(ref, args.steps, args.repeats)
        our_us = best_us_per_step(ours, args.steps, args.repeats)
        ratio = our_us / ref_us
        print(f"{name:<55}{ref_us:>13.1f}{our_us:>15.1f}{ratio:>7.2f}{'<=' + str(target):>8}"
              f"  {'ok' if ratio <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
