"""SOAP's per-tensor step (Vyas et al., 2025), as ``pytorch_optimizer.SOAP`` computes it."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import checking_form, elementwise


class SoapState(NamedTuple):
    step: Tensor  # updates taken so far, the first (which only gathers statistics) included
    exp_avg: Tensor  # m_t, the gradients' EMA, in the parameter's own basis
    exp_avg_sq: Tensor  # v_t, EMA of the squared *rotated* gradients, in the eigenbasis
    GG: tuple  # per dimension i: EMA of G_(i) G_(i)^T (an empty tensor: dimension not rotated)
    Q: tuple  # per dimension i: the eigenbasis of GG[i] (empty where GG[i] is)


def _preconditioned(param: Tensor, max_precondition_dim: int, precondition_1d: bool) -> list[bool]:
    if param.dim() == 1:
        return [precondition_1d and param.shape[0] <= max_precondition_dim]
    return [n <= max_precondition_dim for n in param.shape]


def _project(x: Tensor, Q: tuple, backward: bool = False) -> Tensor:
    """Rotate every dimension of ``x`` into (``backward``: out of) its eigenbasis: ``Q_i^T`` along dim i."""
    for q in Q:
        if q.numel() > 0:
            x = torch.tensordot(x, q, dims=[[0], [1 if backward else 0]])
        else:  # identity on this dimension: move it to the back, as tensordot would
            x = x.permute([*range(1, x.dim()), 0])
    return x


def _outer(grad: Tensor, i: int) -> Tensor:
    """``G_(i) G_(i)^T``: the grad contracted with itself over every dimension but ``i``."""
    if grad.dim() == 1:
        return grad.unsqueeze(1) @ grad.unsqueeze(0)
    others = [d for d in range(grad.dim()) if d != i]
    return torch.tensordot(grad, grad, dims=[others, others])


def _eigenbases(GG: tuple) -> tuple:
    """The first bases: eigenvectors of each GG, by decreasing eigenvalue (``torch.linalg.eigh``)."""
    out = []
    for m in GG:
        if m.numel() == 0:
            out.append(m)
            continue
        _, q = torch.linalg.eigh(m + 1e-30 * torch.eye(m.shape[0], device=m.device, dtype=m.dtype))
        out.append(torch.flip(q, dims=[1]).contiguous())  # LAPACK's is column-major
    return tuple(out)


def _refreshed(GG: tuple, Q: tuple, exp_avg_sq: Tensor) -> tuple[tuple, Tensor]:
    """One power iteration and a QR per dimension (in float32, as the reference does), the columns sorted
    by the estimated eigenvalues; ``exp_avg_sq`` is permuted to the new order."""
    out = []
    for i, (m, o) in enumerate(zip(GG, Q)):
        if m.numel() == 0:
            out.append(m)
            continue
        product = m @ o
        order = torch.argsort((o * product).sum(dim=0), descending=True)
        exp_avg_sq = exp_avg_sq.index_select(i, order)
        q, _ = torch.linalg.qr(product.index_select(1, order).to(torch.float32))
        out.append(q.to(product.dtype).contiguous())
    return tuple(out), exp_avg_sq


def _select(pred: Tensor, a, b):
    if isinstance(a, tuple):
        return tuple(_select(pred, x, y) for x, y in zip(a, b))
    return a.clone() if a.numel() == 0 else torch.where(pred, a, b)  # a fresh placeholder: no aliasing


@elementwise(whole_tensor=True)
def scale_by_soap(
    grad,
    state: SoapState,
    param,
    *,
    lr=3e-3,
    b1=0.95,
    b2=0.95,
    shampoo_beta=None,
    weight_decay=1e-2,
    precondition_frequency=10,
    max_precondition_dim=10000,
    precondition_1d=False,
    correct_bias=True,
    normalize_gradient=False,
    eps=1e-8,
):
    r"""SOAP's step (Vyas et al., 2025, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR;
    arXiv:2409.11321, Algorithm 3): Adam run in the eigenbasis of Shampoo's preconditioner.

    For a gradient :math:`G` with dimensions :math:`i`, :math:`L_i \leftarrow \beta_s L_i + (1-\beta_s)
    G_{(i)} G_{(i)}^T` (``GG``, :math:`\beta_s` = ``shampoo_beta``, default ``b2``), and :math:`Q_i` its
    eigenbasis, refreshed every ``precondition_frequency`` steps by one power iteration and a QR.
    :math:`\tilde G = G \times_i Q_i^T` (every dimension rotated), then

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) G_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde G_t^2,\quad
        \Delta = \Big(\frac{\tilde m_t}{\sqrt{v_t} + \epsilon}\Big) \times_i Q_i,\\
        \theta \leftarrow \big(\theta - \mathrm{lr}\,\tfrac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,\Delta\big)
        (1 - \mathrm{lr}\,\lambda),

    with :math:`t` counting from the second step: the first only gathers :math:`L_i` and takes
    :math:`Q_i` from ``eigh`` (no move). Dimensions above ``max_precondition_dim`` (and 1-D tensors
    unless ``precondition_1d``) are not rotated. Returns the whole update (``lr`` and the decay included).
    """
    if torch._C._functorch.is_batchedtensor(grad):
        raise ValueError(
            "soap cannot run in a sweep (torch.func.vmap): its first eigenbasis is eigh's of a "
            "rank-deficient matrix, whose null-space basis the batched kernels pick differently, "
            "so a sweep's runs would not equal single fits; run fit() once per setting"
        )
    if checking_form() == "compiled":
        raise ValueError(
            "soap cannot run compiled (engine='compiled'): its first eigenbasis is eigh's of a "
            "rank-deficient matrix, whose null-space basis is not unique (the compiled step parted "
            "from eager by 1e-2 in 30 steps on a 4-8-3 MLP), and compiling its eigh and QR took over "
            "6 minutes there; use engine='eager'"
        )
    count = state.step
    first = count == 0
    sb = b2 if shampoo_beta is None else shampoo_beta
    GG = tuple(
        m.clone() if m.numel() == 0 else torch.lerp(m, _outer(grad, i).to(m.dtype), 1 - sb)
        for i, m in enumerate(state.GG)
    )

    exp_avg = torch.lerp(state.exp_avg, grad, 1 - b1)
    exp_avg_sq = torch.lerp(state.exp_avg_sq, _project(grad, state.Q).square(), 1 - b2)
    direction = _project(_project(exp_avg, state.Q) / (exp_avg_sq.sqrt() + eps), state.Q, backward=True)
    if normalize_gradient:
        direction = direction / (torch.mean(direction.square()).sqrt() + eps)
    step_size = lr
    if correct_bias:
        step_size = lr * (torch.sqrt(1 - b2**count) / (1 - b1**count))
    moved = param - step_size * direction
    update = moved * (1 - weight_decay * lr) - param

    refresh = (count > 0) & (torch.remainder(count, precondition_frequency) == 0)
    Q_qr, exp_avg_sq_qr = _refreshed(GG, state.Q, exp_avg_sq)
    Q = _select(first, _eigenbases(GG), _select(refresh, Q_qr, state.Q))
    exp_avg_sq = torch.where(refresh, exp_avg_sq_qr, exp_avg_sq)
    new = SoapState(
        count + 1, torch.where(first, state.exp_avg, exp_avg), torch.where(first, state.exp_avg_sq, exp_avg_sq), GG, Q
    )
    return torch.where(first, torch.zeros_like(update), update), new


@scale_by_soap.init
def _(param, *, max_precondition_dim=10000, precondition_1d=False):
    def square(n, on):
        if on:
            return torch.zeros(n, n, dtype=param.dtype, device=param.device)
        return param.new_empty(0)

    flags = _preconditioned(param, max_precondition_dim, precondition_1d) if param.dim() else []
    dims = [param.shape[0]] if param.dim() == 1 else list(param.shape)
    GG = tuple(square(n, on) for n, on in zip(dims, flags))
    return SoapState(
        torch.zeros((), dtype=param.dtype, device=param.device),
        torch.zeros_like(param),
        torch.zeros_like(param),
        GG,
        tuple(g.clone() for g in GG),
    )
