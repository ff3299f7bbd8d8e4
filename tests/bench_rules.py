"""Broken update rules for tests/test_bench.py: each must pass no diagnostic task, however tuned."""

import diyopt


@diyopt.elementwise
def frozen(grad, state, param, *, lr=1e-3):
    """The zero update: the params never move."""
    return 0 * grad, state


@diyopt.elementwise
def ascent(grad, state, param, *, lr=1e-3):
    """Gradient descent with the wrong sign: it climbs."""
    return lr * grad, state


@diyopt.elementwise
def adam_ascent(grad, state, param, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam with the wrong sign (a normalised ascent: scale-free, so no lr makes it harmless on a plateau)."""
    m, v, t = state
    t = t + 1
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    step = lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return step, (m, v, t)


@adam_ascent.init
def _init(param):
    return (0 * param, 0 * param, 0 * param)


@diyopt.elementwise
def gd_item(grad, state, param, *, lr=1e-3):
    """Gradient descent through a Python float (``.item()``): vmap refuses it, so bench loops."""
    scale = 1.0 if float(grad.abs().sum()) >= 0 else 0.0
    return -lr * grad * scale, state
