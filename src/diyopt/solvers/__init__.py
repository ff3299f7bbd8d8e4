"""Methods that use the loss itself, not only its gradient: L-BFGS, Newton, least squares, curve_fit.

:mod:`~diyopt.solvers.stats` holds the statistics of a fit (Jacobians, covariance, standard errors).
"""

from ._lbfgs import lbfgs
from ._least_squares import CurveFit, curve_fit, least_squares, robust_loss
from ._newton import newton

__all__ = [
    "CurveFit",
    "curve_fit",
    "lbfgs",
    "least_squares",
    "newton",
    "robust_loss",
]
