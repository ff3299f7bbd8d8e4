"""The recent optimizers (issue 14) in lockstep with their references, through the one harness
(``diyopt.analysis.lockstep``, what ``diyopt check --against`` runs).

Each row of ``ROWS``: the diyopt name, the reference class, settings that together cover every flag (one
dict builds both: the factories take the references' argument names), and the tolerance with its cause.
Every setting runs 100 steps on the harness's MLP (``4 -> 8 -> 3``: matrices and biases) in float64; one
per row in float32; one per row through ``to_torch`` with two param groups and a ``state_dict`` reload
after 50 steps. ``diyopt.optim.muon`` itself runs every configuration of torch's optim database.
"""

from __future__ import annotations

import copy

import pytest
import torch

import diyopt
from diyopt.analysis import lockstep

po = pytest.importorskip("pytorch_optimizer")
prodigyopt = pytest.importorskip("prodigyopt")

STEPS = 100


class MuonAdamW:
    """The reference for ``muon_adamw``: ``torch.optim.Muon`` on the 2-D params, ``torch.optim.AdamW`` on
    the rest -- the two optimizers torch's Muon docs tell users to run side by side -- behind one
    torch.optim-style object (``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``)."""

    MUON = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")

    def __init__(
        self, params, adamw_lr=1e-3, adamw_betas=(0.9, 0.999), adamw_eps=1e-8, adamw_weight_decay=1e-2, **muon_kwargs
    ):
        groups = list(params)
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        adamw = {"lr": adamw_lr, "betas": adamw_betas, "eps": adamw_eps, "weight_decay": adamw_weight_decay}

        def split(keep, own_keys, renamed):
            out = []
            for g in groups:
                ps = [p for p in g["params"] if keep(p)]
                if ps:
                    extra = {renamed.get(k, k): v for k, v in g.items() if k in own_keys}
                    out.append({"params": ps, **extra})
            return out

        self.muon = torch.optim.Muon(split(lambda p: p.ndim == 2, self.MUON, {}), **muon_kwargs)
        self.adamw = torch.optim.AdamW(split(lambda p: p.ndim != 2, {"adamw_lr"}, {"adamw_lr": "lr"}), **adamw)

    def zero_grad(self):
        self.muon.zero_grad()
        self.adamw.zero_grad()

    def step(self):
        self.muon.step()
        self.adamw.step()

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, sd):
        self.muon.load_state_dict(sd["muon"])
        self.adamw.load_state_dict(sd["adamw"])


class OnePerGroup:
    """A reference run as one instance per param group: what ``to_torch`` does with an optimizer whose
    estimate spans all the params it is given (Prodigy's D), where prodigyopt shares it across groups."""

    def __init__(self, cls, groups, **kwargs):
        self.opts = [cls([g], **kwargs) for g in groups]

    def zero_grad(self):
        for o in self.opts:
            o.zero_grad()

    def step(self):
        for o in self.opts:
            o.step()

    def state_dict(self):
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, sd):
        for o, s in zip(self.opts, sd):
            o.load_state_dict(s)


# name, reference, settings, float64 tolerance, float32 tolerance, and why they are what they are
ROWS = [
    (
        "adopt",
        po.ADOPT,
        [
            {},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True},
            {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True, "maximize": True},
            {"lr": 1e-2, "clip_lambda": None, "betas": (0.5, 0.9), "eps": 1e-4},
        ],
        1e-12,
        1e-5,
    ),
    (
        "adan",
        po.Adan,
        [
            {},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True},
            {"lr": 1e-2, "max_grad_norm": 0.5},
            {"lr": 3e-3, "betas": (0.9, 0.8, 0.95), "eps": 1e-6},
        ],
        1e-12,
        1e-5,
    ),
    (
        "soap",
        po.SOAP,
        [
            {},
            {"lr": 1e-2, "precondition_frequency": 3},
            {"precondition_1d": True, "normalize_gradient": True, "correct_bias": False, "shampoo_beta": 0.9},
            {"max_precondition_dim": 5, "weight_decay": 0.0, "maximize": True},
            {"lr": 1e-2, "betas": (0.9, 0.99), "precondition_frequency": 1, "eps": 1e-6},
        ],
        1e-12,
        1e-5,
    ),
    # Prodigy: D is a ratio of sums over every param and grows by orders of magnitude in the first steps;
    # the reference forms those sums in Python floats (one .item() per tensor), diyopt in tensors, and
    # the last-bit differences grow with D: ~1e-12 after 100 steps in float64, ~5e-5 in float32 (where
    # the reference keeps D in double and diyopt in the params' float32).
    (
        "prodigy",
        prodigyopt.Prodigy,
        [
            {},
            {"use_bias_correction": True},
            {"safeguard_warmup": True, "weight_decay": 0.1},
            {"use_bias_correction": True, "safeguard_warmup": True, "weight_decay": 0.1, "decouple": False},
            {"growth_rate": 1.02, "d_coef": 2.0, "d0": 1e-5},
            {"slice_p": 3, "betas": (0.0, 0.99), "beta3": 0.9, "eps": 1e-6},
        ],
        5e-12,
        1e-4,
    ),
    (
        "muon_adamw",
        MuonAdamW,
        [
            {},
            {"lr": 0.02, "adamw_lr": 1e-2},
            {"lr": 0.02, "momentum": 0.8, "nesterov": False, "weight_decay": 0.0, "adamw_weight_decay": 0.1},
            {"lr": 0.01, "adjust_lr_fn": "match_rms_adamw", "ns_steps": 6, "adamw_betas": (0.8, 0.99)},
            {
                "lr": 0.01,
                "adjust_lr_fn": "original",
                "ns_coefficients": (3.4, -4.7, 2.0),
                "eps": 1e-6,
                "adamw_eps": 1e-6,
            },
        ],
        1e-12,
        1e-5,
    ),
]
CASES = [
    pytest.param(name, ref, kw, tol, id=f"{name}-{j}")
    for name, ref, settings, tol, _ in ROWS
    for j, kw in enumerate(settings)
]


def _assert_equal(report):
    assert report.passed, report.summary()
    assert report.steps_run == report.steps


def test_every_recent_optimizer_has_a_row():
    assert {name for name, *_ in ROWS} == set(diyopt.optim._recent.RECENT)


@pytest.mark.parametrize("name,reference,kwargs,tol", CASES)
def test_lockstep_with_the_reference_float64(name, reference, kwargs, tol):
    _assert_equal(lockstep(getattr(diyopt.optim, name)(**kwargs), reference, kwargs, steps=STEPS, tol=tol))


@pytest.mark.parametrize("name,reference,settings,tol32", [pytest.param(n, r, s, t, id=n) for n, r, s, _, t in ROWS])
def test_lockstep_with_the_reference_float32(name, reference, settings, tol32):
    kwargs = settings[1]
    report = lockstep(
        getattr(diyopt.optim, name)(**kwargs), reference, kwargs, steps=STEPS, tol=tol32, dtype=torch.float32
    )
    _assert_equal(report)


# the second group's own settings, given to both sides; prodigy's reference is one Prodigy per group (its
# D spans all the params an update sees: to_torch gives it one group at a time)
SECOND_GROUP = {
    "adopt": {"lr": 3e-3},
    "adan": {"lr": 3e-3},
    "soap": {"lr": 1e-3, "weight_decay": 0.0},
    "prodigy": {"d_coef": 0.5},
    "muon_adamw": {"adamw_lr": 3e-3},
}


@pytest.mark.parametrize("name,reference,settings,tol", [pytest.param(n, r, s, t, id=n) for n, r, s, t, _ in ROWS])
def test_to_torch_two_groups_and_a_state_dict_reload(name, reference, settings, tol):
    kwargs = settings[1]
    if name == "prodigy":
        ref = lambda groups, **kw: OnePerGroup(prodigyopt.Prodigy, groups, **kw)  # noqa: E731
    else:
        ref = reference
    report = lockstep(
        getattr(diyopt.optim, name)(**kwargs),
        ref,
        kwargs,
        steps=STEPS,
        tol=tol,
        form="to_torch",
        groups=[{}, SECOND_GROUP[name]],
        reload_at=STEPS // 2,
    )
    _assert_equal(report)


def test_prodigy_shares_nothing_across_to_torch_groups():
    """What the docstring says: to_torch runs prodigy group by group, so with two groups it is NOT
    prodigyopt's one shared D (that reference parts), it is one Prodigy per group (above)."""
    report = lockstep(diyopt.optim.prodigy(), prodigyopt.Prodigy, steps=20, form="to_torch", groups=[{}, {}])
    assert not report.passed


def test_adan_maximize_is_the_reference_minimizing_the_negated_loss():
    """The reference stores its first previous gradient before negating it, so its own maximize=True
    differs at step 2; diyopt's maximize equals the reference minimizing -f (the harness's loss, negated)."""

    ours = diyopt.optim.adan(lr=1e-2, maximize=True)
    model = diyopt.analysis._lockstep.mlp()  # the harness's model
    gen = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(16, 4, generator=gen, dtype=torch.float64),
        torch.randn(16, 3, generator=gen, dtype=torch.float64),
    )
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = ours.init(params)
    twin = copy.deepcopy(model)
    ref = po.Adan(twin.parameters(), lr=1e-2)
    for _ in range(30):
        grads = torch.func.grad(lambda p: torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y))(
            params
        )
        updates, state = ours.update({k: -g for k, g in grads.items()}, state, params)  # ascend -f
        params = diyopt.apply_updates(params, updates)
        ref.zero_grad()
        torch.nn.functional.mse_loss(twin(x), y).backward()
        ref.step()
    for n, q in twin.named_parameters():
        torch.testing.assert_close(params[n], q.detach(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- Muon: torch's optim database


def _muon_configs():
    pytest.importorskip("expecttest")
    from torch.testing._internal.common_optimizers import optim_db

    info = next(i for i in optim_db if i.optim_cls is torch.optim.Muon)
    seen, out = set(), []
    for device in ("cpu", "cuda"):
        for oi in info.optim_inputs_func(device=device):
            if repr(oi.kwargs) not in seen:
                seen.add(repr(oi.kwargs))
                out.append(pytest.param(oi.kwargs, id=oi.desc))
    return out


def _matrices_only():
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8, bias=False), torch.nn.Tanh(), torch.nn.Linear(8, 3, bias=False)
    ).double()


@pytest.mark.parametrize("kwargs", _muon_configs())
def test_muon_every_configuration_of_torchs_database(kwargs):
    """``muon`` vs ``torch.optim.Muon`` on a bias-free MLP (Muon takes matrices only), 100 steps; and
    ``muon_adamw`` with the same Muon settings vs Muon + AdamW on the MLP with biases."""
    torch.manual_seed(0)
    model = _matrices_only()
    _assert_equal(lockstep(diyopt.optim.muon(**kwargs), torch.optim.Muon, kwargs, steps=STEPS, model=model))
    _assert_equal(lockstep(diyopt.optim.muon_adamw(**kwargs), MuonAdamW, kwargs, steps=STEPS))


def test_muon_refuses_other_shapes_and_says_where_to_route_them():
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters.*partition.*muon_adamw"):
        diyopt.to_torch(diyopt.optim.muon(), [torch.nn.Parameter(torch.zeros(2, 3, 4))])
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters"):
        diyopt.optim.muon().init({"bias": torch.zeros(3)})
    # muon_adamw takes every shape: 3-D and 0-D tensors go to AdamW, equal to torch's AdamW on them
    ps = {
        "w": torch.randn(4, 3, dtype=torch.float64),
        "heads": torch.randn(2, 3, 4, dtype=torch.float64),
        "scale": torch.ones((), dtype=torch.float64),
    }
    opt = diyopt.optim.muon_adamw(adamw_lr=1e-2)
    state = opt.init(ps)
    assert set(state["muon"][0]) == {"w"} and set(state["adamw"][0]) == {"heads", "scale"}
    twin = {k: torch.nn.Parameter(v.clone()) for k, v in ps.items()}
    adamw = torch.optim.AdamW([twin["heads"], twin["scale"]], lr=1e-2)
    for _ in range(5):
        grads = {k: torch.sin(v) + 1 for k, v in ps.items()}
        updates, state = opt.update(grads, state, ps)
        ps = diyopt.apply_updates(ps, updates)
        for k in ("heads", "scale"):
            twin[k].grad = torch.sin(twin[k].detach()) + 1
        adamw.step()
    for k in ("heads", "scale"):
        torch.testing.assert_close(ps[k], twin[k].detach(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- bad settings: one line each, torch's words

ERRORS = [
    ("prodigy", {"d0": 0.0}, ValueError, r"^Invalid d0 value: 0.0$", prodigyopt.Prodigy),
    ("prodigy", {"lr": 0.0}, ValueError, r"^Invalid learning rate: 0.0$", prodigyopt.Prodigy),
    ("prodigy", {"eps": 0.0}, ValueError, r"^Invalid epsilon value: 0.0$", prodigyopt.Prodigy),
    ("prodigy", {"betas": (1.0, 0.999)}, ValueError, r"^Invalid beta parameter at index 0: 1.0$", prodigyopt.Prodigy),
    ("prodigy", {"fsdp_in_use": True}, ValueError, r"fsdp_in_use=True is not supported", None),
    ("prodigy", {"slice_p": 0}, ValueError, r"Invalid slice_p value: 0", None),
    ("prodigy", {"lr": diyopt.schedules.constant(1.0)}, TypeError, r"prodigy's lr cannot be a schedule", None),
    ("soap", {"merge_dims": True}, ValueError, r"merge_dims=True is not supported", None),
    ("soap", {"precondition_frequency": 0}, ValueError, r"Invalid precondition_frequency value: 0", None),
    ("soap", {"data_format": "nchw"}, ValueError, r"Invalid data_format", None),
    ("soap", {"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$", None),
    ("adan", {"betas": (0.9, 0.9)}, TypeError, r"betas must be a triple", None),
    ("adan", {"betas": (0.9, 1.0, 0.99)}, ValueError, r"^Invalid beta parameter at index 1: 1.0$", None),
    ("adan", {"max_grad_norm": -1.0}, ValueError, r"^Invalid max_grad_norm value: -1.0$", None),
    ("adan", {"lr": diyopt.schedules.constant(1e-3), "weight_decay": 0.1}, TypeError, r"cannot be a schedule", None),
    ("adopt", {"clip_lambda": 3}, TypeError, r"clip_lambda must be a function of the step or None", None),
    ("adopt", {"eps": -1.0}, ValueError, r"^Invalid epsilon value: -1.0$", None),
]


@pytest.mark.parametrize("name,kwargs,error,match,reference", ERRORS)
def test_bad_settings_are_one_line_errors(name, kwargs, error, match, reference):
    with pytest.raises(error, match=match):
        getattr(diyopt.optim, name)(**kwargs)
    if reference is not None:  # the reference refuses it in the same words
        with pytest.raises(error, match=match):
            reference([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_a_schedule_lr_runs_where_the_rule_takes_one():
    """adopt and adan (without decay) take a schedule lr: a constant schedule equals the number."""
    for name in ("adopt", "adan"):
        params = {"w": torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))}
        runs = []
        for lr in (1e-2, diyopt.schedules.constant(1e-2)):
            opt = getattr(diyopt.optim, name)(lr=lr)
            p, s = dict(params), opt.init(params)
            for _ in range(5):
                u, s = opt.update({"w": torch.cos(p["w"])}, s, p)
                p = diyopt.apply_updates(p, u)
            runs.append(p["w"])
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-15, atol=0)
