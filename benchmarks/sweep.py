"""B2: 1,000 seed fits x 4,000 steps (Adam, lr=1e-3, N=100, float64) as one batched run.

Prints, in this run:
  - looping single eager fits (``diyopt.fit``, the eager engine): timed on ``--eager-fits`` fits and
    extrapolated linearly to all runs -- an honest estimate, since each fit is independent and costs
    the same; said so in the output,
  - issue 15's reference for the default engine: a plain broadcast of ``[K, 2]`` params with in-place Adam
    (:func:`plain_broadcast_adam`), alternated with ``engine="vmap"`` (``--reps`` rounds, best of each),
    and target 5's row (<= 0.5 us per fit-step),
  - ``diyopt.sweep(..., engine="compiled")`` (vmap over runs, compiled, chunked) and ``engine="vmap"``
    (eager vmap, timed on ``--vmap-steps`` steps and extrapolated), with the speed-up over the loop
    (goal >= 100x),
  - JAX + optax (jit + vmap over runs of a lax.scan fit) when JAX is installed, and diyopt's ratio to it
    (goal <= 2x).
Starts: seed s is (a, b) = (0, 0) + N(0, 1) drawn with seed s, as ``diyopt.sweep`` documents.
Run: python benchmarks/sweep.py [--runs 1000] [--steps 4000] [--eager-only]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import best_of, jax_or_none, jax_seed_fit, machine, row, target_row

import diyopt
import diyopt.core.starts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--eager-fits", type=int, default=3)
    ap.add_argument("--vmap-steps", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="rounds of the reference and the eager sweep")
    ap.add_argument("--eager-only", action="store_true", help="skip the compiled sweep and JAX")
    args = ap.parse_args()
    runs, steps = args.runs, args.steps
    fit_steps = runs * steps
    print(f"B2 sweep: {runs} seed fits x {steps} steps (Adam lr=1e-3, N=100, float64) -- {machine()}")
    x, y = diyopt.data.make_line(seed=0)
    loss = lambda p: diyopt.losses.l2_norm(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    opt = diyopt.optim.adam(lr=1e-3)

    def start(seed):  # what seed s means in sweep (and compare): diyopt.starts
        return diyopt.core.starts.perturbed(p0, seed)

    t = time.perf_counter()
    for s in range(args.eager_fits):
        diyopt.fit(loss, start(s), opt, steps)
    per_fit = (time.perf_counter() - t) / args.eager_fits
    loop_s = per_fit * runs
    print(
        row(
            f"loop of single eager fits (timed {args.eager_fits}, extrapolated)",
            loop_s,
            "s",
            f"{loop_s / fit_steps * 1e6:.3g} us per fit-step",
        )
    )

    # the default engine and the plain-broadcast reference, on fewer steps, alternated (best of --reps each)
    starts_t = torch.cat([torch.cat([start(s)["a"], start(s)["b"]]).unsqueeze(0) for s in range(runs)])
    ref_times, sweep_times = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        plain_broadcast_adam(x, y, starts_t, args.vmap_steps)
        ref_times.append(time.perf_counter() - t)
        short = diyopt.sweep(loss, p0, opt, args.vmap_steps, seeds=runs, chunk=args.chunk)
        sweep_times.append(short.seconds)
    ref_s, vmap_s = (min(ts) * steps / args.vmap_steps for ts in (ref_times, sweep_times))
    ratios = sorted(a / b for a, b in zip(sweep_times, ref_times))
    print(
        row(
            f"reference: plain broadcast [K, 2], in-place Adam ({args.vmap_steps} steps, extrapolated)",
            ref_s,
            "s",
            f"{ref_s / fit_steps * 1e6:.3g} us per fit-step",
        )
    )
    print(
        row(
            f"diyopt.sweep engine='vmap' ({args.vmap_steps} steps, extrapolated)",
            vmap_s,
            "s",
            f"{loop_s / vmap_s:.0f}x loop; {vmap_s / fit_steps * 1e6:.3g} us per fit-step; "
            f"{vmap_s / ref_s:.2f}x the reference (median of rounds {ratios[len(ratios) // 2]:.2f}x); "
            f"update step: {short.info['update']}",
        )
    )

    target_row(5, "sweep, default engine (eager vmap), us per fit-step", vmap_s / fit_steps * 1e6, 0.5, " us")

    if args.eager_only:
        return
    sweep = diyopt.sweep(loss, p0, opt, steps, seeds=runs, engine="compiled", chunk=args.chunk)
    again = diyopt.sweep(loss, p0, opt, steps, seeds=runs, engine="compiled", chunk=args.chunk)
    comp_s = min(sweep.seconds, again.seconds)
    print(
        row(
            f"diyopt.sweep engine='compiled' (chunk={args.chunk}), warm",
            comp_s,
            "s",
            f"{loop_s / comp_s:.0f}x loop (goal >= 100x); {comp_s / fit_steps * 1e6:.3g} us per fit-step",
        )
    )
    print(row("  compile_seconds (first sweep in this process)", sweep.compile_seconds, "s"))
    single = diyopt.fit(loss, start(7), opt, steps)
    err = float(((sweep.losses[7] - single.losses).abs() / single.losses).max())
    print(f"  check: run 7 vs a single eager fit from seed 7: max relative loss difference {err:.2g}")

    jx = jax_or_none()
    if jx is None:
        print("JAX/optax not installed: skipping the vmap reference")
        return
    jax, jnp, _ = jx
    jfit = jax_seed_fit(jx, x.numpy(), y.numpy(), steps)

    starts = np.random.RandomState(0).randn(runs, 2)
    P = {"a": jnp.asarray(starts[:, 0]), "b": jnp.asarray(starts[:, 1])}
    jsweep = jax.jit(jax.vmap(jfit))
    jax_s = best_of(lambda: jax.block_until_ready(jsweep(P)), reps=3)
    print(
        row(
            "JAX + optax (jit + vmap of lax.scan)",
            jax_s,
            "s",
            f"diyopt compiled / JAX = {comp_s / jax_s:.2f}x (goal <= 2x); "
            f"{jax_s / fit_steps * 1e6:.3g} us per fit-step",
        )
    )
    target_row(
        5, "sweep, compiled engine (compile included) vs JAX vmap", (comp_s + sweep.compile_seconds) / jax_s, 0.5
    )


def plain_broadcast_adam(x, y, starts, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Issue 15's reference for the eager sweep: every run's (a, b) as one ``[K, 2]`` tensor, the seed's
    loss broadcast over runs, one backward of the summed losses, and torch.optim.Adam's update in place
    (``m``, ``v`` and the params written by ``lerp_``, ``addcmul_``, ``addcdiv_``). No guard, no record."""
    p = starts.clone().requires_grad_()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t in range(1, steps + 1):
        losses = (y - (p[:, :1] * x + p[:, 1:])).norm(dim=1)
        (g,) = torch.autograd.grad(losses.sum(), p)
        with torch.no_grad():
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(math.sqrt(1 - b2**t)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**t))
    return p.detach()


if __name__ == "__main__":
    main()
