"""B3: one optimizer step on 10M float32 parameters in 80 tensors, a user's Adam compiled vs torch's fused.

Sizes [1_000_000]*8 + [250_000]*8 + [1000]*64 (as ../shared/anchors/optax_seed.py). Prints, in this run:
  - torch.optim.Adam(fused=True) and (foreach=True) steps,
  - the user's Adam from examples/my_adam.py (an ``elementwise`` rule in a file, not diyopt's built-in)
    through ``diyopt.engines.compiled_update`` (update + apply, compiled, in place), ratio to fused (goal
    <= 1.1x),
  - ``adam_as_in_the_paper`` from the same file, Algorithm 1 written literally (bias corrections divide
    m and v: 3 divisions per element instead of 2), through ``compiled_update``,
  - examples/my_adam.py through ``diyopt.to_torch(..., compiled=True)`` (a real torch.optim.Optimizer),
  - achieved memory bandwidth: Adam reads p, g, m, v and writes p, m, v (7 x 4 bytes per parameter); a
    plain ``copy_`` moving the same number of bytes is the physical limit here,
  - JAX + optax (jit, donated buffers) when JAX is installed.
Run: python benchmarks/big_step.py [--reps 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch
from common import ROOT, best_of, jax_or_none, machine, median_ratio, round_robin, row, target_row

import diyopt
from diyopt.engines.compiled import compiled_update, tensor_hyperparams

SIZES = [1_000_000] * 8 + [250_000] * 8 + [1000] * 64


def load_user_adams():
    """``my_adam`` and ``adam_as_in_the_paper`` from examples/my_adam.py."""
    spec = importlib.util.spec_from_file_location("my_adam", ROOT / "examples" / "my_adam.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["my_adam"] = mod  # torch.compile looks the rule's globals up by module name
    spec.loader.exec_module(mod)
    return mod.my_adam, mod.adam_as_in_the_paper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    n = sum(SIZES)
    print(f"B3 one Adam step, {n / 1e6:.1f}M float32 params in {len(SIZES)} tensors -- {machine()}")
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in SIZES]
    grads = [torch.randn(s, generator=gen) for s in SIZES]

    steps = {}
    for name, kwargs in [
        ("torch.optim.Adam(fused=True)", {"fused": True}),
        ("torch.optim.Adam(foreach=True)", {"foreach": True}),
    ]:
        ps = [p.clone().requires_grad_() for p in init]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        steps[name] = torch.optim.Adam(ps, lr=1e-3, **kwargs).step

    my_adam, adam_as_in_the_paper = load_user_adams()
    named_grads = {f"p{i}": g for i, g in enumerate(grads)}
    for name, rule in [
        ("user Adam (examples/my_adam.py), compiled_update", my_adam),
        ("  adam_as_in_the_paper (3 divisions per element), compiled_update", adam_as_in_the_paper),
    ]:
        opt = tensor_hyperparams(rule(lr=1e-3), init[0])
        params = {f"p{i}": p.clone() for i, p in enumerate(init)}
        step_, state = compiled_update(opt), opt.init(params)
        steps[name] = lambda step_=step_, params=params, state=state: step_(params, named_grads, state)

    ps = [p.clone().requires_grad_() for p in init]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    steps["user Adam via to_torch(compiled=True)"] = diyopt.to_torch(my_adam(lr=1e-3), ps, compiled=True).step

    times = round_robin(steps, reps=args.reps)
    fused_times = times["torch.optim.Adam(fused=True)"]
    fused, t_user = min(fused_times), min(times["user Adam (examples/my_adam.py), compiled_update"])
    print("(ratio: median over rounds; each round times every contender once, in turn)")
    for name, ts in times.items():
        goal = " (goal <= 1.1x)" if name.startswith("user Adam (examples") else ""
        print(row(name, min(ts) * 1e3, "ms", f"{median_ratio(ts, fused_times):.2f}x fused{goal}"))
        if name.startswith("user Adam (examples") or "to_torch" in name:
            target_row(2, f"{name} vs Adam(fused=True)", median_ratio(ts, fused_times), 1.0)

    moved = 7 * 4 * n  # bytes: read p, g, m, v; write p, m, v
    src = torch.randn(moved // 8, generator=gen)
    dst = torch.empty_like(src)
    t_copy = best_of(lambda: dst.copy_(src), reps=args.reps, warmup=2)  # reads + writes `moved` bytes
    print(
        row(
            f"plain copy_ of the same {moved / 1e6:.0f} MB moved",
            t_copy * 1e3,
            "ms",
            f"{moved / t_copy / 1e9:.1f} GB/s",
        )
    )
    for name, t in [("fused", fused), ("user Adam compiled", t_user)]:
        print(row(f"  achieved bandwidth, {name}", moved / t / 1e9, "GB/s", f"{t_copy / t:.0%} of copy"))

    jx = jax_or_none()
    if jx is not None:
        jax, jnp, optax = jx
        jp = [jax.random.normal(jax.random.PRNGKey(i), (s,), dtype=jnp.float32) for i, s in enumerate(SIZES)]
        jg = [jax.random.normal(jax.random.PRNGKey(1000 + i), (s,), dtype=jnp.float32) for i, s in enumerate(SIZES)]
        big = optax.adam(1e-3)

        def big_step(p, s):
            u, s = big.update(jg, s, p)
            return optax.apply_updates(p, u), s

        jstep = jax.jit(big_step, donate_argnums=(0, 1))
        holder = [jp, big.init(jp)]

        def run():
            holder[0], holder[1] = jstep(holder[0], holder[1])
            jax.block_until_ready(holder[0])

        t_jax = best_of(run, reps=args.reps, warmup=2)
        print(row("JAX + optax (jit, donated)", t_jax * 1e3, "ms", f"user Adam compiled / JAX = {t_user / t_jax:.2f}x"))


if __name__ == "__main__":
    main()
