"""Losses on predictions: plain functions ``loss(pred, target) -> scalar Tensor``.

Any callable of that shape works wherever a loss is asked for; these are the named ones
(``diyopt.losses.get("huber")``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diyopt.errors import unknown_name

Loss = Callable[[Tensor, Tensor], Tensor]


def l2_norm(pred: Tensor, target: Tensor) -> Tensor:
    r"""The seed's loss, ``(target - pred).norm()``: :math:`\sqrt{\sum_i (y_i - \hat y_i)^2}`."""
    return (target - pred).norm()


def mse(pred: Tensor, target: Tensor) -> Tensor:
    r"""Mean squared error :math:`\frac1n \sum_i (y_i - \hat y_i)^2`."""
    return (target - pred).square().mean()


def sse(pred: Tensor, target: Tensor) -> Tensor:
    r"""Sum of squared errors :math:`\sum_i (y_i - \hat y_i)^2` (least squares; decomposes over shards)."""
    return (target - pred).square().sum()


def mae(pred: Tensor, target: Tensor) -> Tensor:
    r"""Mean absolute error :math:`\frac1n \sum_i |y_i - \hat y_i|`."""
    return (target - pred).abs().mean()


def huber(pred: Tensor, target: Tensor, delta: float = 1.0) -> Tensor:
    r"""Mean Huber loss: :math:`\frac12 r^2` for :math:`|r| \le \delta`, else :math:`\delta(|r| - \frac12\delta)`.

    Equal to ``torch.nn.functional.huber_loss``.
    """
    return torch.nn.functional.huber_loss(pred, target, delta=delta)


_LOSSES: dict[str, Loss] = {"l2_norm": l2_norm, "mse": mse, "sse": sse, "mae": mae, "huber": huber}


def names() -> list[str]:
    """The registered loss names."""
    return sorted(_LOSSES)


def get(name: str) -> Loss:
    """A loss by name; an unknown name raises ``ValueError`` suggesting the closest."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(unknown_name("loss", name, _LOSSES)) from None


def register(name: str, fn: Loss) -> Loss:
    """Add a loss to the registry, for the CLI and specs."""
    _LOSSES[name] = fn
    return fn
