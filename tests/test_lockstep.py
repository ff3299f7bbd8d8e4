"""The reference-equivalence harness: ``diyopt.analysis.lockstep`` and ``diyopt check SPEC --against REF``.

The central test plants a one-ulp change in a copy of Adam at step 37 and checks that the harness names
that step, that tensor and that size -- and says "bitwise equal" without the plant.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import diyopt
from diyopt.analysis import lockstep

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..", "src"), os.environ.get("PYTHONPATH", "")]
    ),
}

# A user's Adam twice: as a diyopt rule and as a torch.optim class, the same arithmetic op for op (so the
# two are bitwise equal), the class with a one-ulp change planted at step ``plant_at``.
PLANTED = textwrap.dedent("""
    import math
    import torch
    import diyopt


    @diyopt.elementwise
    def my_adam(grad, state, param, *, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
        step, m, v = state
        step = step + 1
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        update = -lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
        return update, (step, m, v)


    @my_adam.init
    def _(param):
        return torch.zeros((), dtype=param.dtype), torch.zeros_like(param), torch.zeros_like(param)


    class CopyOfAdam(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, plant_at=0):
            super().__init__(params, dict(lr=lr, b1=b1, b2=b2, eps=eps))
            self.plant_at = plant_at

        @torch.no_grad()
        def step(self):
            first = True
            for group in self.param_groups:
                lr, b1, b2, eps = group["lr"], group["b1"], group["b2"], group["eps"]
                for p in group["params"]:
                    st = self.state[p]
                    if not st:
                        st["step"] = torch.zeros((), dtype=p.dtype)
                        st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    step = st["step"] = st["step"] + 1
                    m = st["m"] = b1 * st["m"] + (1 - b1) * p.grad
                    v = st["v"] = b2 * st["v"] + (1 - b2) * p.grad * p.grad
                    p.copy_(p + -lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps))
                    if first and int(step) == self.plant_at:  # the plant: one ulp up, in one element
                        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(math.inf, dtype=p.dtype))
                    first = False
""")


@pytest.fixture
def planted(tmp_path):
    path = tmp_path / "planted_adam.py"
    path.write_text(PLANTED)
    return str(path)


def _check(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "diyopt", "check", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300
    )


def test_against_finds_a_planted_one_ulp_change_at_its_step(planted):
    ours = f"{planted}:my_adam"
    clean = _check(ours, "--against", f"{planted}:CopyOfAdam", "--tol", "0")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "equal to 0 over 100 steps (bitwise equal throughout)" in clean.stdout

    planted_run = _check(ours, "--against", f"{planted}:CopyOfAdam:plant_at=37", "--tol", "0")
    assert planted_run.returncode == 1, planted_run.stdout + planted_run.stderr
    assert "parted from CopyOfAdam at step 37, tensor '0.weight'" in planted_run.stdout

    # at the default 1e-12 one ulp is equal, and the report still says where the bits first differ
    loose = _check(ours, "--against", f"{planted}:CopyOfAdam:plant_at=37")
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert "first bitwise difference at step 37, tensor '0.weight'" in loose.stdout


def test_the_planted_difference_is_one_ulp(planted):
    from diyopt.optim import getattr_from_file

    rule, cls = getattr_from_file(planted, "my_adam"), getattr_from_file(planted, "CopyOfAdam")
    report = lockstep(rule(), cls, {"plant_at": 37}, tol=0.0)
    diff = report.parted
    assert (diff.step, diff.param) == (37, "0.weight")
    # one ulp of the element moved: at most 2**-52 of the tensor's largest value
    assert 0 < diff.rel_error <= 2**-52
    assert report.steps_run == 37


def test_against_a_torch_class_with_settings_and_to_torch():
    out = _check("adam:lr=1e-2,amsgrad=true", "--against", "torch.optim:Adam:lr=1e-2,amsgrad=true", "--to-torch")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "equal to 1e-12 over 100 steps" in out.stdout
    wrong = _check("adam:lr=1e-2", "--against", "torch.optim:Adam:lr=1e-2,amsgrad=true", "--steps", "10")
    assert wrong.returncode == 1
    assert "parted from Adam at step" in wrong.stdout


@pytest.mark.parametrize(
    "ref,message",
    [
        ("torch.optim:Nope", "module 'torch.optim' has no 'Nope'"),
        ("no_such_module_xyz:Adam", "cannot import 'no_such_module_xyz' for --against"),
        ("torch.optim", "bad reference 'torch.optim': expected MODULE:Class"),
        ("torch.optim:Adam:lr", "bad setting 'lr'"),
    ],
)
def test_against_bad_input_is_one_line_and_exit_2(ref, message):
    out = _check("adam", "--against", ref)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_lockstep_reload_and_groups_match_torch_and_bad_arguments_are_refused():
    report = lockstep(
        diyopt.optim.sgd(lr=1e-2, momentum=0.9),
        torch.optim.SGD,
        {"lr": 1e-2, "momentum": 0.9},
        form="to_torch",
        groups=[{}, {"lr": 3e-2}],
        reload_at=50,
    )
    assert report.passed, report.summary()
    # a setting in the second group that only torch honours (diyopt's sgd has no such key) parts in a bias
    report = lockstep(
        diyopt.optim.sgd(lr=1e-2), torch.optim.SGD, {"lr": 1e-2, "weight_decay": 0.5}, form="to_torch", groups=[{}, {}]
    )
    assert not report.passed and report.parted.step == 1
    with pytest.raises(ValueError, match="need form='to_torch'"):
        lockstep(diyopt.optim.sgd(), torch.optim.SGD, groups=[{}, {}])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        lockstep(diyopt.optim.sgd(), torch.optim.SGD, steps=0)


def test_float32_runs_in_float32():
    report = lockstep(diyopt.optim.adam(lr=1e-2), torch.optim.Adam, {"lr": 1e-2}, dtype=torch.float32, tol=1e-5)
    assert report.passed, report.summary()
    assert report.first_difference is None or report.first_difference.rel_error < 1e-5
