"""The optimizers researchers use now, each a short chain, each equal to its reference implementation.

=================  ===========================================  ===============================================
diyopt             reference (argument names and defaults)      paper
=================  ===========================================  ===============================================
``muon_adamw``     ``torch.optim.Muon`` on the 2-D params +     Jordan et al., 2024 (Muon)
                   ``torch.optim.AdamW`` on the rest
``soap``           ``pytorch_optimizer.SOAP``                   Vyas et al., 2025, arXiv:2409.11321
``prodigy``        ``prodigyopt.Prodigy``                       Mishchenko & Defazio, 2024, arXiv:2306.06101
``adopt``          ``pytorch_optimizer.ADOPT``                  Taniguchi et al., 2024, arXiv:2411.02853
``adan``           ``pytorch_optimizer.Adan``                   Xie et al., 2024, arXiv:2208.06677
=================  ===========================================  ===============================================

``diyopt.optim.muon`` itself is torch's Muon (in :mod:`diyopt.optim._builtins`): matrices only.
Validation uses torch's wording, as everywhere in :mod:`diyopt.optim`. The implementation flags the
references take (``foreach``, ``fsdp_in_use``, ``data_format``) are accepted; what each means here is in
the factory's docstring. The lockstep tests: ``tests/test_recent_optimizers.py``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diyopt import transforms as T
from diyopt.core.contract import Optimizer, chain, configurable
from diyopt.optim._builtins import _adam_like, _maximize, adamw, muon, nonzero
from diyopt.optim._validate import (
    _check,
    _is_schedule,
    _no_schedule,
    check_betas,
    check_eps,
    check_lr,
    check_nonnegative,
    check_positive_int,
    check_settings,
)
from diyopt.transforms import adopt_clip

# ---------------------------------------------------------------- Muon for the matrices, AdamW for the rest


def hidden_matrices(name: str, tensor: Tensor) -> str:
    """The default routing of :func:`muon_adamw`: ``"muon"`` for every 2-D tensor, ``"adamw"`` otherwise
    (biases and norms, 1-D; scalars; 3-D and 4-D tensors such as stacked heads and convolutions)."""
    return "muon" if tensor.ndim == 2 else "adamw"


@configurable
def muon_adamw(
    lr=1e-3,
    weight_decay=0.1,
    momentum=0.95,
    nesterov=True,
    ns_coefficients=(3.4445, -4.7750, 2.0315),
    eps=1e-7,
    ns_steps=5,
    adjust_lr_fn=None,
    *,
    adamw_lr=1e-3,
    adamw_betas=(0.9, 0.999),
    adamw_eps=1e-8,
    adamw_weight_decay=1e-2,
) -> Optimizer:
    """Muon on every 2-D tensor, AdamW on every other one: ``partition`` of :func:`~diyopt.optim.muon`
    and :func:`~diyopt.optim.adamw` by :func:`hidden_matrices`.

    Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks",
    https://kellerjordan.github.io/posts/muon/) is defined for matrices: torch's ``Muon`` refuses
    anything else, and so does ``diyopt.optim.muon``. Here nothing is refused: 1-D, 0-D and 3-D+ tensors go
    to AdamW, as torch's docs tell users to do by hand. The first arguments are ``torch.optim.Muon``'s,
    with its defaults; the ``adamw_*`` ones are ``torch.optim.AdamW``'s ``lr``, ``betas``, ``eps``,
    ``weight_decay`` and defaults. Equal to the two torch optimizers side by side (tested in lockstep).
    To route by name as well (an embedding or an output head to AdamW), write the ``partition`` out::

        T.partition({"muon": optim.muon(lr=0.02), "adamw": optim.adamw(lr=3e-4)},
                    lambda name, p: "muon" if p.ndim == 2 and "embed" not in name else "adamw")
    """
    return T.partition(
        {
            "muon": muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn),
            "adamw": adamw(adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay),
        },
        hidden_matrices,
    )


# ---------------------------------------------------------------- SOAP


@configurable
def soap(
    lr=3e-3,
    betas=(0.95, 0.95),
    shampoo_beta=None,
    weight_decay=1e-2,
    precondition_frequency=10,
    max_precondition_dim=10000,
    merge_dims=False,
    precondition_1d=False,
    correct_bias=True,
    normalize_gradient=False,
    data_format="channels_first",
    eps=1e-8,
    maximize=False,
) -> Optimizer:
    """SOAP (Vyas et al., 2025, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR;
    arXiv:2409.11321), equal to ``pytorch_optimizer.SOAP`` with the same arguments.

    ``chain([negate], scale_by_soap)``: Adam in the eigenbasis of Shampoo's preconditioner, the basis
    refreshed every ``precondition_frequency`` steps (see :func:`diyopt.transforms.scale_by_soap` for
    the math). The first step only gathers statistics and does not move, as in the reference. The
    decoupled weight decay multiplies the *updated* params by ``1 - lr * weight_decay``, as the reference
    does. ``merge_dims=True`` is refused (the reference's merge turns a small matrix into shape ``[1]``
    and fails); ``data_format`` only matters with it, and is accepted. Every step computes the basis
    refresh and selects it with ``torch.where`` (no branch on the step count), so the rule also runs
    compiled and vmapped, at the price of an ``eigh`` and a QR per preconditioned dimension per step.
    """
    check_settings(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if shampoo_beta is not None:
        _check(shampoo_beta, lambda v: 0.0 <= v < 1.0, "Invalid shampoo_beta value: {}")
    check_positive_int("precondition_frequency", precondition_frequency)
    check_positive_int("max_precondition_dim", max_precondition_dim)
    if merge_dims:
        raise ValueError(
            "soap: merge_dims=True is not supported (pytorch_optimizer's merge reshapes a "
            "small matrix to [1] and fails); leave it False"
        )
    if data_format not in ("channels_first", "channels_last"):
        raise ValueError(f"Invalid data_format: {data_format!r} (channels_first or channels_last)")
    return chain(
        *_maximize(maximize),
        T.scale_by_soap(
            lr=lr,
            b1=betas[0],
            b2=betas[1],
            shampoo_beta=shampoo_beta,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precondition_dim=max_precondition_dim,
            precondition_1d=precondition_1d,
            correct_bias=correct_bias,
            normalize_gradient=normalize_gradient,
            eps=eps,
        ),
    )


# ---------------------------------------------------------------- Prodigy


@configurable
def prodigy(
    lr=1.0,
    betas=(0.9, 0.999),
    beta3=None,
    eps=1e-8,
    weight_decay=0.0,
    decouple=True,
    use_bias_correction=False,
    safeguard_warmup=False,
    d0=1e-6,
    d_coef=1.0,
    growth_rate=float("inf"),
    fsdp_in_use=False,
    slice_p=1,
) -> Optimizer:
    """Prodigy (Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
    ICML; arXiv:2306.06101), equal to ``prodigyopt.Prodigy`` with the same arguments.

    Adam whose step size ``d * lr`` is estimated on the way (leave ``lr=1``): see
    :func:`diyopt.transforms.scale_by_prodigy`. ``decouple=False`` adds ``weight_decay * param`` to the
    gradient first (``chain(add_decayed_weights, scale_by_prodigy)``). The estimate sums over all the
    params the rule is given: under ``to_torch`` that is one param group (``prodigyopt`` shares one
    estimate across groups and requires them to have one ``lr``), so give ``to_torch`` one group.
    ``fsdp_in_use=True`` is refused: ``fit(..., distributed=...)`` all-reduces gradients, so every rank
    already sees the whole params.
    """
    _check(d0, lambda v: v > 0.0, "Invalid d0 value: {}")
    check_lr(lr, positive=True)
    check_eps(eps, positive=True)
    check_settings(betas=betas, weight_decay=weight_decay)
    _no_schedule("prodigy", lr, why="it scales the estimated step size inside the rule", use="a number")
    if fsdp_in_use:
        raise ValueError(
            "prodigy: fsdp_in_use=True is not supported; diyopt's distributed fit all-reduces the "
            "gradients, so each rank holds the whole params"
        )
    check_positive_int("slice_p", slice_p)
    coupled = nonzero(weight_decay) and not decouple
    return chain(
        *([T.add_decayed_weights(weight_decay)] if coupled else []),
        T.scale_by_prodigy(
            lr=lr,
            b1=betas[0],
            b2=betas[1],
            beta3=beta3,
            eps=eps,
            weight_decay=0.0 if coupled else weight_decay,
            decouple=decouple,
            use_bias_correction=use_bias_correction,
            safeguard_warmup=safeguard_warmup,
            d0=d0,
            d_coef=d_coef,
            growth_rate=growth_rate,
            slice_p=slice_p,
        ),
    )


# ---------------------------------------------------------------- ADOPT, Adan


@configurable
def adopt(
    lr=1e-3,
    betas=(0.9, 0.9999),
    clip_lambda=adopt_clip,
    weight_decay=0.0,
    weight_decouple=False,
    fixed_decay=False,
    foreach=None,
    eps=1e-6,
    maximize=False,
) -> Optimizer:
    """ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal
    Rate", NeurIPS; arXiv:2411.02853), equal to ``pytorch_optimizer.ADOPT`` with the same arguments.

    ``chain([negate], [coupled decay], scale_by_adopt, scale_by_lr, [decoupled decay])``; the first step
    only fills the second moment (the params move by the decoupled decay alone). ``weight_decouple``:
    ``param *= 1 - lr * weight_decay`` (``fixed_decay``: ``1 - weight_decay``) instead of adding
    ``weight_decay * param`` to the gradient. ``clip_lambda(step)`` bounds the normalized gradient
    (default ``step ** 0.25``, given a 0-dim tensor; None: no clipping). ``foreach`` changes nothing.
    """
    check_settings(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if clip_lambda is not None and not callable(clip_lambda):
        raise TypeError(f"clip_lambda must be a function of the step or None, got {type(clip_lambda).__name__}")
    direction = T.scale_by_adopt(b1=betas[0], b2=betas[1], eps=eps, clip_lambda=clip_lambda)
    if weight_decouple and fixed_decay and nonzero(weight_decay):
        return chain(
            *_maximize(maximize), direction, T.scale_by_lr(lr), T.add_decoupled_weight_decay(1.0, weight_decay)
        )
    return _adam_like(lambda _: direction, weight_decay, weight_decouple, maximize, lr)


@configurable
def adan(
    lr=1e-3,
    betas=(0.98, 0.92, 0.99),
    weight_decay=0.0,
    weight_decouple=False,
    max_grad_norm=0.0,
    foreach=None,
    eps=1e-8,
    maximize=False,
) -> Optimizer:
    """Adan (Xie et al., 2024, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
    Models", IEEE TPAMI; arXiv:2208.06677), equal to ``pytorch_optimizer.Adan`` with the same arguments.

    ``chain([clip by global norm], [negate], scale_by_adan, scale_by_lr, [decay])``. The decay is the
    reference's: ``weight_decouple=True`` multiplies the params by ``1 - lr * weight_decay`` before the
    step, the default divides the stepped params by ``1 + lr * weight_decay`` (the paper's proximal form).
    ``max_grad_norm > 0`` scales all gradients by ``min(1, max_grad_norm / (|g| + eps))``, the norm over
    every param the rule is given, summed in float32 as the reference sums it (under ``to_torch``: per
    param group, where the reference takes all groups). With ``maximize`` the reference's first step
    differs from its own later ones (it stores the previous gradient before negating it); diyopt negates
    first, so a maximizing run equals the reference minimizing ``-f``. ``foreach`` changes nothing.
    """
    check_settings(lr=lr, weight_decay=weight_decay, eps=eps)
    check_betas(betas, n=3)
    if _is_schedule(lr) and nonzero(weight_decay):
        raise TypeError(
            "adan's lr cannot be a schedule with weight_decay (the decay uses lr as a number); "
            "use torch.optim.lr_scheduler on to_torch(...)"
        )
    check_nonnegative("max_grad_norm", max_grad_norm)
    decay: list[Optimizer] = []
    if nonzero(weight_decay):
        decay = [
            T.add_decoupled_weight_decay(lr, weight_decay) if weight_decouple else _proximal_decay(lr, weight_decay)
        ]
    return chain(
        *([T.clip_by_global_norm_f32(max_grad_norm, eps)] if nonzero(max_grad_norm) else []),
        *_maximize(maximize),
        T.scale_by_adan(b1=betas[0], b2=betas[1], b3=betas[2], eps=eps),
        T.scale_by_lr(lr),
        *decay,
    )


def _proximal_decay(lr: Any, weight_decay: Any) -> Optimizer:
    """Adan's default decay, ``param <- (param + update) / (1 + lr * weight_decay)``, as an update."""

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("adan's weight decay needs params")
        return {k: (params[k] + u) / (1 + lr * weight_decay) - params[k] for k, u in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)


RECENT = {
    "adan": adan,
    "adopt": adopt,
    "muon_adamw": muon_adamw,
    "prodigy": prodigy,
    "soap": soap,
}
