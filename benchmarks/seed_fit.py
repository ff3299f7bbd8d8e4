"""The seed fit, per step: the seed's own two loops vs diyopt's eager `fit` doing the same work.

Run:  python benchmarks/seed_fit.py [--steps 4000] [--repeats 5]
Prints microseconds per step (best of --repeats) and the median of paired ratios diyopt / seed (lower is
better; each pair is timed back to back).
Targets (issue 2): diyopt adam <= 0.7x the seed's torch.optim.Adam loop; gradient_descent <= 1.1x the
seed's hand-written loop; torch.optim.Adam through fit <= 1.1x the seed loop.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from common import target_row

import diyopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1].parent / "shared" / "anchors"))
from seed_loops import make_data, own_gradient_descent, package_adam  # noqa: E402


def seconds(fn, steps):
    start = time.perf_counter()
    fn(steps)
    return time.perf_counter() - start


def paired(ref, ours, steps, repeats):
    """Reference and diyopt timed in alternation, so a load change on a shared machine hits both alike.

    Returns (best reference us/step, best diyopt us/step, median of the per-pair ratios).
    """
    ref(50), ours(50)  # warm-up
    pairs = [(seconds(ref, steps), seconds(ours, steps)) for _ in range(repeats)]
    ratios = sorted(o / r for r, o in pairs)
    return (min(r for r, _ in pairs) / steps * 1e6, min(o for _, o in pairs) / steps * 1e6, ratios[len(ratios) // 2])


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
        (
            "diyopt adam vs seed torch.optim.Adam loop",
            lambda n: package_adam(x_np, y_np, n),
            lambda n: diyopt.fit(loss, p0, diyopt.optim.adam(), n),
            0.7,
        ),
        (
            "diyopt gradient_descent vs seed hand loop",
            lambda n: own_gradient_descent(x_np, y_np, n),
            lambda n: diyopt.fit(loss, p0, diyopt.optim.gradient_descent(lr=1e-3), n),
            1.1,
        ),
        (
            "fit(torch.optim.Adam) vs seed torch.optim.Adam loop",
            lambda n: package_adam(x_np, y_np, n),
            lambda n: diyopt.fit(loss, p0, torch.optim.Adam, n),
            1.1,
        ),
    ]
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"steps={args.steps}, best of {args.repeats}"
    )
    print(f"{'work':<55}{'seed us/step':>13}{'diyopt us/step':>15}{'ratio':>7}{'target':>8}  (ratio: median of pairs)")
    for name, ref, ours, target in rows:
        ref_us, our_us, ratio = paired(ref, ours, args.steps, args.repeats)
        print(
            f"{name:<55}{ref_us:>13.1f}{our_us:>15.1f}{ratio:>7.2f}{'<=' + str(target):>8}"
            f"  {'ok' if ratio <= target else 'MISSED'}"
        )
        if not name.startswith("fit(torch.optim"):  # issue 15's target 4 (guard on, the default)
            target_row(4, f"eager fit, {name}", ratio, target)


if __name__ == "__main__":
    main()
