"""TODO docstring."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor


def as_params(params: Any) -> Params:
    """Accept a dict of tensors or an ``nn.Module``; return an ordered dict of detached tensors."""
    if isinstance(params, torch.nn.Module):
        return {k: v.detach().clone() for k, v in params.named_parameters()}
    if isinstance(params, Mapping):
        out = {}
        for k, v in params.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"parameter {k!r} must be a Tensor, got {type(v).__name__}")
            if not v.is_floating_point():
                raise TypeError(f"parameter {k!r} must be floating point, got {v.dtype}")
            out[str(k)] = v.detach().clone()
        if not out:
            raise ValueError("params is empty: give at least one tensor to optimize")
        return out
    raise TypeError(f"params must be a dict of tensors or an nn.Module, got {type(params).__name__}")


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of a state tree (tuples, NamedTuples, dicts, lists)."""
    return torch.utils._pytree.tree_map(lambda x: fn(x) if isinstance(x, Tensor) else x, tree)


def tree_leaves(tree: Any) -> list:
    return torch.utils._pytree.tree_leaves(tree)


class FlatLayout:
    """Named views into one flat buffer: ``unflatten(flatten(p)) == p``, views share the buffer's memory."""

    def __init__(self, params: Params):
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]

    @classmethod
    def maybe(cls, params: Params) -> FlatLayout | None:
        """A layout when the params can share one buffer (same dtype and device), else None."""
        first = next(iter(params.values()))
        if all(p.dtype == first.dtype and p.device == first.device for p in params.values()):
            return cls(params)
        return None

    def flatten(self, params: Params) -> Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def leaves(self, flat: Tensor) -> Params:
        """Named views of ``flat``, each a fresh autograd leaf (the buffer itself needs no grad)."""
        chunks = flat.detach().split_with_sizes(self.sizes)  # not Tensor.split: a Python wrapper around it
        # a 1-D param's chunk already has its shape: no view op (a visible share of a tiny fit's step)
        return {
            n: (c if len(s) == 1 else c.view(s)).requires_grad_() for n, c, s in zip(self.names, chunks, self.shapes)
        }

    def join(self, tensors) -> Tensor:
        """One flat tensor from per-name tensors in the layout's order."""
        return torch.cat([t if t.dim() == 1 else t.reshape(-1) for t in tensors])

    def unflatten(self, flat: Tensor) -> Params:
        """Named views of one flat tensor, in the layout's order and shapes."""
        chunks = flat.split(self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}


Params = dict[str, Tensor]


LossFn = Callable[[Params], Tensor]
