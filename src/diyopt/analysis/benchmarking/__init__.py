"""``diyopt bench``: a diagnostic suite of small pass/fail tasks, each optimizer tuned fairly on it.

- :mod:`diyopt.analysis.benchmarking.tasks` -- the tasks (a problem, a pass criterion, a step budget, a source);
- :mod:`diyopt.analysis.benchmarking.tuning` -- the quasi-random search spaces and the AlgoPerf-style rules;
- :mod:`diyopt.analysis.benchmarking.run` -- :func:`bench` and the files it writes.
"""
from .run import bench
from .tasks import Task, suite

__all__ = ["Task", "bench", "suite"]
