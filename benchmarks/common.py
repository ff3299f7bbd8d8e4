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

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def row(name: str, value: float, unit: str, ratio: str = "") -> str:
    return f"{name:<52} {value:>12.4g} {unit:<12} {ratio}"
