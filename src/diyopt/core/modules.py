"""Fitting an ``nn.Module``: the loss sees the fit's parameters *inside* the module.

``fit(loss_fn, model, ...)`` optimizes the module's trainable parameters (``requires_grad=True``) as a
``dict[str, Tensor]`` like any other params. So that every way of writing the loss trains them, each
call ``loss_fn(p)`` runs with the module's parameters swapped for the fit's tensors
(``torch.func.functional_call``, which also works under ``torch.compile`` and ``vmap``):

- ``lambda p: mse(model(x), y)`` -- the loss closes over the module and calls it;
- ``lambda m: mse(m(x), y)`` -- it calls what it is given: ``p`` is a :class:`ModuleParams`, the dict of
  the fit's tensors that also calls the module (``m(x)``) and reads its attributes (``m.fc1``);
- ``lambda p: mse(functional_call(model, p, (x,)), y)`` or ``p["weight"]`` -- the dict style.

After the fit the module holds the fitted parameters (:func:`load_into`); the module's own parameters
are otherwise untouched, and frozen ones (``requires_grad=False``) are neither optimized nor swapped.
``fit``, ``sweep`` (which leaves the module as it was), ``lbfgs``, ``newton`` and ``least_squares`` all
take a module this way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from diyopt.core.tree import Params, as_params


class ModuleParams(dict):
    """The fit's parameters of a module by name, and the module itself: ``p(x)`` calls the module, ``p.fc1``
    is its attribute. Inside ``loss_fn`` the module's parameters *are* these tensors."""

    def __init__(self, module: torch.nn.Module, leaves: Mapping[str, Tensor]):
        super().__init__(leaves)
        self._module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "_module":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._module, name)


class _LossOf(torch.nn.Module):
    """A module whose forward is ``loss_fn`` on the user's module: ``functional_call`` on it swaps the
    user's module's parameters for the fit's for the whole loss, wherever the loss reaches the module."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, leaves: Params) -> Tensor:
        return self.loss_fn(ModuleParams(self.module, leaves))


def bind_module(loss_fn: Callable, module: torch.nn.Module) -> tuple[Callable[[Params], Tensor], Params]:
    """``(loss, params)``: ``loss(params)`` is ``loss_fn`` run with ``module``'s parameters set to ``params``
    (the module's trainable parameters, detached copies)."""
    trainable = {k: v for k, v in module.named_parameters() if v.requires_grad}
    if not trainable:
        raise ValueError(
            f"the {type(module).__name__} has no trainable parameters (all have requires_grad=False): nothing to fit"
        )
    params = as_params(trainable)
    dtypes = {k: v.dtype for k, v in params.items()}
    bound = _LossOf(module, loss_fn)

    def loss(leaves: Params) -> Tensor:
        # Solvers that work in float64 (least_squares, newton) hand a float32 module float64 tensors: the
        # module computes in its own dtype (a differentiable cast), as its inputs expect.
        inside = {"module." + k: v if v.dtype == dtypes[k] else v.to(dtypes[k]) for k, v in leaves.items()}
        return torch.func.functional_call(bound, inside, (leaves,))

    return loss, params


def load_into(module: torch.nn.Module, params: Params) -> None:
    """Copy fitted ``params`` into ``module``'s parameters of the same names, in place."""
    with torch.no_grad():
        for k, v in params.items():
            module.get_parameter(k).copy_(v)
