"""The extended contract (docs/contract.md): SAM, schedule-free, lookahead and EMA in every form.

Each optimizer runs in lockstep with an independent reference -- the ``schedulefree`` package,
``pytorch_optimizer``, ``torch.optim.swa_utils.AveragedModel``, SAM's Algorithm 1 written out here -- on
a small MLP (2-D weights, 1-D biases), every step compared, in float64 and float32; then through
``to_torch`` with two param groups and a ``state_dict`` reload halfway; then through every form of
diyopt (eager and compiled fit, sweep, checkpoint + SIGKILL + resume) or its refusal; ``torchrun`` (at the
end) runs these and the recent optimizers (muon_adamw, soap, prodigy, adopt, adan) in one launch.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diyopt
from diyopt import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).parent))
from contract_cases import CASES, MINE, RECENT, killed_run, loss64, mlp, named, p0, train_loop  # noqa: E402

from diyopt.optim import ema  # noqa: E402

schedulefree = pytest.importorskip("schedulefree")
po = pytest.importorskip("pytorch_optimizer")
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

DTYPES = [torch.float64, torch.float32]
STEPS = 123  # not a multiple of lookahead's k: its slow and fast weights differ at the end

# Relative tolerance per dtype, with its cause. float64: the references compute the same formulas in
# another order (in place, foreach) -- rounding only. float32: the same, amplified over 120 steps.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
# pytorch_optimizer.SAM forms the gradient norm in float32 whatever the params' dtype
# (utils/gradient.py: ``.float().square_()``), so in float64 it agrees only to float32 rounding of the
# ascent step's length; Algorithm 1 below is the float64 reference.
SAM_REF_TOL = {torch.float64: 1e-6, torch.float32: 5e-5}


def grads_at(loss_fn, params: dict) -> dict:
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    return dict(zip(leaves, torch.autograd.grad(loss_fn(leaves), list(leaves.values()))))


def pure_steps(opt: diyopt.Optimizer, params: dict, loss_fn, steps: int):
    """The contract itself, no engine: ``update(grads, state, params, grad_fn=...)`` and apply."""
    state = opt.init(params)
    for _ in range(steps):
        extra = {"grad_fn": lambda at: grads_at(loss_fn, at)} if "grad_fn" in opt.extra_args else {}
        updates, state = opt.update(grads_at(loss_fn, params), state, params, **extra)
        params = diyopt.apply_updates(params, updates)
        yield params, state


def assert_close(got: dict, want: dict, rtol: float, what: str = "") -> None:
    """Every tensor within ``rtol`` of the reference, relative to its largest entry (or 1, for a bias
    near zero)."""
    for k in want:
        scale = max(float(want[k].abs().max()), 1.0)
        err = float((got[k] - want[k]).detach().abs().max()) / scale
        assert err <= rtol, f"{what} {k}: relative error {err:.3g} > {rtol:.0e}"


# ---------------------------------------------------------------- the references, one record each


class RefRun:
    """A reference optimizer training ``model`` in place: ``step``, its params, its evaluation params
    (through its own API), and a reload from its ``state_dict`` into a fresh instance."""

    def __init__(self, case: str, model: torch.nn.Module, groups: list[dict] | None = None):
        self.case, self.model = case, model
        self.groups = groups
        self.opt = self._build()
        self.avg = None
        if case == "ema":
            self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))

    def _params(self):
        if self.groups is None:
            return list(self.model.parameters())
        ps = list(self.model.parameters())
        return [{"params": ps[:2], **self.groups[0]}, {"params": ps[2:], **self.groups[1]}]

    def _build(self):
        ps, c = self._params(), self.case
        if c == "schedule_free_sgd":
            opt = schedulefree.SGDScheduleFree(ps, lr=0.1, momentum=0.9, weight_decay=0.01, warmup_steps=10)
        elif c == "schedule_free_adamw":
            opt = schedulefree.AdamWScheduleFree(ps, lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=10)
        elif c == "sam":
            return po.SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        elif c == "sam_adaptive":
            return po.SAM(ps, torch.optim.Adam, rho=0.5, adaptive=True, lr=0.01)
        elif c == "lookahead":
            return po.Lookahead(torch.optim.Adam(ps, lr=0.01), k=5, alpha=0.5)
        else:
            return torch.optim.Adam(ps, lr=0.01)
        opt.train()  # schedulefree starts in eval mode
        return opt

    def step(self, loss_fn) -> None:
        def closure():
            self.opt.zero_grad()
            loss = loss_fn(dict(self.model.named_parameters()))
            loss.backward()
            return loss

        closure()
        if self.case.startswith("sam"):
            self.opt.step(closure)  # pytorch_optimizer.SAM: gradients first, then step(closure)
        else:
            self.opt.step()
        if self.avg is not None:
            self.avg.update_parameters(self.model)

    def params(self) -> dict:
        return named(self.model)

    def eval_params(self) -> dict:
        if self.case.startswith("schedule_free"):
            model, opt = copy.deepcopy((self.model, self.opt))  # one deepcopy keeps params <-> state links
            opt.eval()
            return named(model)
        if self.case == "lookahead":  # what its backup_and_load_cache() puts into the params
            return {k: self.opt.state[p]["slow_params"].clone() for k, p in self.model.named_parameters()}
        if self.case == "ema":
            return {k.removeprefix("module."): v.detach().clone() for k, v in self.avg.named_parameters()}
        return self.params()

    def reload(self) -> None:
        saved = copy.deepcopy(self.opt.state_dict())
        self.opt = self._build()
        self.opt.load_state_dict(saved)


def tol(case: str, dtype: torch.dtype) -> float:
    return (SAM_REF_TOL if case.startswith("sam") else TOL)[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_lockstep_with_the_reference(case, dtype):
    """Every step: the training params equal the reference's; at the end the evaluation params too."""
    model, loss_fn = mlp(dtype)
    start = named(model)
    ref = RefRun(case, model)
    opt = MINE[case]()
    for step, (params, state) in enumerate(pure_steps(opt, start, loss_fn, STEPS)):  # noqa: B007 (state: the last)
        ref.step(loss_fn)
        assert_close(params, ref.params(), tol(case, dtype), f"step {step}")
    evaluated = opt.eval_params(state, params) if opt.eval_params is not None else params
    assert_close(evaluated, ref.eval_params(), tol(case, dtype), "eval params")
    if case in ("schedule_free_sgd", "schedule_free_adamw", "lookahead", "ema"):
        assert not torch.equal(evaluated["0.weight"], params["0.weight"])  # they do differ


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_to_torch_two_groups_and_a_reload_halfway(case, dtype):
    """to_torch with two param groups (the second with its own lr where the case allows), its state_dict
    loaded into a fresh instance halfway, .eval()/.train() round trips on the way: equal to the reference
    run the same way, training params every step, evaluation params at the end."""
    groups = [{}, {}] if case.startswith("sam") else [{}, {"lr": 0.05}]
    model, loss_fn = mlp(dtype)
    twin = copy.deepcopy(model)
    ref = RefRun(case, twin, groups)

    def build():
        ps = list(model.named_parameters())
        return diyopt.to_torch(MINE[case](), [{"params": ps[:2], **groups[0]}, {"params": ps[2:], **groups[1]}])

    opt = build()

    def closure():
        opt.zero_grad()
        loss = loss_fn(dict(model.named_parameters()))
        loss.backward()
        return loss

    for step in range(STEPS):
        if step == STEPS // 2:
            saved = copy.deepcopy(opt.state_dict())
            opt = build()
            opt.load_state_dict(saved)
            ref.reload()
        if step % 7 == 3:  # evaluating mid-run leaves training bitwise where it was
            before = named(model)
            opt.eval()
            opt.train()
            assert all(torch.equal(v, before[k]) for k, v in named(model).items())
        if "grad_fn" in opt.optimizer.extra_args:
            opt.step(closure)
        else:
            closure()
            opt.step()
        ref.step(loss_fn)
        assert_close(named(model), ref.params(), tol(case, dtype), f"step {step}")
    opt.eval()
    assert_close(named(model), ref.eval_params(), tol(case, dtype), "eval params")


@pytest.mark.parametrize("case", CASES)
def test_an_lr_scheduler_reaches_the_base(case):
    """torch.optim.lr_scheduler.StepLR on to_torch(...) changes the lr each optimizer uses, as it does on
    the reference (for the wrappers: the base's lr, through the wrapper's param groups)."""
    model, loss_fn = mlp(torch.float64)
    twin = copy.deepcopy(model)
    ref = RefRun(case, twin)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref.opt, step_size=15, gamma=0.3)
    opt = diyopt.to_torch(MINE[case](), model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=15, gamma=0.3)

    def closure():
        opt.zero_grad()
        loss = loss_fn(dict(model.named_parameters()))
        loss.backward()
        return loss

    for step in range(60):
        if opt.optimizer.extra_args:
            opt.step(closure)
        else:
            closure()
            opt.step()
        ref.step(loss_fn)
        sched.step()
        ref_sched.step()
        assert_close(named(model), ref.params(), tol(case, torch.float64), f"step {step}")
    lr = opt.param_groups[0]["lr"]
    assert lr == pytest.approx(ref.opt.param_groups[0]["lr"]) and lr < MINE[case]().hyperparams["lr"]


# ---------------------------------------------------------------- SAM against the paper


def algorithm_1(params: dict, loss_fn, steps: int, lr: float, rho: float, adaptive: bool):
    r"""Foret et al. (2021), Algorithm 1, with SGD as the base (and ASAM's :math:`T_w = |w|`, Kwon et al.
    2021, eq. 8, when ``adaptive``), written out with nothing of diyopt's:
    :math:`\hat\epsilon = \rho\, T^2 g / \lVert T g\rVert_2`, :math:`w \leftarrow w - \eta \nabla L(w + \hat\epsilon)`."""
    w = [v.clone() for v in params.values()]
    names = list(params)
    out = []
    for _ in range(steps):
        leaves = [v.detach().requires_grad_() for v in w]
        g = torch.autograd.grad(loss_fn(dict(zip(names, leaves))), leaves)
        t = [v.abs() if adaptive else torch.ones_like(v) for v in w]
        norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
        eps = [rho * ti * ti * gi / norm for ti, gi in zip(t, g)]
        at = [(v + e).detach().requires_grad_() for v, e in zip(w, eps)]
        g_sam = torch.autograd.grad(loss_fn(dict(zip(names, at))), at)
        w = [v - lr * gs for v, gs in zip(w, g_sam)]
        out.append(dict(zip(names, w)))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_is_algorithm_1_of_the_paper(adaptive, dtype):
    """Every step of sam(sgd) equals Algorithm 1 written out, to rounding (float64: 1e-12)."""
    model, loss_fn = mlp(dtype)
    rho = 0.5 if adaptive else 0.05
    want = algorithm_1(named(model), loss_fn, STEPS, lr=0.1, rho=rho, adaptive=adaptive)
    opt = diyopt.optim.sam(diyopt.optim.sgd(lr=0.1), rho=rho, adaptive=adaptive, perturb_eps=0.0)
    for step, ((params, _), ref) in enumerate(zip(pure_steps(opt, named(model), loss_fn, STEPS), want)):
        assert_close(params, ref, TOL[dtype], f"step {step}")
    # and the fit loop (one flat buffer, its own gradient evaluation) is the same algorithm
    r = diyopt.fit(loss_fn, named(model), opt, STEPS)
    assert_close(r.params, want[-1], TOL[dtype], "fit")
    assert r.params_are == "train" and r.train_params is None


# ---------------------------------------------------------------- every form


@pytest.mark.parametrize("case", CASES)
def test_eager_fit_is_the_pure_contract_and_reports_the_eval_params(case):
    """fit's loop (flat buffer, its own grad_fn) equals the pure update loop; Result.params are the
    evaluation params, Result.train_params the training params where they differ."""
    loss_fn, opt = loss64(), MINE[case]()
    *_, (params, state) = pure_steps(opt, p0(), loss_fn, 50)
    r = diyopt.fit(loss_fn, p0(), opt, 50)
    evaluated = diyopt.eval_params(opt, state, params)
    assert_close(r.params, evaluated, 1e-13, "params")
    if opt.eval_params is None:
        assert r.params_are == "train" and r.train_params is None
    else:
        assert r.params_are == "eval"
        assert_close(r.train_params, params, 1e-13, "train params")
    # the recorded loss is the loss at the training params before each update
    assert torch.allclose(r.losses[0], loss_fn(p0()).detach(), rtol=1e-15)


@pytest.mark.parametrize("case", CASES)
def test_nfev_counts_the_updates_own_evaluations(case, tmp_path):
    """SAM's gradient at the ascent point is an evaluation of the loss and its gradient: nfev = njev =
    2 per step (1 for the others) -- the loss's calls counted from outside, less the one evaluation made only
    to report (the loss at the evaluation params, where they differ: ``core/result.py`` does not count
    those), and the same after a checkpoint + resume."""
    steps, base = 20, loss64()
    calls = 0

    def loss_fn(p):
        nonlocal calls
        calls += 1
        return base(p)

    opt = MINE[case]()
    r = diyopt.fit(loss_fn, p0(), opt, steps)
    derived = steps * (2 if case.startswith("sam") else 1)
    assert r.nfev == r.njev == derived == calls - (opt.eval_params is not None)
    for done in (steps // 2, steps - 1, steps):  # 10, 1 and 0 steps left after the resume
        ck = str(tmp_path / f"run{done}.pt")
        diyopt.fit(base, p0(), opt, done, checkpoint=ck)
        resumed = diyopt.fit(base, p0(), opt, steps, checkpoint=ck, resume=True)
        assert resumed.nfev == resumed.njev == derived, done


@pytest.mark.slow  # ~10-40 s each on a busy 2-core machine: Dynamo traces four steps of the whole fit
@pytest.mark.parametrize("case", CASES)
def test_compiled_fit_equals_eager(case):
    """The whole step traced by torch.compile (aot_eager: Dynamo's graph, no code generation, so the test
    stays fast; Inductor compiles that same graph) -- grad_fn inside the graph for SAM."""
    loss_fn, opt = loss64(), MINE[case]()
    eager = diyopt.fit(loss_fn, p0(), opt, 24)
    compiled = diyopt.fit(loss_fn, p0(), opt, 24, engine="compiled", backend="aot_eager", chunk=4)
    assert compiled.params_are == eager.params_are
    derived = 24 * (2 if case.startswith("sam") else 1)
    assert compiled.nfev == compiled.njev == eager.nfev == derived
    assert_close(compiled.params, eager.params, 1e-12, "params")
    torch.testing.assert_close(compiled.losses, eager.losses, rtol=1e-12, atol=0)
    if eager.train_params is not None:
        assert_close(compiled.train_params, eager.train_params, 1e-12, "train params")


@pytest.mark.slow  # Inductor's code generation: a minute or more on a busy 2-core machine
def test_compiled_fit_with_inductor_equals_eager():
    """SAM around schedule-free SGD -- grad_fn, lerp, where and the evaluation params -- through
    Inductor (the default backend), one graph for the whole step."""
    loss_fn = loss64()
    opt = diyopt.optim.sam(MINE["schedule_free_sgd"](), rho=0.05)
    eager = diyopt.fit(loss_fn, p0(), opt, 24)
    compiled = diyopt.fit(loss_fn, p0(), opt, 24, engine="compiled", chunk=4)
    assert compiled.params_are == eager.params_are == "eval"
    assert_close(compiled.params, eager.params, 1e-12, "params")
    assert_close(compiled.train_params, eager.train_params, 1e-12, "train params")


@pytest.mark.parametrize("case", CASES)
def test_sweep_run_k_equals_a_single_fit(case):
    """vmapped runs over a grid of lr: run k is fit with run k's lr, evaluation params reported."""
    loss_fn, opt = loss64(), MINE[case]()
    lrs = [0.01, 0.05]
    s = diyopt.sweep(loss_fn, p0(), opt, 40, grid={"lr": lrs})
    for k, lr in enumerate(lrs):
        r = diyopt.fit(loss_fn, p0(), opt.replace_hyperparams(lr=lr), 40)
        assert_close(s.run_params(k), r.params, 1e-12, f"run {k}")
        torch.testing.assert_close(s.losses[k], r.losses, rtol=1e-12, atol=0)
        assert s.rows[k]["final_loss"] == pytest.approx(float(loss_fn(r.params)), rel=1e-12)


def forkserver():
    """Children forked from a server with diyopt imported start in milliseconds, not a fresh interpreter;
    the server never ran torch itself, so forking it is safe (as tests/test_checkpoint.py does)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["diyopt", "contract_cases"])
    return ctx


@pytest.mark.parametrize("case", CASES)
def test_sigkill_then_resume_is_bitwise_and_the_checkpoint_holds_the_eval_params(tmp_path, case):
    """A real SIGKILL mid-run, then resume=True: params, training params and losses bitwise the
    uninterrupted run's. The checkpoint's params are the evaluation params (the file says so), and the
    training params beside them are what training continues from."""
    opt = MINE[case]()
    ref = diyopt.fit(loss64(), p0(), opt, 60, checkpoint=tmp_path / "ref.pt", checkpoint_every=10)
    path = tmp_path / "run.pt"
    child = forkserver().Process(target=killed_run, args=(case, str(path)))  # killed past step 37
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    payload = ckpt.load(path)
    assert payload["step"] == 30
    mid = diyopt.fit(loss64(), p0(), opt, 30)  # the run as it was at step 30
    if mid.params_are == "eval":
        assert payload["params_are"] == "eval"
        assert all(torch.equal(payload["params"][k], mid.params[k]) for k in mid.params)
        assert all(torch.equal(payload["train_params"][k], mid.train_params[k]) for k in mid.params)
    else:
        assert "train_params" not in payload
    r = diyopt.fit(loss64(), p0(), opt, 60, checkpoint=path, checkpoint_every=10, resume=True)
    assert torch.equal(r.losses, ref.losses)
    assert all(torch.equal(r.params[k], ref.params[k]) for k in ref.params)
    if ref.train_params is not None:
        assert all(torch.equal(r.train_params[k], ref.train_params[k]) for k in ref.params)


# ---------------------------------------------------------------- refusals, each naming the form


def test_to_torch_sam_needs_a_closure():
    model, _ = mlp(torch.float64)
    opt = diyopt.to_torch(MINE["sam"](), model)
    with pytest.raises(RuntimeError, match=r"sam needs step\(closure\): its update takes grad_fn"):
        opt.step()


def test_to_torch_sam_refuses_groups_with_different_hyperparameters():
    model, loss_fn = mlp(torch.float64)
    ps = list(model.parameters())
    opt = diyopt.to_torch(MINE["sam"](), [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5}])

    def closure():
        opt.zero_grad()
        loss = loss_fn(dict(model.named_parameters()))
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"to_torch\(sam\): param groups differ in lr"):
        opt.step(closure)


def test_to_torch_compiled_refuses_an_update_with_extra_inputs():
    model, loss_fn = mlp(torch.float64)
    opt = diyopt.to_torch(MINE["sam"](), model, compiled=True)
    with pytest.raises(ValueError, match=r"to_torch\(sam, compiled=True\).*use compiled=False"):
        opt.step(lambda: loss_fn(dict(model.named_parameters())))


def test_to_torch_step_in_eval_mode_is_refused_and_a_state_dict_saved_there_resumes_bitwise():
    """schedulefree's rule (step only in train mode); a state_dict taken in eval mode carries the training
    params, so loading it and calling train() continues bitwise where the run was."""
    model, loss_fn = mlp(torch.float64)
    opt = diyopt.to_torch(MINE["schedule_free_adamw"](), model)
    for _ in range(5):
        opt.zero_grad()
        loss_fn(dict(model.named_parameters())).backward()
        opt.step()
    train = named(model)
    opt.eval()
    assert not torch.equal(named(model)["0.weight"], train["0.weight"])
    with pytest.raises(RuntimeError, match=r"schedule_free_adamw is in eval mode.*call \.train\(\)"):
        opt.step()
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    fresh_model, _ = mlp(torch.float64)
    fresh_model.load_state_dict(saved_model)
    fresh = diyopt.to_torch(MINE["schedule_free_adamw"](), fresh_model)
    fresh.load_state_dict(saved_opt)
    with pytest.raises(RuntimeError, match="eval mode"):
        fresh.step()
    fresh.train()
    assert all(torch.equal(v, train[k]) for k, v in named(fresh_model).items())


def test_an_update_called_without_its_extra_input_says_what_supplies_it():
    opt = MINE["sam"]()
    wrapped = diyopt.transforms.masked(opt, lambda n: True)  # masked passes no extra inputs on
    params = p0()
    with pytest.raises(TypeError, match=r"sam's update needs params and grad_fn="):
        wrapped.update(grads_at(loss64(), params), wrapped.init(params), params)


def test_an_extra_input_no_engine_has_is_refused():
    plain = diyopt.optim.sgd(lr=0.1)
    odd = plain._replace(extra_args=frozenset({"hessian"}))
    with pytest.raises(TypeError, match=r"asks for \['hessian'\], which no engine supplies"):
        diyopt.fit(loss64(), p0(), odd, 3)


def test_chain_passes_each_transform_only_what_it_declares():
    seen = {}

    def wants_loss():
        def update(grads, state, params=None, *, loss):
            seen["loss"] = loss
            return grads, state

        return diyopt.Optimizer(lambda p: (), update, extra_args=frozenset({"loss"}))

    opt = diyopt.chain(wants_loss(), diyopt.transforms.scale_by_lr(0.1))  # scale_by_lr takes no extras
    assert opt.extra_args == {"loss"}
    loss_fn = loss64()
    r = diyopt.fit(loss_fn, p0(), opt, 3)
    assert float(seen["loss"]) == float(r.losses[-1])


# ---------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import socket

    out = tmp_path_factory.mktemp("dist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(Path(__file__).parent / "contract_dist_worker.py"),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "found.pt", weights_only=True)


@pytest.mark.slow  # one torchrun launch of two processes for all of them, ~30-60 s
@pytest.mark.parametrize("case", CASES + list(RECENT))
def test_torchrun_two_ranks_equal_one_process(two_ranks, case):
    """fit(..., distributed="mean") and to_torch under DDP, each rank on half the points, equal one
    process on all of them: SAM's second gradient is all-reduced too (fit's grad_fn, DDP's backward in
    the closure), and the evaluation params agree."""
    assert two_ranks["world"] == 2
    # SOAP takes its first eigenbasis from eigh of a rank-deficient matrix, whose null-space basis moves
    # by O(1) for a last-bit change in the gradient (a 1-ulp different all-reduced mean parted by 3e-3):
    # its one process computes the same mean of the two halves' losses, rounded as the ranks round it
    halves = case == "soap"
    model, loss_fn = mlp(torch.float64, halves=halves)
    make = {**MINE, **RECENT}[case]
    ref = diyopt.fit(loss_fn, named(model), make(), 100)
    got = two_ranks[f"fit:{case}"]
    assert_close(got["params"], ref.params, 1e-12, "fit")
    torch.testing.assert_close(got["losses"], ref.losses, rtol=1e-12, atol=0)
    model, _ = mlp(torch.float64)
    ref = train_loop(make, model, 100, halves=halves)
    for which in ("train", "eval"):
        assert_close(two_ranks[f"ddp:{case}"][which], ref[which], 1e-12, f"ddp {which}")


# ---------------------------------------------------------------- result.json


def test_result_json_holds_the_eval_params_and_says_so(tmp_path):
    """``diyopt fit`` with an EMA of Adam from a user's file: result.json's params are the EMA (equal to
    Result.params of the same fit), ``params_are`` says so, the training params are beside them, and
    ``final_loss`` is the loss at the params it reports."""
    import json

    from diyopt.cli import main

    rules = tmp_path / "rules.py"
    rules.write_text(
        "import diyopt\n\n\ndef averaged(lr=0.01):\n    return diyopt.optim.ema(diyopt.optim.adam(lr=lr), decay=0.9)\n"
    )
    out = tmp_path / "out"
    assert (
        main(["fit", "--problem", "rosenbrock", "--optimizer", f"{rules}:averaged", "--steps", "50", "--out", str(out)])
        == 0
    )
    written = json.loads((out / "result.json").read_text())
    problem = diyopt.problems.get("rosenbrock")
    r = diyopt.fit(problem.loss, problem.params0, ema(diyopt.optim.adam(lr=0.01), decay=0.9), 50)
    assert written["params_are"] == "eval" == r.params_are
    assert written["params"] == {k: v.reshape(-1).tolist() for k, v in r.params.items()}
    assert written["train_params"] == {k: v.reshape(-1).tolist() for k, v in r.train_params.items()}
    assert written["final_loss"] == float(problem.loss(r.params)) != float(r.losses[-1])


def test_the_docstring_examples_run():
    import doctest

    from diyopt.optim import _schedule_free, _wrappers

    for module in (_wrappers, _schedule_free):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_a_callback_sees_what_result_params_would_be():
    """A callback that stops the fit sees the params the fit then returns: the evaluation params."""
    seen = {}

    def stop_at_20(step, loss, params):
        seen.update({k: v.clone() for k, v in params.items()})
        return step == 19

    for engine in ("eager", "compiled"):
        extra = {"backend": "aot_eager", "chunk": 1} if engine == "compiled" else {}
        r = diyopt.fit(loss64(), p0(), MINE["ema"](), 100, callback=stop_at_20, engine=engine, **extra)
        assert r.stop_reason == "callback" and r.steps == 20 and r.params_are == "eval"
        assert all(torch.equal(seen[k], r.params[k]) for k in r.params), engine


def test_to_torch_passes_the_closures_loss_to_an_update_that_takes_it():
    seen = []

    def wants_loss():
        def update(grads, state, params=None, *, loss):
            seen.append(float(loss))
            return grads, state

        return diyopt.Optimizer(lambda p: (), update, extra_args=frozenset({"loss"}))

    model, loss_fn = mlp(torch.float64)
    opt = diyopt.to_torch(diyopt.chain(wants_loss(), diyopt.transforms.scale_by_lr(0.1)), model)
    with pytest.raises(RuntimeError, match=r"needs step\(closure\): its update takes loss"):
        opt.step()

    def closure():
        opt.zero_grad()
        loss = loss_fn(dict(model.named_parameters()))
        loss.backward()
        return loss

    returned = [float(opt.step(closure)) for _ in range(3)]
    assert seen == returned
