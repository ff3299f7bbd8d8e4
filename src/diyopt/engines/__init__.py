"""How a step runs: the eager loop (the reference), torch.optim classes, the compiled loop, the batched
sweep, ``to_torch``; checkpoints and ``torch.distributed`` support.

Public modules: :mod:`~diyopt.engines.checkpoint`, :mod:`~diyopt.engines.distributed`,
:mod:`~diyopt.engines.compiled`, :mod:`~diyopt.engines.hoisting`.
"""

from ._extended import engine_update
from ._fit import fit
from ._sweep import SweepResult, sweep
from ._to_torch import TorchOptimizer, to_torch
from .compiled import compiled_update

__all__ = [
    "SweepResult",
    "TorchOptimizer",
    "compiled_update",
    "engine_update",
    "fit",
    "sweep",
    "to_torch",
]
