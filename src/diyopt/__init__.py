"""diyopt: write the loss and the update rule yourself; autograd supplies the gradients.

The public names, one per line. Everything else is an implementation detail.
"""
from . import checkpoint, data, distributed, losses, nist, optim, problems, schedules, starts, stats, transforms
from .batched import SweepResult, sweep
from .benchmarking import bench
from .check import check, check_loss
from .compare import Comparison, compare
from .core import Optimizer, apply_updates, chain, configurable, elementwise
from .fit import DivergedError, Result, fit
from .lbfgs import lbfgs
from .least_squares import CurveFit, curve_fit, least_squares
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
