r"""The start and the end every solver shares: an ``nn.Module`` bound as ``fit`` binds it, the params as one
flat vector (float64, or the params' own dtype where the solver keeps it), and the answer put back.

A solver works on :math:`x \in \mathbb{R}^n`, the params flattened in their order; ``start.fn`` takes
the params dict, so a solver calls it as ``start.fn(start.layout.unflatten(x))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.modules import bind_module, load_into
from diyopt.core.tree import FlatLayout, Params, as_params


class Start(NamedTuple):
    """Where a solver starts from (:func:`start_from`)."""

    fn: Callable[[Params], Tensor]  # the loss (residuals) of a params dict; a module's is bound to it
    params: Params  # the starting params, detached copies (float64 unless the solver keeps the dtype)
    layout: FlatLayout  # params <-> the flat vector
    x: Tensor  # the flat start
    module: torch.nn.Module | None  # the module fitted, which holds the answer afterwards

    def finish(self, x: Tensor) -> Params:
        """The params at the flat ``x`` (a copy); a fitted module is loaded with them, as in ``fit``."""
        params = self.layout.unflatten(x.detach().clone())
        if self.module is not None:
            load_into(self.module, params)
        return params


def start_from(
    fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor] | torch.nn.Module,
    *,
    float64: bool = True,
    solver: str = "the solver",
) -> Start:
    """Bind a module (the loss may call it or close over it, as in ``fit``) and flatten the params.

    ``float64=True``: the params are cast to float64 (a float32 module computes in its own dtype, see
    :func:`~diyopt.core.modules.bind_module`); ``False``: they keep their dtype, which they must share
    (``TypeError`` naming ``solver`` otherwise)."""
    module = params if isinstance(params, torch.nn.Module) else None
    if module is not None:
        fn, params = bind_module(fn, module)
    params = as_params(params)
    if float64:
        params = {k: v.to(torch.float64) for k, v in params.items()}
        layout = FlatLayout(params)
    else:
        layout = FlatLayout.maybe(params)
        if layout is None:
            raise TypeError(f"{solver} needs all params to share one dtype and device")
    return Start(fn, params, layout, layout.flatten(params), module)
