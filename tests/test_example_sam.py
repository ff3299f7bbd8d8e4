"""examples/sam.py: a user's SAM in ~30 lines equals diyopt.optim.sam, pytorch_optimizer.SAM and the
paper's Algorithm 1 (tests/test_contract.py writes it out), in fit and through to_torch; the script runs."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diyopt

sys.path.insert(0, str(Path(__file__).parent))
from contract_cases import mlp, named  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sam.py"
po = pytest.importorskip("pytorch_optimizer")


def my_sam():
    spec = importlib.util.spec_from_file_location("user_sam", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.my_sam


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_the_users_sam_equals_the_builtin_and_pytorch_optimizer(dtype):
    model, loss_fn = mlp(dtype)
    mine = diyopt.fit(loss_fn, named(model), my_sam()(diyopt.optim.sgd(lr=0.1), rho=0.05), 100)
    builtin = diyopt.fit(loss_fn, named(model), diyopt.optim.sam(diyopt.optim.sgd(lr=0.1), rho=0.05), 100)
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # the same math; the built-in runs on one flat buffer
    for k in mine.params:
        torch.testing.assert_close(mine.params[k], builtin.params[k], rtol=tol, atol=tol)
    # through to_torch, in lockstep with pytorch_optimizer.SAM (its norm is float32: 1e-6 in float64)
    ref_model = copy.deepcopy(model)
    ref = po.SAM(ref_model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    opt = diyopt.to_torch(my_sam()(diyopt.optim.sgd(lr=0.1), rho=0.05), model)

    def closure_of(o, m):
        def closure():
            o.zero_grad()
            loss = loss_fn(dict(m.named_parameters()))
            loss.backward()
            return loss

        return closure

    for step in range(100):
        opt.step(closure_of(opt, model))
        closure_of(ref, ref_model)()
        ref.step(closure_of(ref, ref_model))
        for (k, a), b in zip(model.named_parameters(), ref_model.parameters()):
            tol = 1e-6 if dtype == torch.float64 else 5e-5
            assert float((a - b).detach().abs().max()) <= tol * max(1.0, float(b.detach().abs().max())), (step, k)


@pytest.mark.slow  # a fresh interpreter: importing torch and diyopt dominates (~10-60 s on a busy machine)
def test_the_example_runs():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fit_line, torch_line = proc.stdout.splitlines()
    start, end = map(float, fit_line.removeprefix("fit: loss ").split(" -> "))
    assert end < start / 10  # it trains
    assert float(torch_line.removeprefix("to_torch: loss ")) < end
