"""L-BFGS as a ``torch.optim.Optimizer``: ``to_torch(diyopt.optim.lbfgs(...), params).step(closure)``.

L-BFGS needs the loss at several points per step (a fixed-step iteration evaluates it after each move; the
strong-Wolfe line search evaluates it along the direction), so it is not an ``init``/``update`` gradient
transformation: ``diyopt.optim.lbfgs`` returns an :class:`~diyopt.core.Optimizer` whose ``torch_optimizer``
is :class:`TorchLBFGS`, and ``to_torch`` builds that. Each ``step(closure)`` runs up to ``max_iter``
iterations of :func:`diyopt.lbfgs`'s algorithm (its two-loop recursion and strong-Wolfe search are reused
here) and keeps the history -- the pairs ``(s, y)``, the last direction and step, the last gradient -- in
``self.state`` across calls, under torch.optim.LBFGS's names, so consecutive steps continue one run.

``diyopt.lbfgs(loss_fn, params)`` stays the solver (a ``Result``, stop reasons, one call to the end).
The scalars are Python floats (double), as torch's are for float64 params; for float32 params torch keeps
them as float32 tensors, so float32 runs agree to float32 rounding only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer
from diyopt.core.linesearch import lbfgs_direction, strong_wolfe


class TorchLBFGS(torch.optim.Optimizer):
    """torch.optim.LBFGS's ``step(closure)``, over one param group; see the module docstring."""

    def __init__(self, optimizer: Optimizer, params: Any, *, compiled: bool = False):
        if compiled:
            raise ValueError("lbfgs has no compiled step: its iterations branch on the loss")
        self.optimizer = optimizer
        defaults = dict(optimizer.hyperparams)
        if defaults["max_eval"] is None:
            defaults["max_eval"] = defaults["max_iter"] * 5 // 4
        if isinstance(params, torch.nn.Module):
            params = list(params.parameters())
        elif isinstance(params, Mapping):
            params = list(params.values())
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]

    def _flat_grad(self) -> Tensor:
        return torch.cat([torch.zeros_like(p).view(-1) if p.grad is None else p.grad.reshape(-1) for p in self._params])

    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _set(self, x: Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.copy_(x[offset : offset + n].view_as(p))
            offset += n

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """Up to ``max_iter`` L-BFGS iterations; ``closure()`` zeroes the grads, computes and backpropagates
        the loss, and returns it. Returns the loss at the start of the step, as torch does."""
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = float(group["lr"])  # a tensor lr: its value, as torch's step reads it
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        evals = 1
        state["func_evals"] += 1
        g = self._flat_grad()
        if float(g.abs().max()) <= tolerance_grad:
            return orig_loss
        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        h_diag, prev_g, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = -g
                old_dirs, old_stps, ro, h_diag = [], [], [], 1.0
            else:
                y, s = g - prev_g, d * t
                d, h_diag = lbfgs_direction(g, y, s, old_dirs, old_stps, ro, h_diag, group["history_size"])
            prev_g, prev_loss = g.clone(), loss
            t = min(1.0, 1.0 / float(g.abs().sum())) * lr if state["n_iter"] == 1 else lr
            gtd = float(g.dot(d))
            if gtd > -tolerance_change:
                break
            x = self._flat_params()
            if group["line_search_fn"] is not None:

                def along(x0: Tensor, step: float, direction: Tensor) -> tuple[float, Tensor]:
                    self._set(torch.add(x0, direction, alpha=step))
                    value = float(closure())
                    grad = self._flat_grad()
                    self._set(x0)
                    return value, grad

                loss, g, t, ls_evals = strong_wolfe(
                    along, x, t, d, loss, g, gtd, tolerance_change=1e-9, max_ls=max_eval - evals
                )
                self._set(torch.add(x, d, alpha=t))
            else:
                self._set(torch.add(x, d, alpha=t))
                ls_evals = 0
                if n_iter != max_iter:  # torch does not evaluate after the step's last iteration
                    loss = float(closure())
                    g = self._flat_grad()
                    ls_evals = 1
            evals += ls_evals
            state["func_evals"] += ls_evals
            if n_iter == max_iter or evals >= max_eval or float(g.abs().max()) <= tolerance_grad:
                break
            if float((d * t).abs().max()) <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break

        state.update(
            d=d,
            t=t,
            old_dirs=old_dirs,
            old_stps=old_stps,
            ro=ro,
            H_diag=h_diag,
            prev_flat_grad=prev_g,
            prev_loss=prev_loss,
        )
        return orig_loss
