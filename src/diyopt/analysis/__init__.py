"""Judging optimizers: compare, conformance checks, performance profiles, figures, the HTML report, the
demo and the benchmark suite (:mod:`~diyopt.analysis.benchmarking`).
"""

from ._compare import (
    Comparison,
    compare,
    compare_all,
    save_all,
)
from ._conformance import check, check_loss
from ._lockstep import (
    LockstepReport,
    lockstep,
)
from .benchmarking import bench
from .profiles import performance_profile

__all__ = [
    "lockstep",
    "compare_all",
    "save_all",
    "Comparison",
    "bench",
    "check",
    "check_loss",
    "compare",
    "lockstep",
    "LockstepReport",
    "performance_profile",
]
