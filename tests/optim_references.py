"""From-the-paper loops for the built-in optimizers torch.optim lacks: the ``reference`` of their record in
``optim_db.py``, run in lockstep with diyopt's functional form by ``test_optim_reference.py``.

A reference is ``reference(loss, params0, steps, **kwargs)`` with the factory's keyword arguments,
returning one ``(params, {param_name: {state_field: tensor}})`` pair per step: the field names are
diyopt's state names, so the state is compared field by field.
"""

from __future__ import annotations

import torch


def grads_of(loss, params, step=0):
    """``{name: d loss(params, step) / d params[name]}`` at detached copies of ``params``."""
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    return dict(zip(leaves, torch.autograd.grad(loss(leaves, step), list(leaves.values()))))


def lion_paper(loss, params0, steps, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
    """Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2, written out."""
    beta1, beta2 = betas
    theta = {k: v.clone() for k, v in params0.items()}
    m = {k: torch.zeros_like(v) for k, v in params0.items()}
    trajectory = []
    for t in range(steps):
        g = grads_of(loss, theta, t)
        for k in theta:
            gk = -g[k] if maximize else g[k]
            update = torch.sign(beta1 * m[k] + (1 - beta1) * gk)  # interpolate, take the sign
            theta[k] = theta[k] - lr * (update + weight_decay * theta[k])  # decoupled weight decay
            m[k] = beta2 * m[k] + (1 - beta2) * gk  # momentum, with beta2
        trajectory.append(({k: v.clone() for k, v in theta.items()}, {k: {"exp_avg": v.clone()} for k, v in m.items()}))
    return trajectory
