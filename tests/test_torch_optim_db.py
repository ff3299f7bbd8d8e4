"""diyopt against torch's own optimizer test database (``torch.testing._internal.common_optimizers``).

For every ``OptimizerInfo`` in ``optim_db`` whose class diyopt has, every configuration of
``optim_inputs_func`` (those given for ``device="cpu"`` and those for ``device="cuda"``, run on CPU) drives
``diyopt.to_torch(diyopt.optim.<name>(**kwargs), ...)`` and ``torch.optim.<Class>(..., **kwargs)`` side by
side on the same float64 model, in three param-group shapes (one group; torch's
``test_param_groups_weight_decay`` shape; its ``test_param_groups_lr`` shape), under a float64 and under
a float32 default dtype (torch keeps its scalar state -- ``step``, NAdam's ``mu_product`` -- and tensor
learning rates in the default dtype). After every step the parameters, and every state entry both keep
under the same name, agree to 1e-12 relative.

Every ``optim_error_inputs_func`` case (the CPU ones: torch's ``test_errors`` is ``@onlyCPU``) is checked
too: the same error type and message regex, raised at construction or at the first step.

What is deliberately not matched is listed in ``NOT_MATCHED`` below, each with its reason.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("expecttest")  # common_optimizers imports it
from optim_db import TO_TORCH, records  # noqa: E402
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db  # noqa: E402

import diyopt  # noqa: E402

STEPS = 8
RTOL = 1e-12

# torch.optim class name -> diyopt.optim factory name: the records of the optimizer database
# (tests/optim_db.py) that are a whole torch class
DIYOPT_NAMES = {
    info.torch_cls.__name__: info.name for info in records(TO_TORCH) if info.torch_cls is not None and info.is_torch_cls
}

# The skip list: what diyopt deliberately does not do as torch does, and why. Keys are
# (class name, the error's regex or a configuration's kwarg).
NOT_MATCHED = {
    # torch.optim refuses capturable=True on CPU (an AssertionError at step: "params and state_steps must
    # be on supported devices"), so the CUDA configurations run torch with capturable=False as the
    # reference. diyopt accepts the flag and ignores it: its state never leaves the param's device and
    # its step never syncs with the host, so every diyopt step is "capturable" already.
    ("*", "capturable"): "torch cannot run capturable=True on CPU; reference is torch's capturable=False",
}
# Not in the database, and not matched bit for bit either (each far below 1e-12 per step):
# - torch's addcdiv_/addcmul_ parameter updates use a fused multiply-add; diyopt adds a separately computed
#   update (the contract: params + updates), so a param can differ by one ulp per step -- in a long chaotic
#   run (RMSprop with weight decay, 60+ steps) that can grow to ~1e-11.
# - float32 params under a float64 default: torch keeps NAdam's mu_product and ASGD's eta/mu in float64,
#   diyopt in float32 (the params' dtype), so a float32 run's state stays float32.
# - LBFGS on float32 params: torch's scalars are float32 tensors, diyopt's Python floats (double).

# Classes of torch's database that diyopt does not have as a to_torch optimizer yet, with the reason; every
# other class of optim_db must be in DIYOPT_NAMES (test_every_class_is_covered).
MISSING: dict[str, str] = {}

DB = {
    info.optim_cls.__name__: info
    for info in optim_db
    if info.optim_cls.__name__ in DIYOPT_NAMES and info.optim_cls.__name__ not in MISSING
}


def test_every_class_is_covered():
    classes = {info.optim_cls.__name__ for info in optim_db}
    assert classes <= set(DIYOPT_NAMES) | set(MISSING), classes - set(DIYOPT_NAMES) - set(MISSING)
    for name in set(DIYOPT_NAMES) - set(MISSING):
        assert DIYOPT_NAMES[name] in diyopt.optim.names(), name


DTYPES = {"f64default": torch.float64, "f32default": torch.float32}


def _configs(info, dtype):
    """Every configuration torch tests for this class, CPU's and CUDA's, made under ``dtype`` (a tensor lr
    is created in the default dtype), deduplicated."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        out, seen = [], set()
        for device in ("cpu", "cuda"):
            for oi in info.optim_inputs_func(device=device):
                key = (oi.desc, repr(oi.kwargs))
                if key not in seen:
                    seen.add(key)
                    out.append((oi.desc, oi.kwargs))
        return out
    finally:
        torch.set_default_dtype(old)


def _config_cases():
    cases = []
    for name, info in DB.items():
        for dname, dtype in DTYPES.items():
            for j, (desc, _) in enumerate(_configs(info, dtype)):
                for shape in ("one_group", "groups_weight_decay", "groups_lr"):
                    if shape != "one_group" and not info.supports_param_groups:
                        continue
                    cases.append(pytest.param(name, dname, j, shape, id=f"{name}-{dname}-{j}-{desc}-{shape}"))
    return cases


@pytest.fixture
def default_dtype(request):
    old = torch.get_default_dtype()
    yield lambda d: torch.set_default_dtype(d)
    torch.set_default_dtype(old)


def _torch_kwargs(kwargs: dict) -> dict:
    """The configuration for torch's side: the kwargs NOT_MATCHED names are left out there (only)."""
    dropped = {key for _, key in NOT_MATCHED}
    return {k: v for k, v in kwargs.items() if k not in dropped}


def _model(name: str, seed: int = 0):
    """Float64 params and ``loss(params, step)``; SparseAdam's are embedding tables with sparse grads."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    if name == "SparseAdam":
        tables = [torch.randn(10, 5, generator=g, dtype=f64), torch.randn(6, 5, generator=g, dtype=f64)]
        picks = [torch.randint(0, 6, (4,), generator=g) for _ in range(STEPS)]

        def loss(ps, step):
            i = picks[step]
            return sum(
                (torch.nn.functional.embedding(i, p, sparse=True) ** 2).sum() * (k + 1) for k, p in enumerate(ps)
            )

        return tables, loss
    weight = torch.randn(10, 5, generator=g, dtype=f64)
    second = torch.randn(10, generator=g, dtype=f64) if name != "Muon" else torch.randn(4, 3, generator=g, dtype=f64)
    inputs = torch.randn(STEPS, 5, generator=g, dtype=f64)
    if name == "Muon":
        x3 = torch.randn(STEPS, 3, generator=g, dtype=f64)

        def loss(ps, step):
            w, b = ps
            return (w.mv(inputs[step]) - 1).pow(2).sum() + torch.sin(b.mv(x3[step])).sum()

        return [weight, second], loss

    def loss(ps, step):
        w, b = ps
        return (w.mv(inputs[step]) + b).pow(2).sum() + 0.1 * torch.sin(w).sum()

    return [weight, second], loss


def _groups(shape: str, params: list, kwargs: dict, name: str, group_kwargs: dict | None = None):
    """torch's param-group shapes: ``(groups, constructor kwargs)``."""
    if shape == "one_group":
        return [{"params": params}], kwargs
    if shape == "groups_weight_decay":
        bias_kwargs = copy.deepcopy(kwargs)
        bias_kwargs["weight_decay"] = 0.0
        return [{"params": [params[0]], **kwargs}, {"params": [params[1]], **bias_kwargs}], {}
    # groups_lr: the configuration in the first group, an outer lr in the constructor for the second
    kw = dict(kwargs)
    if "lr" not in kw or (not isinstance(kw["lr"], torch.Tensor) and kw["lr"] == 0):
        kw["lr"] = 1e-3
    outer = {"lr": 1e-2}
    if name == "Rprop":
        outer["step_sizes"] = (0, 50)
    return [{"params": [params[0]], **kw}, {"params": [params[1]]}], outer


def assert_close(actual, expected, what):
    expected = expected.detach()
    if expected.is_sparse:
        expected = expected.to_dense()
    if actual.is_sparse:
        actual = actual.to_dense()
    expected = expected.to(torch.float64)
    actual = actual.detach().to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    err = (actual - expected).abs()
    scale = expected.abs() + expected.abs().max()
    bad = err > RTOL * scale
    if bool(bad.any()):
        worst = float((err / scale.clamp_min(1e-300)).max())
        raise AssertionError(f"{what}: relative error {worst:.3g} > {RTOL}")


def _run(name, dname, j, shape, default_dtype, diyopt_side: bool):
    dtype = DTYPES[dname]
    default_dtype(dtype)
    info = DB[name]
    _, kwargs = _configs(info, dtype)[j]
    params0, loss = _model(name)
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    if diyopt_side:
        factory = getattr(diyopt.optim, DIYOPT_NAMES[name])
        groups, outer = _groups(shape, params, kwargs, name)
        opt = diyopt.to_torch(factory(**outer), groups)
    else:
        groups, outer = _groups(shape, params, _torch_kwargs(kwargs), name)
        groups = [_torch_kwargs(g) for g in groups]
        opt = info.optim_cls(groups, **outer)
    return opt, params, loss


@pytest.mark.parametrize("name,dname,j,shape", _config_cases())
def test_configuration_matches_torch(name, dname, j, shape, default_dtype):
    ours, ps, loss = _run(name, dname, j, shape, default_dtype, True)
    ref, qs, _ = _run(name, dname, j, shape, default_dtype, False)
    # L-BFGS runs up to 20 iterations per step: 4 steps carry the history across calls all the same
    for step in range(4 if name == "LBFGS" else STEPS):
        for opt, params in ((ours, ps), (ref, qs)):

            def closure(opt=opt, params=params, step=step):
                opt.zero_grad()
                value = loss(params, step)
                value.backward()
                return value

            if DB[name].step_requires_closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
        if name == "LBFGS":  # the history carried across step() calls: iterations and evaluations so far
            mine, theirs = ours.state[ps[0]], ref.state[qs[0]]
            assert (mine["n_iter"], mine["func_evals"]) == (theirs["n_iter"], theirs["func_evals"])
            assert len(mine["old_dirs"]) == len(theirs["old_dirs"])
        for k, (p, q) in enumerate(zip(ps, qs)):
            assert_close(p, q, f"step {step}, param {k}")
            if name == "LBFGS":
                continue
            for key, value in ref.state[q].items():
                if isinstance(value, torch.Tensor) and key in ours.state[p]:
                    assert_close(ours.state[p][key], value, f"step {step}, param {k}, state {key!r}")


# ---------------------------------------------------------------- error inputs


def _error_cases():
    cases = []
    for name, info in DB.items():
        if info.optim_error_inputs_func is None:
            continue
        for j, ei in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            cases.append(pytest.param(name, j, id=f"{name}-{j}-{ei.optimizer_error_input.desc}"))
    return cases


def _sample_params(name):
    return [torch.nn.Parameter(torch.randn(2, 3))]


@pytest.mark.parametrize("name,j", _error_cases())
def test_error_input_matches_torch(name, j):
    info = DB[name]
    ei = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)[j]
    oi = ei.optimizer_error_input
    params = oi.params if oi.params is not None else _sample_params(name)
    factory = getattr(diyopt.optim, DIYOPT_NAMES[name])
    warns = issubclass(ei.error_type, Warning)

    def construct():
        return diyopt.to_torch(factory(**oi.kwargs), params)

    if ei.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        if warns:
            with pytest.warns(ei.error_type, match=ei.error_regex):
                construct()
        else:
            with pytest.raises(ei.error_type, match=ei.error_regex):
                construct()
        return
    opt = construct()
    # give every param a gradient, as torch's test does, so the step reaches the check
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.rand_like(p)
    if warns:
        with pytest.warns(ei.error_type, match=ei.error_regex):
            opt.step()
    else:
        with pytest.raises(ei.error_type, match=ei.error_regex):
            opt.step()


# ---------------------------------------------------------------- beyond the database


def test_muon_routes_other_params_to_another_rule_with_masked():
    """The documented way: Muon on the matrices, AdamW on the rest, equal to torch's Muon + AdamW."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    twin = copy.deepcopy(model)
    matrices = {n for n, p in model.named_parameters() if p.ndim == 2}
    T = diyopt.transforms
    ours = diyopt.to_torch(
        diyopt.chain(
            T.masked(diyopt.optim.muon(lr=0.02), matrices),
            T.masked(diyopt.optim.adamw(lr=1e-2), lambda n: n not in matrices),
        ),
        model,
    )
    refs = [
        torch.optim.Muon([p for p in twin.parameters() if p.ndim == 2], lr=0.02),
        torch.optim.AdamW([p for p in twin.parameters() if p.ndim != 2], lr=1e-2),
    ]
    x = torch.randn(6, 16, 5, dtype=torch.float64)
    for step in range(6):
        for m, opts in ((model, [ours]), (twin, refs)):
            for o in opts:
                o.zero_grad()
            (m(x[step]) ** 2).mean().backward()
            for o in opts:
                o.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_close(p, q, f"step {step}")
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        diyopt.to_torch(diyopt.optim.muon(), model)  # the biases, unrouted: torch's error, at construction


def test_sparse_adam_trains_an_embedding_and_refuses_dense_grads():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(12, 3, sparse=True).double()
    twin = copy.deepcopy(emb)
    ours = diyopt.to_torch(diyopt.optim.sparse_adam(lr=0.1), emb)
    ref = torch.optim.SparseAdam(twin.parameters(), lr=0.1)
    for step in range(5):
        idx = torch.tensor([step, 3, 3, 7])
        for m, o in ((emb, ours), (twin, ref)):
            o.zero_grad()
            (m(idx) ** 2).sum().backward()
            o.step()
        assert_close(emb.weight, twin.weight, f"step {step}")
    untouched = [i for i in range(12) if i not in (0, 1, 2, 3, 4, 7)]
    assert torch.equal(emb.weight[untouched], twin.weight[untouched])
    dense = torch.nn.Linear(3, 1).double()
    opt = diyopt.to_torch(diyopt.optim.sparse_adam(), dense)
    dense(torch.ones(1, 3, dtype=torch.float64)).sum().backward()
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        opt.step()
    with pytest.raises(RuntimeError, match="adam does not support sparse gradients"):
        other = diyopt.to_torch(diyopt.optim.adam(), emb)
        emb(torch.tensor([1])).sum().backward()
        other.step()
