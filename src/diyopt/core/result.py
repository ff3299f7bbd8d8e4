"""``Result``, what every engine and solver returns, and its vocabulary: why a run stopped, what it counted.

Every ``fit`` engine (eager, compiled, torch.optim classes) and every solver (``lbfgs``, ``newton``,
``least_squares``, ``curve_fit``) reports through the same words, listed here once:

``stop_reason``, why the run stopped (the constants below; ``info["message"]`` says which test or budget
in words, where a solver has more than one):

- ``"converged"``: a convergence test held -- ``gtol``, ``xtol`` (Newton, least squares), ``ftol``
  (least squares), ``tolerance_grad``, ``tolerance_change`` (L-BFGS);
- ``"max_steps"``: a budget ran out -- ``steps`` (fit), ``max_iter`` (Newton, L-BFGS), ``max_eval``
  (L-BFGS), ``max_nfev`` (least squares);
- ``"precision"``: no further decrease is possible at machine precision (a tolerance below what float64
  resolves, or no step decreases the loss);
- ``"diverged"``: the loss, a gradient or the params went non-finite; the params are the last finite
  ones (fit: ``info["diverged"]`` says where);
- ``"false_convergence"``: least squares -- a convergence test held, but not at a minimum;
- ``"callback"``: fit's ``callback`` returned True.

There is no word for an interrupted run: SIGINT/SIGTERM during a checkpointed ``fit`` save the checkpoint
at the next step boundary and raise ``KeyboardInterrupt``, so no Result is returned (resume from the file).

The counts, one meaning each (a count a method has no use for is 0):

- ``steps``: iterations -- for ``fit`` the updates (skipped ones included: ``on_nonfinite="skip"``), for a
  solver its iterations, each of which evaluates one gradient, Jacobian or Hessian at a new point
  (``torch.optim.LBFGS``'s ``n_iter``);
- ``nfev``: evaluations of the loss (least squares: of the residuals), with or without a derivative
  (fit: ``steps``, plus the step that diverged, plus the update's own evaluations -- SAM's gradient at
  the ascent point, 2 per step; a torch.optim class such as LBFGS may evaluate its closure several
  times per step);
- ``njev``: evaluations of the loss's gradient (least squares: of the Jacobian);
- ``nhev``: evaluations of the loss's Hessian.

They count what the method used to choose its iterates. An evaluation made only to report (the loss at
the final params, the Jacobian for ``curve_fit``'s covariance, the false-convergence check, the compiled
engine's first-step check, a replay of the compiled steps in eager) is not counted, as
``torch.optim.LBFGS`` does not count one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from diyopt.core.tree import Params

#: A convergence test held.
CONVERGED = "converged"
#: A budget ran out (steps, max_iter, max_eval or max_nfev).
MAX_STEPS = "max_steps"
#: No further decrease is possible at machine precision.
PRECISION = "precision"
#: The loss, a gradient or the params went non-finite.
DIVERGED = "diverged"
#: Least squares: a convergence test held, but not at a minimum.
FALSE_CONVERGENCE = "false_convergence"
#: fit's callback asked to stop.
CALLBACK = "callback"

#: Every ``stop_reason`` a Result may carry.
STOP_REASONS = (CONVERGED, MAX_STEPS, PRECISION, DIVERGED, FALSE_CONVERGENCE, CALLBACK)


@dataclass
class Result:
    """What a fit or a solver returns (the words and counts are the module docstring's).

    Attributes:
      params: the final parameters (detached), ``dict[str, Tensor]``.
      losses: 1-D tensor: for ``fit`` ``losses[i]`` = loss before update ``i``; a solver records the loss
        at the start of each iteration or after each accepted step (its docstring says which).
      steps: iterations (fit: updates).
      seconds: wall time of the loop (compilation excluded, see ``compile_seconds``).
      stop_reason: why it stopped, one of :data:`STOP_REASONS`.
      state: the final optimizer state (diyopt optimizers) or ``state_dict()`` (torch.optim classes).
      compile_seconds: time spent compiling (compiled engine), 0 otherwise.
      info: anything else an engine or solver reports (message, covariance, ...).
      nfev, njev, nhev: evaluations of the loss, its gradient (Jacobian) and its Hessian.
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
    nfev: int = 0
    njev: int = 0
    nhev: int = 0
    train_params: Params | None = None

    @property
    def params_are(self) -> str:
        """``"eval"``: ``params`` are the optimizer's evaluation params, the training params are in
        ``train_params``; ``"train"``: the optimizer has one set of params, and these are they."""
        return "train" if self.train_params is None else "eval"

    @property
    def counts(self) -> dict[str, int]:
        """``steps``, ``nfev``, ``njev``, ``nhev`` by name, as ``diyopt fit``'s ``result.json`` writes them."""
        return {"steps": self.steps, "nfev": self.nfev, "njev": self.njev, "nhev": self.nhev}

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
        return (
            f"Result({params}, final_loss={self.final_loss:.6g}, steps={self.steps}, "
            f"seconds={self.seconds:.3g}, stop_reason={self.stop_reason!r})"
        )


def _short(t: Tensor) -> str:
    return f"{t.item():.6g}" if t.numel() == 1 else f"<{tuple(t.shape)}>"
