"""A user's own Adam, written as plain per-tensor math -- not diyopt's built-in.

    from my_adam import my_adam
    opt = my_adam(lr=1e-3)                 # a diyopt Optimizer
    diyopt.fit(loss, params, opt, 4000, engine="compiled")

Also usable from the command line as a spec: ``examples/my_adam.py:my_adam:lr=1e-2``.
"""

from typing import NamedTuple

import torch

import diyopt


class MyAdamState(NamedTuple):
    t: torch.Tensor  # steps taken (0-dim)
    m: torch.Tensor  # first moment
    v: torch.Tensor  # second moment


@diyopt.elementwise
def my_adam(grad, state, param, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  update = -lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps).

    The bias corrections are applied to the scalars, not to m and v (the same Adam, as torch.optim and
    the paper's "more efficient" ordering write it): two divisions per element instead of three.
    """
    t = state.t + 1
    m = b1 * state.m + (1 - b1) * grad
    v = b2 * state.v + (1 - b2) * grad * grad
    step_size = lr / (1 - b1**t)
    bias_correction2_sqrt = (1 - b2**t).sqrt()
    return -step_size * m / (v.sqrt() / bias_correction2_sqrt + eps), MyAdamState(t, m, v)


@my_adam.init
def zeros_state(param):
    return MyAdamState(
        torch.zeros((), dtype=param.dtype, device=param.device), torch.zeros_like(param), torch.zeros_like(param)
    )


@diyopt.elementwise
def adam_as_in_the_paper(grad, state, param, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 1 of Kingma & Ba, literally: m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).

    The same Adam as ``my_adam`` up to rounding, with three divisions per element instead of two
    (``benchmarks/big_step.py`` times both).
    """
    t = state.t + 1
    m = b1 * state.m + (1 - b1) * grad
    v = b2 * state.v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return -lr * m_hat / (v_hat.sqrt() + eps), MyAdamState(t, m, v)


adam_as_in_the_paper.init(zeros_state)
