"""Shared helpers for the benchmark scripts: best-of-N timing and the optional JAX import.

Timings on a shared or small machine are noisy: every script reports the *best* of several repetitions
and prints the reference and diyopt measured in the same run, with their ratio.
"""

from __future__ import annotations

import importlib.util
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors"


def best_of(fn, reps: int = 5, warmup: int = 1) -> float:
    """The fastest of ``reps`` timed calls, in seconds, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def round_robin(fns: dict, reps: int = 10, warmup: int = 2) -> dict:
    """Time every function once per round, ``reps`` rounds: ``{name: [seconds per round]}``.

    Interleaving puts every contender under the same machine state (load, caches, memory placement), so
    per-round ratios are steadier than comparing bests taken minutes apart.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def median_ratio(times: list, reference: list) -> float:
    """The median over rounds of ``times[i] / reference[i]``."""
    ratios = sorted(t / r for t, r in zip(times, reference))
    return ratios[len(ratios) // 2]


def jax_or_none():
    """``(jax, jax.numpy, optax)`` with float64 enabled, or None when JAX is not installed."""
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
        return None
    import jax
    import jax.numpy as jnp
    import optax

    jax.config.update("jax_enable_x64", True)
    return jax, jnp, optax


def machine() -> str:
    import os

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def row(name: str, value: float, unit: str, ratio: str = "") -> str:
    return f"{name:<52} {value:>12.4g} {unit:<12} {ratio}"


def jax_seed_fit(jx, x, y, steps: int, lr: float = 1e-3):
    """The seed's Adam fit in JAX + optax as one ``lax.scan`` (the reference of B1 and, vmapped, of B2):
    ``fit(params) -> (params, losses)``, not yet jitted."""
    jax, jnp, optax = jx
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    opt = optax.adam(lr)

    def loss(p):
        return jnp.linalg.norm(yj - (p["a"] * xj + p["b"]))

    def fit(p):
        def step(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        (p, _), values = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        return p, values

    return fit


def target_row(target: int, what: str, value: float, goal: float, unit: str = "x") -> bool:
    """Print one row of issue 15's target table and return whether it is met (``value <= goal``).

    The line starts with ``TARGET``: ``benchmarks/run_all.py`` (``make bench``) collects these lines from every
    script into one table. ``value`` is NaN when it could not be measured (printed as "not measured").
    """
    import math

    met = value <= goal
    # ratios with three decimals: a 1.0004x median must not print as "1x ... missed"
    shown = "n/a" if math.isnan(value) else (f"{value:.3f}x" if unit == "x" else f"{value:.3g}{unit}")
    verdict = "not measured" if math.isnan(value) else ("met" if met else "missed")
    print(f"TARGET {target} | {what} | {shown} | <= {goal:g}{unit} | {verdict}", flush=True)
    return met
