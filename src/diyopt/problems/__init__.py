"""Problems with known answers: classic test functions, regression, NIST StRD, user CSV files.

``get("rosenbrock:dim=4")`` builds one from a spec; ``names()`` lists them. Public modules:
:mod:`~diyopt.problems.losses`, :mod:`~diyopt.problems.data`, :mod:`~diyopt.problems.strd` (NIST StRD
files), :mod:`~diyopt.problems.expressions` (model formulas), :mod:`~diyopt.core.starts`.
"""

from ._classic import (
    beale,
    booth,
    himmelblau,
    line,
    quadratic,
    rosenbrock,
)
from ._problem import NistProblem, Problem
from ._registry import (
    PROBLEMS,
    arguments,
    as_problem,
    checked_arguments,
    describe,
    get,
    names,
    parse_spec,
    register,
    start_point,
)
from ._regression import (
    breast_cancer,
    csv,
    logistic,
    nist,
    polynomial,
)

__all__ = [
    "PROBLEMS",
    "arguments",
    "as_problem",
    "start_point",
    "beale",
    "booth",
    "breast_cancer",
    "checked_arguments",
    "csv",
    "describe",
    "get",
    "himmelblau",
    "line",
    "logistic",
    "names",
    "nist",
    "NistProblem",
    "parse_spec",
    "polynomial",
    "Problem",
    "quadratic",
    "register",
    "rosenbrock",
]
