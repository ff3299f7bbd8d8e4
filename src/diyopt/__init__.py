"""diyopt: write the loss and the update rule yourself; autograd supplies the gradients.

The public names, one per line. Everything else is an implementation detail.
"""
from . import data
from . import losses
from . import optim
from . import plots
from . import problems
from . import transforms
from .core import Optimizer
from .core import apply_updates
from .core import chain
from .core import configurable
from .core import elementwise
from .fit import Result
from .fit import fit

__version__ = "0.1.0"

__all__ = [
    "Optimizer",
    "Result",
    "apply_updates",
    "chain",
    "configurable",
    "data",
    "elementwise",
    "fit",
    "losses",
    "optim",
    "plots",
    "problems",
    "transforms",
]
