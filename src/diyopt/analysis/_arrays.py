"""Small numpy helpers shared by a comparison and its figures."""

from __future__ import annotations

import numpy as np
import torch

from diyopt.core.tree import Params


def pad(a: np.ndarray, n: int) -> np.ndarray:
    """Runs stopped early (callback) hold their last value, so curves stack."""
    return a if len(a) == n else np.concatenate([a, np.full(n - len(a), a[-1])])


def flat2(params: Params) -> np.ndarray:
    """The two coordinates of a 2-D problem's params, as a float64 array (for plotting)."""
    return torch.cat([v.detach().reshape(-1) for v in params.values()]).double().numpy()
