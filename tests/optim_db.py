"""The optimizer database of the tests: one record per built-in optimizer of ``diyopt.optim``.

Shaped like torch's ``OptimizerInfo`` / ``optim_db`` (``torch.testing._internal.common_optimizers``):
every fact the tests need about an optimizer lives in its one record, and the generic tests run over
the list, each through :func:`cases` (one pytest case per setting) or :func:`records`:

- ``test_optim_reference.py``: the functional form (init/update) in lockstep with ``torch_cls``, or with
  ``reference`` (a from-the-paper loop) where torch has no such class, to 1e-12 for 100 steps;
- ``test_optim_validation.py``: every ``error_inputs`` row raises its error with its message (and torch
  says the same where ``torch_too``);
- ``test_optim_convergence.py``: ``budget`` (parabola and Rosenbrock through ``diyopt.fit``);
- ``test_check.py``: the conformance kit passes with ``check_lr``;
- ``test_to_torch.py``: ``to_torch`` in lockstep with ``torch_cls``, state_dict reload, adapter = functional;
- ``test_engines.py``: compiled = eager, sweep = fit;
- ``test_transforms.py``: tensor hyperparameters give the same numbers, float32 kept, state structure stable;
- ``test_ecosystem.py``: ``state_dict_setting`` moves between diyopt and torch both ways;
- ``test_to_torch_kernels.py``: ``kernel_settings`` through to_torch's kernel engine = the pure rule = torch;
- ``test_torch_optim_db.py``: torch's own database, mapped to the records by ``torch_cls``.

``test_optim_db.py`` checks the database itself: every name in ``diyopt.optim.names()`` has exactly one
record, the settings set every flag of the factory, a record that opts out of a form says why.

Adding an optimizer: append one ``OptimizerInfo(...)`` to ``optim_db`` below. The least a record needs
is ``name``, ``torch_cls`` (or ``reference``), five ``settings``, a ``budget`` and a ``check_lr``; an
optimizer the dense-vector tests cannot drive lists the ``forms`` it has and says ``why`` it lacks the
others (``muon``, ``sparse_adam``, ``lbfgs`` below). For example::

    OptimizerInfo(
        "my_rule", None, reference=my_rule_paper,           # or torch.optim.MyRule; the loop goes in
        settings=[{}, {"lr": 1e-2}, {"lr": 1e-2, "beta": 0.5}, ...],  # optim_references.py
        error_inputs=[ErrorInput({"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$")],
        budget=Budget({"lr": 0.1}, 200, {"lr": 1e-2}, 3000),  # steps measured to 3e-2, plus ~25%
        check_lr=1e-2,
    ),
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from optim_references import lion_paper

from diyopt import schedules

# The forms an optimizer can be tested in; a test selects the records having the form it drives.
UPDATE = "update"  # functional init/update/apply_updates on dense tensors of any shape
TO_TORCH = "to_torch"  # diyopt.to_torch(opt, params): a torch.optim.Optimizer
FIT = "fit"  # diyopt.fit on dense vectors (convergence budgets, the conformance kit)
COMPILED = "compiled"  # diyopt.fit(..., engine="compiled")
SWEEP = "sweep"  # diyopt.sweep (vmap over runs; hyperparameters as tensors)
ALL_FORMS = (UPDATE, TO_TORCH, FIT, COMPILED, SWEEP)

# torch's implementation flags (its "global-cliquey" kwargs): the factories accept them, no number changes,
# so a setting need not vary them.
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


@dataclass(frozen=True)
class ErrorInput:
    """A bad construction: ``factory(**kwargs)`` raises ``error`` whose message matches ``regex``.

    ``torch_too``: ``torch_cls(params, **kwargs)`` raises the same ``error`` with a message matching the
    same ``regex`` (torch validates the argument in the same words)."""

    kwargs: dict
    error: type[Exception]
    regex: str
    torch_too: bool = False


@dataclass(frozen=True)
class Budget:
    """The most ``diyopt.fit`` steps to reach 3e-2 (Euclidean distance) of the minimizer, each with the
    settings that reach it: the steps measured on the eager engine (float64), plus ~25% headroom.

    ``parabola``: ``((x - (1, -2))^2).sum()`` from 0; ``rosenbrock``: a=1, b=100, from (-1.2, 1)."""

    parabola: dict
    parabola_steps: int
    rosenbrock: dict
    rosenbrock_steps: int


@dataclass(frozen=True)
class OptimizerInfo:
    """Everything the generic tests need to know about one built-in optimizer.

    Attributes:
      name: the factory's name in ``diyopt.optim`` (``getattr(diyopt.optim, name)``).
      torch_cls: the ``torch.optim`` class computing the same numbers from the same keyword arguments
        (diyopt's factories take torch's exact argument names), or None where torch has none.
      is_torch_cls: False when the record is only a special case of ``torch_cls`` (``gradient_descent`` is
        ``SGD`` without momentum): torch's own ``optim_db`` configurations of the class go to the record
        that is the whole class.
      reference: where ``torch_cls`` is None, a from-the-paper loop ``reference(loss, params0, steps,
        **kwargs)`` returning, per step, ``(params, {param_name: {state_field: tensor}})``.
      settings: keyword-argument dicts (>= 5) that together set every flag of the factory to a
        non-default value; one dict builds both ``factory(**kw)`` and ``torch_cls(params, **kw)``. The
        learning rates keep 100+ steps finite on ``lockstep_problem``. The first setting is the one the
        slow tests (compiled engine) use; the first two are the float32 ones.
      error_inputs: the bad constructions and the errors they raise.
      budget: convergence through ``diyopt.fit`` (``test_optim_convergence.py``).
      check_lr: the learning rate of the conformance kit's convergence checks (parabola, Rosenbrock, to
        3e-2 within its default 20,000 steps); its other checks use the defaults.
      state_dict_setting: the setting whose state_dict moves between diyopt and torch (test_ecosystem).
      kernel_settings: settings ``to_torch`` runs with torch's fused multi-tensor kernel (torch's
        ``supported_impls``; ``test_to_torch_kernels.py``); a record without any has no kernel.
      forms: the forms the generic tests drive it in (see ``ALL_FORMS``).
      why: with fewer than all forms, why the others cannot drive it and where it is tested instead.
    """

    name: str
    torch_cls: type | None
    settings: list[dict] = field(default_factory=list)
    error_inputs: list[ErrorInput] = field(default_factory=list)
    budget: Budget | None = None
    check_lr: float | None = None
    reference: Callable | None = None
    is_torch_cls: bool = True
    state_dict_setting: dict | None = None
    kernel_settings: list[dict] = field(default_factory=list)
    forms: tuple[str, ...] = ALL_FORMS
    why: str = ""


optim_db: list[OptimizerInfo] = [
    OptimizerInfo(
        "gradient_descent",
        torch.optim.SGD,
        is_torch_cls=False,
        settings=[{}, {"lr": 1e-2}, {"lr": 3e-2}, {"lr": 1e-4}, {"lr": 5e-3}],
        budget=Budget({"lr": 0.1}, 50, {"lr": 1.8e-3}, 6000),
        check_lr=1e-3,
    ),
    OptimizerInfo(
        "sgd",
        torch.optim.SGD,
        settings=[
            {"lr": 1e-2},
            {"lr": 1e-2, "momentum": 0.9},
            {"lr": 1e-2, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05},
            {"lr": 1e-2, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
            {"lr": 1e-2, "momentum": 0.5, "maximize": True},
            {"lr": 2e-2, "weight_decay": 0.1, "maximize": True},
        ],
        error_inputs=[
            ErrorInput({"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$", torch_too=True),
            ErrorInput({"momentum": -0.5}, ValueError, r"^Invalid momentum value: -0.5$", torch_too=True),
            ErrorInput({"weight_decay": -1e-2}, ValueError, r"^Invalid weight_decay value: -0.01$", torch_too=True),
            ErrorInput(
                {"nesterov": True},
                ValueError,
                r"^Nesterov momentum requires a momentum and zero dampening$",
                torch_too=True,
            ),
            ErrorInput(
                {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
                ValueError,
                r"^Nesterov momentum requires a momentum and zero dampening$",
                torch_too=True,
            ),
            # torch's implementation flags are accepted (they change no numbers); torch's checks of them are kept
            ErrorInput(
                {"fused": True, "differentiable": True},
                RuntimeError,
                r"`fused` does not support `differentiable`",
                torch_too=True,
            ),
        ],
        budget=Budget({"lr": 0.1, "momentum": 0.5}, 50, {"lr": 2e-3, "momentum": 0.9}, 600),
        check_lr=1e-3,
        state_dict_setting={"lr": 1e-2, "momentum": 0.9, "nesterov": True},
        kernel_settings=[
            {"lr": 0.01, "momentum": 0.9},
            {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
            {"lr": 0.01, "momentum": 0.5, "dampening": 0.3},
            {"lr": 0.01, "momentum": 0.9, "maximize": True, "weight_decay": 0.1},
            {"lr": 0.01},
            {"lr": 0.01, "weight_decay": 0.1, "maximize": True},
        ],
    ),
    OptimizerInfo(
        "adagrad",
        torch.optim.Adagrad,
        settings=[
            {},
            {"lr": 0.1, "lr_decay": 0.01},
            {"lr": 0.05, "initial_accumulator_value": 0.1, "weight_decay": 0.01},
            {"lr": 0.05, "eps": 1e-6, "maximize": True},
            {"lr": 0.1, "lr_decay": 0.001, "weight_decay": 0.1, "initial_accumulator_value": 0.5},
        ],
        error_inputs=[
            ErrorInput({"lr": -0.1}, ValueError, r"^Invalid learning rate: -0.1$", torch_too=True),
            ErrorInput({"lr_decay": -1.0}, ValueError, r"^Invalid lr_decay value: -1.0$", torch_too=True),
            ErrorInput(
                {"initial_accumulator_value": -1.0},
                ValueError,
                r"^Invalid initial_accumulator_value value: -1.0$",
                torch_too=True,
            ),
            ErrorInput({"eps": -1e-10}, ValueError, r"^Invalid epsilon value: -1e-10$", torch_too=True),
            ErrorInput({"weight_decay": -1.0}, ValueError, r"^Invalid weight_decay value: -1.0$", torch_too=True),
        ],
        budget=Budget({"lr": 0.5}, 100, {"lr": 1.0}, 5500),
        check_lr=0.1,
        state_dict_setting={"lr": 0.1},
        kernel_settings=[
            {},
            {"maximize": True, "weight_decay": 0.1},
            {"weight_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-06},
        ],
    ),
    OptimizerInfo(
        "rmsprop",
        torch.optim.RMSprop,
        settings=[
            {},
            {"lr": 1e-2, "centered": True},
            {"lr": 1e-3, "momentum": 0.9},
            {"lr": 1e-3, "centered": True, "momentum": 0.5, "weight_decay": 0.01},
            {"lr": 1e-2, "alpha": 0.9, "eps": 1e-6, "maximize": True},
            {"lr": 1e-2, "weight_decay": 0.1, "alpha": 0.95},
        ],
        error_inputs=[
            ErrorInput({"alpha": -0.1}, ValueError, r"^Invalid alpha value: -0.1$", torch_too=True),
            ErrorInput({"momentum": -0.1}, ValueError, r"^Invalid momentum value: -0.1$", torch_too=True),
            ErrorInput({"eps": -1.0}, ValueError, r"^Invalid epsilon value: -1.0$", torch_too=True),
        ],
        budget=Budget({"lr": 1e-2}, 400, {"lr": 1e-3, "momentum": 0.9}, 1300),
        check_lr=3e-3,
        state_dict_setting={"lr": 1e-3, "centered": True, "momentum": 0.5},
        kernel_settings=[
            {},
            {"momentum": 0.9, "centered": True, "weight_decay": 0.1, "maximize": True},
        ],
    ),
    OptimizerInfo(
        "adadelta",
        torch.optim.Adadelta,
        settings=[
            {},
            {"lr": 0.5, "rho": 0.95},
            {"weight_decay": 0.1},
            {"eps": 1e-4, "maximize": True},
            {"lr": 2.0, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01},
        ],
        error_inputs=[
            ErrorInput({"rho": 1.5}, ValueError, r"^Invalid rho value: 1.5$", torch_too=True),
            ErrorInput({"rho": -0.1}, ValueError, r"^Invalid rho value: -0.1$", torch_too=True),
            ErrorInput({"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$", torch_too=True),
        ],
        # Adadelta creeps along the valley unless its averages are long (rho near 1) and steps a little above 1.
        budget=Budget({"lr": 10.0}, 2000, {"lr": 1.2, "rho": 0.9999}, 7500),
        check_lr=0.1,
        state_dict_setting={},
        kernel_settings=[
            {},
            {"weight_decay": 0.1, "maximize": True, "rho": 0.8},
        ],
    ),
    OptimizerInfo(
        "adam",
        torch.optim.Adam,
        settings=[
            {},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True, "amsgrad": True},
            {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True},
            {"lr": 3e-2, "betas": (0.0, 0.9)},
        ],
        error_inputs=[
            ErrorInput(
                {"betas": (1.0, 0.999)}, ValueError, r"^Invalid beta parameter at index 0: 1.0$", torch_too=True
            ),
            ErrorInput(
                {"betas": (0.9, -0.1)}, ValueError, r"^Invalid beta parameter at index 1: -0.1$", torch_too=True
            ),
            ErrorInput({"eps": -1e-8}, ValueError, r"^Invalid epsilon value: -1e-08$", torch_too=True),
            ErrorInput({"weight_decay": -0.1}, ValueError, r"^Invalid weight_decay value: -0.1$", torch_too=True),
            ErrorInput({"betas": 0.9}, TypeError, r"betas must be a pair \(beta1, beta2\), got 0.9"),
            ErrorInput(
                {"foreach": True, "fused": True},
                RuntimeError,
                r"`fused` and `foreach` cannot be `True` together",
                torch_too=True,
            ),
        ],
        budget=Budget({"lr": 0.1}, 200, {"lr": 0.1}, 1100),
        check_lr=1e-2,
        state_dict_setting={"lr": 1e-2, "amsgrad": True},
        kernel_settings=[
            {},
            {"amsgrad": True, "weight_decay": 0.1, "betas": (0.8, 0.99)},
            {"maximize": True, "weight_decay": 0.1},
        ],
    ),
    OptimizerInfo(
        "adamw",
        torch.optim.AdamW,
        settings=[
            {},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.0},
            {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True, "weight_decay": 0.05},
        ],
        error_inputs=[
            ErrorInput({"lr": -1e-3}, ValueError, r"^Invalid learning rate: -0.001$", torch_too=True),
            ErrorInput({"betas": (0.9, 1.0)}, ValueError, r"^Invalid beta parameter at index 1: 1.0$", torch_too=True),
        ],
        budget=Budget({"lr": 0.1}, 200, {"lr": 0.1, "weight_decay": 1e-3}, 1300),
        check_lr=1e-2,
        state_dict_setting={"lr": 1e-2},
        kernel_settings=[
            {"lr": 0.01},
            {"amsgrad": True},
            {"maximize": True},
        ],
    ),
    OptimizerInfo(
        "adamax",
        torch.optim.Adamax,
        settings=[
            {},
            {"lr": 1e-2, "betas": (0.8, 0.99)},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "eps": 1e-4, "maximize": True},
            {"lr": 5e-2, "betas": (0.0, 0.9), "weight_decay": 0.01},
        ],
        error_inputs=[
            ErrorInput(
                {"betas": (-0.1, 0.9)}, ValueError, r"^Invalid beta parameter at index 0: -0.1$", torch_too=True
            ),
        ],
        budget=Budget({"lr": 0.1}, 200, {"lr": 0.1}, 3000),
        check_lr=3e-2,
        state_dict_setting={},
        kernel_settings=[
            {},
            {"weight_decay": 0.1, "maximize": True},
        ],
    ),
    OptimizerInfo(
        "nadam",
        torch.optim.NAdam,
        settings=[
            {},
            {"lr": 1e-2, "momentum_decay": 0.01},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True},
        ],
        error_inputs=[
            ErrorInput({"momentum_decay": -1.0}, ValueError, r"^Invalid momentum_decay value: -1.0$", torch_too=True),
            ErrorInput({"weight_decay": -1.0}, ValueError, r"^Invalid weight_decay value: -1.0$", torch_too=True),
        ],
        budget=Budget({"lr": 0.1}, 200, {"lr": 0.02}, 3000),
        check_lr=1e-2,
        state_dict_setting={"lr": 1e-2},
        kernel_settings=[
            {},
            {"decoupled_weight_decay": True, "weight_decay": 0.1, "momentum_decay": 0.01},
        ],
    ),
    OptimizerInfo(
        "radam",
        torch.optim.RAdam,
        settings=[
            {},
            {"lr": 1e-2, "betas": (0.8, 0.99)},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "eps": 1e-6, "maximize": True},
        ],
        error_inputs=[
            ErrorInput({"eps": -1.0}, ValueError, r"^Invalid epsilon value: -1.0$", torch_too=True),
            ErrorInput({"betas": (0.9, 1.5)}, ValueError, r"^Invalid beta parameter at index 1: 1.5$", torch_too=True),
        ],
        # RAdam's first steps (rho_t <= 5) are un-normalized momentum steps: a tiny lr for them, then 0.05.
        budget=Budget(
            {"lr": 0.1}, 300, {"lr": schedules.join([schedules.constant(1e-4), schedules.constant(0.05)], [6])}, 2300
        ),
        check_lr=3e-3,
        state_dict_setting={"lr": 1e-2},
        kernel_settings=[
            {},
            {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True},
        ],
    ),
    OptimizerInfo(
        "rprop",
        torch.optim.Rprop,
        settings=[
            {},
            {"lr": 1e-3, "etas": (0.3, 1.5)},
            {"lr": 1e-2, "step_sizes": (1e-3, 0.05)},
            {"lr": 1e-2, "maximize": True},
            {"lr": 0.1, "etas": (0.6, 1.1), "step_sizes": (1e-8, 1.0)},
        ],
        error_inputs=[
            ErrorInput({"etas": (1.5, 1.2)}, ValueError, r"^Invalid eta values: 1.5, 1.2$", torch_too=True),
            ErrorInput({"etas": (0.5, 0.9)}, ValueError, r"^Invalid eta values: 0.5, 0.9$", torch_too=True),
            ErrorInput({"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$", torch_too=True),
            # torch.optim.Rprop does not check step_sizes
            ErrorInput({"step_sizes": (1.0, 1e-3)}, ValueError, r"^Invalid step_sizes values: 1.0, 0.001$"),
            ErrorInput(
                {"lr": lambda t: 0.1}, TypeError, r"rprop's lr is its initial step size and cannot be a schedule"
            ),
        ],
        budget=Budget({}, 200, {}, 2500),
        check_lr=1e-2,
        state_dict_setting={},
        kernel_settings=[
            {},
            {"maximize": True, "etas": (0.3, 1.5), "step_sizes": (0.0001, 1.0)},
        ],
    ),
    OptimizerInfo(
        "asgd",
        torch.optim.ASGD,
        settings=[
            {},
            {"lr": 1e-2, "lambd": 0.1},
            {"lr": 1e-2, "alpha": 0.5, "t0": 10},
            {"lr": 1e-2, "weight_decay": 0.1, "t0": 5, "lambd": 0.01},
            {"lr": 5e-3, "maximize": True, "t0": 20},
        ],
        error_inputs=[
            # rules whose lr enters their own step-size arithmetic take no schedule
            ErrorInput({"lr": schedules.constant(0.1)}, TypeError, r"asgd's lr cannot be a schedule"),
        ],
        budget=Budget({"lr": 0.1}, 30, {"lr": 2e-3}, 5000),
        check_lr=1e-3,
        state_dict_setting={"t0": 3},
        kernel_settings=[
            {},
            {"t0": 2, "weight_decay": 0.1, "maximize": True},
        ],
    ),
    OptimizerInfo(
        "adafactor",
        torch.optim.Adafactor,
        settings=[
            {},
            {"lr": 3e-2, "beta2_decay": -0.5},
            {"lr": 1e-2, "eps": (1e-30, 1e-3), "d": 2.0},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "maximize": True},
        ],
        budget=Budget({"lr": 0.1}, 150, {"lr": 0.1}, 10000),
        check_lr=3e-2,
        state_dict_setting={},
    ),
    OptimizerInfo(
        "lion",
        None,
        reference=lion_paper,
        settings=[
            {},
            {"lr": 1e-3},
            {"lr": 1e-3, "betas": (0.95, 0.98)},
            {"lr": 1e-3, "weight_decay": 0.1},
            {"lr": 3e-4, "betas": (0.8, 0.999), "weight_decay": 1.0, "maximize": True},
        ],
        error_inputs=[
            ErrorInput({"lr": -1e-4}, ValueError, r"^Invalid learning rate: -0.0001$"),
            ErrorInput({"betas": (0.9, 1.0)}, ValueError, r"^Invalid beta parameter at index 1: 1.0$"),
            ErrorInput({"weight_decay": -1.0}, ValueError, r"^Invalid weight_decay value: -1.0$"),
        ],
        budget=Budget({"lr": 1e-2}, 400, {"lr": 3e-3}, 1300),
        check_lr=3e-3,
    ),
    # ---- references outside torch.optim: lockstep with the reference package lives in the optimizer's own
    # test file (the record says which); the generic tests drive the forms listed
    OptimizerInfo(
        "schedule_free_sgd",
        None,
        # schedule-free: the distances are the evaluation params' (the average x), which the callback sees
        budget=Budget({"lr": 0.1}, 25, {"lr": 2e-3}, 3100),
        check_lr=3e-3,
        forms=(FIT,),
        why="lockstep with schedulefree.SGDScheduleFree, to_torch (.train()/.eval()), compiled, sweep, "
        "checkpoint and torchrun: tests/test_contract.py",
    ),
    OptimizerInfo(
        "schedule_free_adamw",
        None,
        budget=Budget({"lr": 0.1}, 180, {"lr": 0.1}, 700),
        check_lr=1e-2,
        forms=(FIT,),
        why="lockstep with schedulefree.AdamWScheduleFree, to_torch (.train()/.eval()), compiled, sweep, "
        "checkpoint and torchrun: tests/test_contract.py",
    ),
    OptimizerInfo(
        "adan",
        None,
        budget=Budget({"lr": 0.1}, 100, {"lr": 3e-2}, 650),
        check_lr=0.03,
        forms=(FIT,),
        why="lockstep with pytorch_optimizer.Adan over 100+ steps on a small MLP, to_torch with two groups and a state_dict "
        "reload: tests/test_recent_optimizers.py; fit, checkpoint and SIGKILL resume, sweep (or its refusal), "
        "compiled = eager (slow): tests/test_recent_forms.py",
    ),
    OptimizerInfo(
        "adopt",
        None,
        budget=Budget({"lr": 0.1}, 110, {"lr": 0.1}, 10800),
        check_lr=0.1,
        forms=(FIT,),
        why="lockstep with pytorch_optimizer.ADOPT over 100+ steps on a small MLP, to_torch with two groups and a state_dict "
        "reload: tests/test_recent_optimizers.py; fit, checkpoint and SIGKILL resume, sweep (or its refusal), "
        "compiled = eager (slow): tests/test_recent_forms.py",
    ),
    OptimizerInfo(
        "prodigy",
        None,
        budget=Budget({}, 100, {}, 1500),
        check_lr=1.0,
        forms=(FIT,),
        why="lockstep with prodigyopt.Prodigy over 100+ steps on a small MLP, to_torch with two groups and a state_dict "
        "reload: tests/test_recent_optimizers.py; fit, checkpoint and SIGKILL resume, sweep (or its refusal), "
        "compiled = eager (slow): tests/test_recent_forms.py",
    ),
    OptimizerInfo(
        "soap",
        None,
        budget=Budget({"lr": 0.1}, 75, {"lr": 3e-2}, 330),
        check_lr=0.03,
        forms=(FIT,),
        why="lockstep with pytorch_optimizer.SOAP (same preconditioner frequency) over 100+ steps on a small MLP, to_torch with two groups and a state_dict "
        "reload: tests/test_recent_optimizers.py; fit, checkpoint and SIGKILL resume, sweep (or its refusal), "
        "compiled = eager (slow): tests/test_recent_forms.py",
    ),
    OptimizerInfo(
        "muon_adamw",
        None,
        budget=Budget({"adamw_lr": 0.1}, 200, {"adamw_lr": 0.1, "adamw_weight_decay": 1e-3}, 1300),
        check_lr=0.01,
        forms=(FIT,),
        why="lockstep with torch.optim.Muon for the 2-D hidden weights and torch.optim.AdamW for the rest over 100+ steps on a small MLP, to_torch with two groups and a state_dict "
        "reload: tests/test_recent_optimizers.py; fit, checkpoint and SIGKILL resume, sweep (or its refusal), "
        "compiled = eager (slow): tests/test_recent_forms.py",
    ),
    # ---- optimizers the dense-vector tests cannot drive; each runs torch's own database in
    # test_torch_optim_db.py (and has its own tests there)
    OptimizerInfo(
        "muon",
        torch.optim.Muon,
        error_inputs=[
            ErrorInput({"lr": schedules.constant(0.1)}, TypeError, r"muon's lr cannot be a schedule"),
        ],
        forms=(TO_TORCH,),
        why="2-D params only: the dense-vector problems are vectors",
    ),
    OptimizerInfo(
        "sparse_adam",
        torch.optim.SparseAdam,
        forms=(TO_TORCH,),
        why="sparse gradients only (nn.Embedding(sparse=True))",
    ),
    OptimizerInfo(
        "lbfgs",
        torch.optim.LBFGS,
        forms=(TO_TORCH,),
        why="evaluates the loss several times per step: a to_torch step(closure), no update "
        "(the solver diyopt.lbfgs has its own tests)",
    ),
]


# ---------------------------------------------------------------- selecting records and cases


def record(name: str) -> OptimizerInfo:
    """The record of one optimizer, by name."""
    for info in optim_db:
        if info.name == name:
            return info
    raise KeyError(name)


def records(form: str | None = None, *, where: Callable[[OptimizerInfo], bool] | None = None) -> list[OptimizerInfo]:
    """The records having ``form`` (every record when None) for which ``where(info)`` holds."""
    return [info for info in optim_db if (form is None or form in info.forms) and (where is None or where(info))]


def case_id(name: str, kwargs: dict) -> str:
    """A readable pytest id: ``adam-lr=0.01,amsgrad=True``."""
    return name + "-" + (",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults")


def cases(
    form: str | None = None, *, where: Callable[[OptimizerInfo], bool] | None = None, settings: slice = slice(None)
) -> list:
    """One ``pytest.param(info, kwargs)`` per setting (``info.settings[settings]``) of every selected
    record, with the id :func:`case_id`: ``@pytest.mark.parametrize("info,kwargs", cases(...))``."""
    return [
        pytest.param(info, kw, id=case_id(info.name, kw))
        for info in records(form, where=where)
        for kw in info.settings[settings]
    ]


# ---------------------------------------------------------------- the lockstep problem


def lockstep_problem(seed: int = 0, batches: int = 200):
    """Initial params ``{"w": (5, 3), "b": (3,)}`` and ``loss(params, step)``: a random least squares with a
    little nonlinearity, on minibatch ``step`` (cycling through ``batches`` of them).

    Both optimizers in a lockstep run see the same batch at each step. A fresh batch keeps the gradient's
    spread realistic instead of shrinking to zero at the optimum, where centered RMSprop's
    ``E[g^2] - E[g]^2`` cancels and would amplify the rounding of any two correct implementations far
    beyond 1e-12.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 3, generator=g, dtype=torch.float64) + torch.randn(400, 3, generator=g, dtype=torch.float64)
    params0 = {
        "w": 0.5 * torch.randn(5, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(3, generator=g, dtype=torch.float64),
    }
    picks = [torch.randperm(400, generator=g)[:20] for _ in range(batches)]

    def loss(p, step=0):
        i = picks[step % len(picks)]
        r = x[i] @ p["w"] + p["b"] - y[i]
        return (r**2).mean() + 0.1 * torch.sin(3 * p["w"]).sum()

    return params0, loss
