"""B1: the seed fit (Adam, lr=1e-3, 4,000 steps, N=100, float64), per step, warm and cold.

Prints, measured in this run:
  - the seed's torch.optim.Adam loop (``../shared/anchors/seed_loops.py``; a copy below if absent),
  - diyopt's eager engine and its compiled engine (``fit(..., engine="compiled")``, warm: compiled graphs
    in memory), with the speed-up over the seed loop (goal >= 25x),
  - JAX + optax (jit + lax.scan over the steps) when JAX is installed, and diyopt's ratio to it,
  - cold start: a fresh process that imports diyopt and runs the compiled fit, once with an empty Inductor
    cache (goal <= 10 s) and once reusing that cache (a second process).
Run: python benchmarks/compiled_fit.py [--steps 4000] [--chunk N] [--no-cold]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from common import ANCHORS, best_of, jax_or_none, jax_seed_fit, machine, row, target_row

import diyopt


def seed_adam_loop(x_data, y_data, epoch):
    """The seed's packaged Adam loop (as in ../shared/anchors/seed_loops.py)."""
    spec = ANCHORS / "seed_loops.py"
    if spec.exists():
        s = importlib.util.spec_from_file_location("seed_loops", spec)
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
        return mod.package_adam(x_data, y_data, epoch)
    a = torch.randn(1, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    x_train, y_train = torch.tensor(x_data), torch.tensor(y_data)
    optimizer = torch.optim.Adam([a, b])
    loss_epoch = np.zeros(epoch)
    for i in range(epoch):
        optimizer.zero_grad()
        loss = (y_train - (a * x_train + b)).norm()
        loss_epoch[i] = loss.item()
        loss.backward()
        optimizer.step()
    return a.item(), b.item(), loss_epoch


COLD = r"""
import time, json, sys
t0 = time.perf_counter()
import torch, diyopt
x, y = diyopt.data.make_line(seed=0)
loss = lambda p: diyopt.losses.l2_norm(p["a"] * x + p["b"], y)
p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
r = diyopt.fit(loss, p0, diyopt.optim.adam(lr=1e-3), STEPS, engine="compiled", chunk=CHUNK)
print(json.dumps({"total_s": time.perf_counter() - t0, "compile_s": r.compile_seconds,
                  "loop_s": r.seconds, "a": r.params["a"].item()}))
"""


def cold_start(steps: int, chunk: int, cache_dir: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    code = COLD.replace("STEPS", str(steps)).replace("CHUNK", str(chunk))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--chunk", type=int, default=None, help="steps per compiled call (default: the engine's)")
    ap.add_argument("--no-cold", action="store_true")
    args = ap.parse_args()
    steps = args.steps
    print(f"B1 seed fit: Adam lr=1e-3, {steps} steps, N=100, float64 -- {machine()}")
    rng = np.random.RandomState(0)
    x_np = 2 * rng.rand(100)
    y_np = -x_np + 1 + 0.1 * rng.randn(100)

    seed_s = best_of(lambda: seed_adam_loop(x_np, y_np, steps), reps=3)
    seed_us = seed_s / steps * 1e6
    print(row("seed loop (torch.optim.Adam, .item() per step)", seed_us, "us/step"))

    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    loss = lambda p: diyopt.losses.l2_norm(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    opt = diyopt.optim.adam(lr=1e-3)
    eager_s = best_of(lambda: diyopt.fit(loss, p0, opt, steps), reps=3, warmup=0)
    print(row("diyopt eager engine", eager_s / steps * 1e6, "us/step", f"{seed_s / eager_s:.1f}x seed"))

    first = diyopt.fit(loss, p0, opt, steps, engine="compiled", chunk=args.chunk)
    runs = [diyopt.fit(loss, p0, opt, steps, engine="compiled", chunk=args.chunk).seconds for _ in range(5)]
    comp_us = min(runs) / steps * 1e6
    print(
        row(
            f"diyopt compiled engine, warm (chunk={first.info['chunk']})",
            comp_us,
            "us/step",
            f"{seed_us / comp_us:.1f}x seed (goal >= 25x)",
        )
    )
    print(row("  compile_seconds of the first fit in this process", first.compile_seconds, "s"))

    jx = jax_or_none()
    if jx is None:
        print("JAX/optax not installed: skipping the lax.scan reference (pip install jax jaxlib optax)")
    else:
        jax, jnp, _ = jx
        jfit = jax_seed_fit(jx, x_np, y_np, steps)

        single = jax.jit(jfit)
        jp0 = {"a": jnp.array(0.0), "b": jnp.array(0.0)}
        jax_s = best_of(lambda: jax.block_until_ready(single(jp0)), reps=5)
        jax_us = jax_s / steps * 1e6
        print(
            row("JAX + optax (jit + lax.scan)", jax_us, "us/step", f"diyopt compiled / JAX = {comp_us / jax_us:.2f}x")
        )
        target_row(3, "compiled seed fit, warm, vs JAX + optax lax.scan", comp_us / jax_us, 1.0)

    if not args.no_cold:
        with tempfile.TemporaryDirectory() as cache:
            cold = cold_start(steps, args.chunk, cache)
            warm = cold_start(steps, args.chunk, cache)
        print(
            row(
                "cold start, empty Inductor cache (process start..exit)",
                cold["total_s"],
                "s",
                f"compile {cold['compile_s']:.2f} s (goal total <= 10 s)",
            )
        )
        print(
            row(
                "second process, reusing the on-disk cache",
                warm["total_s"],
                "s",
                f"compile {warm['compile_s']:.2f} s ({cold['total_s'] / warm['total_s']:.1f}x faster start)",
            )
        )
        target_row(3, "compiled seed fit, cold Inductor cache, process start to exit", cold["total_s"], 10.0, " s")
        target_row(3, "compiled seed fit, second process (cache warm), start to exit", warm["total_s"], 3.0, " s")


if __name__ == "__main__":
    main()
