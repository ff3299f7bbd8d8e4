"""Schedules against torch.optim.lr_scheduler, value for value, and against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from diyopt import schedules

BASE = 0.1


def torch_lrs(make_scheduler, steps):
    """The lr torch's scheduler gives at steps 0 .. steps-1 (the value used by optimizer step t)."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=BASE)
    scheduler = make_scheduler(opt)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return torch.tensor(values, dtype=torch.float64)


def ours(schedule, steps):
    return torch.stack([schedule(torch.tensor(float(t), dtype=torch.float64)) for t in range(steps)])


@pytest.mark.parametrize(
    "schedule,make_scheduler,steps",
    [
        (schedules.cosine_decay(BASE, 50), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=50), 51),
        (
            schedules.cosine_decay(BASE, 17, end_value=0.01),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=17, eta_min=0.01),
            18,
        ),
        (schedules.exponential(BASE, 0.95), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95), 200),
        (schedules.step(BASE, 30), lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=30), 200),
        (schedules.step(BASE, 7, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.5), 100),
    ],
    ids=["cosine", "cosine-eta_min", "exponential", "step", "step-gamma"],
)
def test_equals_torch_lr_scheduler(schedule, make_scheduler, steps):
    # torch's schedulers are recursive (each value from the last), ours closed form: agreement to
    # rounding, relative to the base lr.
    torch.testing.assert_close(ours(schedule, steps), torch_lrs(make_scheduler, steps), rtol=1e-12, atol=1e-12 * BASE)


def test_cosine_decay_holds_end_value_after_decay_steps():
    s = schedules.cosine_decay(1.0, 10, end_value=0.25)
    assert ours(s, 30)[10:].eq(0.25).all()


def test_linear_warmup_and_join_closed_forms():
    warm, cos = schedules.linear_warmup(2.0, 10), schedules.cosine_decay(2.0, 90)
    s = schedules.join([warm, cos], [10])
    values = ours(s, 120)
    expected = [
        2.0 * t / 10 if t < 10 else 2.0 * (1 + math.cos(math.pi * min(t - 10, 90) / 90)) / 2 for t in range(120)
    ]
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=1e-15)


def test_linear_from_init_to_end():
    s = schedules.linear(1.0, 0.5, 4)
    assert ours(s, 7).tolist() == [1.0, 0.875, 0.75, 0.625, 0.5, 0.5, 0.5]


def test_piecewise_and_constant():
    s = schedules.piecewise([3, 5], [1.0, 0.1, 0.01])
    assert ours(s, 7).tolist() == [1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert ours(schedules.constant(0.3), 3).tolist() == [0.3, 0.3, 0.3]


@pytest.mark.parametrize(
    "make",
    [
        lambda: schedules.join([schedules.linear_warmup(1.0, 5), schedules.cosine_decay(1.0, 20)], [5]),
        lambda: schedules.piecewise([3, 8], [1.0, 0.5, 0.1]),
        lambda: schedules.step(1.0, 4),
        lambda: schedules.exponential(1.0, 0.9),
    ],
)
def test_vmaps_and_compiles_without_branching(make):
    s = make()
    steps = torch.arange(30, dtype=torch.float64)
    expected = ours(s, 30)
    torch.testing.assert_close(torch.func.vmap(s)(steps), expected, rtol=1e-15, atol=0)
    # An integer step works too.
    torch.testing.assert_close(s(torch.tensor(7)).double(), expected[7], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: schedules.piecewise([1, 2], [1.0]), "piecewise needs one more value than boundaries"),
        (lambda: schedules.piecewise([2, 1], [1.0, 2.0, 3.0]), "piecewise boundaries must increase"),
        (lambda: schedules.join([schedules.constant(1.0)], [3]), "join needs one more schedule than boundaries"),
        (lambda: schedules.cosine_decay(1.0, 0), "decay_steps must be a positive number, got 0"),
        (lambda: schedules.step(1.0, -1), "step_size must be a positive number, got -1"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
