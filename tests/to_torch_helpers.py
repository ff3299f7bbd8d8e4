"""Shared pieces of the ``to_torch`` engine tests (tests/test_to_torch_kernels.py, test_to_torch_rule_engine.py):
a group of small params, a fixed gradient per step, and a relative comparison."""

from __future__ import annotations

import torch


def start_params(dtype: torch.dtype, n: int = 4) -> list[torch.Tensor]:
    """``n`` params of 7, 8, ... elements, the same for every call."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(7 + k, generator=g, dtype=dtype) for k in range(n)]


def step_grads(step: int, dtype: torch.dtype, n: int = 4) -> list[torch.Tensor]:
    """The gradients of step ``step`` for :func:`start_params`' shapes, the same for every call."""
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(7 + k, generator=g, dtype=dtype) for k in range(n)]


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Elementwise error relative to the element plus the tensor's largest magnitude (so a value near zero
    is not held to a relative error its rounding cannot meet)."""
    scale = expected.abs() + expected.abs().max()
    worst = float(((actual - expected).abs() / scale).max())
    assert worst <= tol, f"{what}: relative error {worst:.3g} > {tol}"
