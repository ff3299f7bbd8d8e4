"""The contract every optimizer keeps, and the small tree utilities everything else uses.

- :mod:`~diyopt.core.contract` -- ``Optimizer(init, update)``, ``chain``, ``elementwise``, ``apply_updates``;
- :mod:`~diyopt.core.tree` -- params as ``dict[str, Tensor]``, tree maps, the flat-buffer layout;
- :mod:`~diyopt.core.result` -- ``Result``, what every engine and solver returns;
- :mod:`~diyopt.core.checks` -- checks of a loss, its gradients and an update (first step, divergence guard);
- :mod:`~diyopt.core.modules` -- running a loss through an ``nn.Module`` with the fit's tensors;
- :mod:`~diyopt.core.linesearch` -- the strong-Wolfe line search and the L-BFGS two-loop recursion.
"""

from .contract import (
    EXTRA_ARGS,
    Optimizer,
    State,
    apply_updates,
    chain,
    configurable,
    elementwise,
    eval_params,
)
from .result import Result
from .tree import (
    FlatLayout,
    Params,
    as_params,
    tree_leaves,
    tree_map,
)

__all__ = [
    "EXTRA_ARGS",
    "FlatLayout",
    "Optimizer",
    "Params",
    "Result",
    "State",
    "apply_updates",
    "as_params",
    "chain",
    "configurable",
    "elementwise",
    "eval_params",
    "tree_leaves",
    "tree_map",
]
