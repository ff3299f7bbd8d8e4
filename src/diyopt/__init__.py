"""diyopt: write the loss and the update rule yourself; autograd supplies the gradients.

The public names, one per line. Everything else is an implementation detail.
"""
from . import checkpoint
from . import data
from . import distributed
from . import losses
from . import nist
from . import optim
from . import problems
from . import schedules
from . import starts
from . import stats
from . import transforms
from .compare import Comparison
from .compare import compare
from .batched import SweepResult
from .batched import sweep
from .benchmarking import bench
from .check import check
from .check import check_loss
from .core import Optimizer
from .core import apply_updates
from .core import chain
from .core import configurable
from .core import elementwise
from .fit import DivergedError
from .fit import Result
from .fit import fit
from .least_squares import CurveFit
from .least_squares import curve_fit
from .lbfgs import lbfgs
from .least_squares import least_squares
from .profiles import performance_profile
from .solvers import newton
from .torch_optim import to_torch

__version__ = "0.1.0"


def __getattr__(name: str):
    # matplotlib costs half a second to import: load diyopt.plots only when it is first used.
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module 'diyopt' has no attribute {name!r}")

__all__ = [
    "Comparison",
    "CurveFit",
    "DivergedError",
    "Optimizer",
    "Result",
    "SweepResult",
    "apply_updates",
    "bench",
    "chain",
    "check",
    "check_loss",
    "checkpoint",
    "compare",
    "configurable",
    "curve_fit",
    "data",
    "distributed",
    "elementwise",
    "fit",
    "lbfgs",
    "least_squares",
    "losses",
    "newton",
    "nist",
    "optim",
    "performance_profile",
    "plots",
    "problems",
    "schedules",
    "starts",
    "stats",
    "sweep",
    "to_torch",
    "transforms",
]
