"""TODO docstring."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from diyopt.core.tree import Params


@dataclass
class Result:
    """What a fit returns.

    Attributes:
      params: the final parameters (detached), ``dict[str, Tensor]``.
      losses: 1-D tensor, ``losses[i]`` = loss before update ``i``.
      steps: updates taken.
      seconds: wall time of the loop (compilation excluded, see ``compile_seconds``).
      stop_reason: ``"steps"`` (budget used), ``"converged"``, ``"diverged"``, ...
      state: the final optimizer state (diyopt optimizers) or ``state_dict()`` (torch.optim classes).
      compile_seconds: time spent compiling (compiled engine), 0 otherwise.
      info: anything else an engine or solver reports (message, evaluations, covariance, ...).
      train_params: the training params, where the optimizer reports others as ``params`` -- its
        evaluation params (``Optimizer.eval_params``: schedule-free's average, an EMA, lookahead's slow
        weights); None where they are the same. See ``params_are``.
    """

    params: Params
    losses: Tensor
    steps: int
    seconds: float
    stop_reason: str
    state: Any = None
    compile_seconds: float = 0.0
    info: dict = field(default_factory=dict)
    train_params: Params | None = None

    @property
    def params_are(self) -> str:
        """``"eval"``: ``params`` are the optimizer's evaluation params, the training params are in
        ``train_params``; ``"train"``: the optimizer has one set of params, and these are they."""
        return "train" if self.train_params is None else "eval"

    @property
    def final_loss(self) -> float:
        """The loss at the final params if it was evaluated, else the last recorded loss.

        After a divergence the final params are the last finite ones, and the guard evaluated the loss
        there (``info["diverged"]["loss"]``): that value, finite unless the loss itself went non-finite."""
        if "final_loss" in self.info:
            return float(self.info["final_loss"])
        if "diverged" in self.info and "loss" in self.info["diverged"]:
            return float(self.info["diverged"]["loss"])
        return float(self.losses[-1]) if len(self.losses) else math.nan


    def __repr__(self) -> str:
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return (f"Result({params}, final_loss={self.final_loss:.6g}, steps={self.steps}, "
                f"seconds={self.seconds:.3g}, stop_reason={self.stop_reason!r})")


def _short(t: Tensor) -> str:
    return f"{t.item():.6g}" if t.numel() == 1 else f"<{tuple(t.shape)}>"
