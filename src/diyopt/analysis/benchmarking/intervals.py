"""Bootstrap 95% intervals over studies for the medians ``results.csv`` reports.

A bench row's numbers (``attempts``, ``best_metric``, ``steps_to_target``, ``seconds_to_target``) are medians
over the ``S`` studies (seeds). How sure is that median? The percentile bootstrap (Efron & Tibshirani 1993,
ch. 13): resample the ``S`` study values with replacement, take each resample's median; the interval is
the 2.5% and 97.5% quantiles of that distribution (``inverted_cdf``: values the median can take, no
interpolation).

With few studies the bootstrap distribution is computed **exactly**: all ``S^S`` equally likely index
tuples for ``S <= 6`` (46,656 resamples at most); above that, 10,000 resamples drawn with
``numpy.random.default_rng(0)``, so the interval is the same on every run. A value ``inf`` (a study that
never reached the target) is a value like any other: an interval ``(3, inf)`` says some resamples' median
is "not reached". With one study the interval is that study's value on both ends.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

EXACT_UP_TO = 6  # studies: 6^6 = 46,656 resamples, enumerated
RESAMPLES = 10_000  # above that, Monte Carlo with a fixed seed
LEVEL = 0.95


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The percentile-bootstrap interval of the median of ``values`` (one per study), at ``level``."""
    x = np.asarray([math.inf if v is None else float(v) for v in values], dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n <= EXACT_UP_TO:
        idx = np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    else:
        idx = np.random.default_rng(0).integers(0, n, size=(RESAMPLES, n))
    with np.errstate(invalid="ignore"):  # inf + inf in an even median is inf, never nan (no -inf here)
        medians = np.median(x[idx], axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)
