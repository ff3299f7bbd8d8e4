"""``diyopt bench``: a diagnostic suite of small pass/fail tasks and real workloads, each optimizer tuned fairly.

- :mod:`~diyopt.analysis.benchmarking.tasks` -- the tasks (a problem, a pass criterion, a step budget, a source);
- :mod:`~diyopt.analysis.benchmarking.workloads` -- the workloads (validation targets, time-to-target);
- :mod:`~diyopt.analysis.benchmarking.tuning` -- the quasi-random search spaces and the AlgoPerf-style rules;
- :mod:`~diyopt.analysis.benchmarking.studies` -- running a task's studies (one sweep, or a loop) into a row;
- :mod:`~diyopt.analysis.benchmarking.intervals` -- bootstrap 95% intervals over studies;
- :mod:`~diyopt.analysis.benchmarking.charts` -- the solved matrix and the performance profiles;
- :mod:`~diyopt.analysis.benchmarking.run` -- :func:`bench`, the files it writes, torchrun.
"""

from .run import bench
from .tasks import Task, suite

__all__ = ["Task", "bench", "suite"]
