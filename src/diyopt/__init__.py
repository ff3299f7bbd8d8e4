"""diyopt: write the loss and the update rule yourself; autograd supplies the gradients.

The public names, one per line. Everything else is an implementation detail. The folders, and which way
the imports go, are drawn in the README's layout section.
"""

from diyopt import (
    optim,
    problems,
    schedules,
    transforms,
)
from diyopt.analysis import (
    Comparison,
    bench,
    check,
    check_loss,
    compare,
    performance_profile,
)
from diyopt.core import (
    Optimizer,
    Result,
    apply_updates,
    chain,
    configurable,
    elementwise,
    eval_params,
    starts,
)
from diyopt.engines import (
    SweepResult,
    checkpoint,
    distributed,
    fit,
    sweep,
    to_torch,
)
from diyopt.errors import (
    DivergedError,
)
from diyopt.problems import (
    data,
    losses,
)
from diyopt.problems import (
    strd as nist,
)
from diyopt.solvers import (
    CurveFit,
    curve_fit,
    lbfgs,
    least_squares,
    newton,
    stats,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # matplotlib costs half a second to import: load the figures module only when diyopt.plots is used.
    if name == "plots":
        import importlib

        return importlib.import_module("diyopt.analysis.figures")
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
    "eval_params",
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
