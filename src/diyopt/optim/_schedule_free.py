"""Schedule-free SGD and AdamW (Defazio et al., 2024, arXiv:2405.15682), equal to the ``schedulefree``
package's ``SGDScheduleFree`` and ``AdamWScheduleFree`` (version 1.4), with their argument names and defaults.

Each is a chain ending in :func:`~diyopt.transforms.scale_by_schedule_free`; the training params are
:math:`y`, ``Optimizer.eval_params`` gives the average :math:`x` -- what ``fit`` reports, checkpoints hold,
and ``to_torch(...).eval()`` puts into the model (schedulefree's ``optimizer.eval()``).
"""

from __future__ import annotations

from typing import Any

from diyopt import transforms as T
from diyopt.core.contract import Optimizer, chain, configurable
from diyopt.optim._builtins import _maximize, nonzero
from diyopt.optim._validate import _check, check_settings


def _decay(weight_decay: Any) -> list[Optimizer]:
    """schedulefree's weight decay, evaluated at y: ``d += weight_decay * y`` (after the normalization)."""
    return [T.add_decayed_weights(weight_decay)] if nonzero(weight_decay) else []


@configurable
def schedule_free_sgd(
    lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0, weight_lr_power=2, foreach=None, *, maximize=False
) -> Optimizer:
    r"""Schedule-free SGD: :math:`d_k = g(y_k) + \lambda y_k`, then schedule-free averaging with
    :math:`\beta` = ``momentum``. ``foreach`` is accepted and changes nothing (see :mod:`diyopt.optim`);
    ``maximize`` (keyword-only, as in every diyopt optimizer; schedulefree has none) ascends.

    Example::

        >>> import torch, diyopt
        >>> opt = diyopt.optim.schedule_free_sgd(lr=0.5, warmup_steps=10)
        >>> r = diyopt.fit(lambda p: ((p["x"] - 3) ** 2).sum(), {"x": torch.zeros(1, dtype=torch.float64)}, opt, 200)
        >>> r.params_are, round(r.params["x"].item(), 3)   # the average x, not the gradient point y
        ('eval', 3.0)
    """
    check_settings(lr=lr, weight_decay=weight_decay)
    _check(momentum, lambda m: 0 < m < 1, "Momentum must be between 0 and 1 exclusive: {}")
    return chain(
        *_maximize(maximize),
        *_decay(weight_decay),
        T.scale_by_schedule_free(lr, momentum, warmup_steps, r, weight_lr_power),
    )


@configurable
def schedule_free_adamw(
    lr=0.0025,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0,
    warmup_steps=0,
    r=0.0,
    weight_lr_power=2.0,
    foreach=None,
    *,
    maximize=False,
) -> Optimizer:
    r"""Schedule-free AdamW: :math:`d_k = g / (\sqrt{v_k/(1-\beta_2^k)} + \epsilon) + \lambda y_k`, then
    schedule-free averaging with :math:`\beta` = ``betas[0]``. No first moment: the averaging is the momentum.
    ``maximize`` as in :func:`schedule_free_sgd`.
    """
    check_settings(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
    return chain(
        *_maximize(maximize),
        T.scale_by_schedule_free_adam(b2=betas[1], eps=eps),
        *_decay(weight_decay),
        T.scale_by_schedule_free(lr, betas[0], warmup_steps, r, weight_lr_power),
    )
