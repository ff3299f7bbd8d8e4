"""The recent optimizers and ``partition`` in every form: eager ``fit``, compiled ``fit`` (equal to eager),
``sweep`` (run k equal to a single fit), checkpoint + resume (bitwise), the conformance kit -- or a clear
refusal naming the form (``soap`` and ``muon`` in a sweep, ``soap`` compiled). torchrun: tests/test_contract.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import diyopt
from diyopt import optim
from diyopt import transforms as T

GEN = torch.Generator().manual_seed(0)
X = torch.randn(32, 4, generator=GEN, dtype=torch.float64)
Y = torch.randn(32, 3, generator=GEN, dtype=torch.float64)
P0 = {
    "w1": torch.randn(8, 4, generator=GEN, dtype=torch.float64) / 2,
    "b1": torch.zeros(8, dtype=torch.float64),
    "w2": torch.randn(3, 8, generator=GEN, dtype=torch.float64) / 3,
    "b2": torch.zeros(3, dtype=torch.float64),
}


def loss(p):
    return ((torch.tanh(X @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"] - Y) ** 2).mean()


@diyopt.configurable
def adam_sgd(lr=1e-2, sgd_lr=0.05):
    """``partition`` with two plain rules: Adam for the matrices, SGD with momentum for the biases (a
    factory, as a user writes one, so sweep and to_torch's param groups can set its settings)."""
    return T.partition(
        {"adam": optim.adam(lr=lr), "sgd": optim.sgd(lr=sgd_lr, momentum=0.9)},
        lambda name, t: "adam" if t.ndim == 2 else "sgd",
    )


MAKERS = {
    "adopt": lambda: optim.adopt(lr=1e-2, weight_decay=0.01),
    "adan": lambda: optim.adan(lr=1e-2, max_grad_norm=1.0),
    "prodigy": lambda: optim.prodigy(use_bias_correction=True),
    "soap": lambda: optim.soap(precondition_frequency=3),
    "muon_adamw": lambda: optim.muon_adamw(lr=0.02, adamw_lr=1e-2),
    "partition": adam_sgd,
}
SWEEPABLE = ["adopt", "adan", "prodigy", "partition"]
STEPS = 30


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_eager_fit_goes_down_and_resumes_bitwise(name, tmp_path):
    opt = MAKERS[name]()
    full = diyopt.fit(loss, P0, opt, STEPS)
    assert float(full.losses[-1]) < float(full.losses[0])
    ck = str(tmp_path / "run.pt")
    diyopt.fit(loss, P0, opt, STEPS // 2, checkpoint=ck)
    resumed = diyopt.fit(loss, P0, opt, STEPS, checkpoint=ck, resume=True)
    for k in P0:
        assert torch.equal(resumed.params[k], full.params[k]), k
    assert torch.equal(resumed.losses, full.losses)


@pytest.mark.parametrize("name", SWEEPABLE)
def test_sweep_run_equals_a_single_fit(name):
    opt = MAKERS[name]()
    values = [1e-3, 2e-2] if name != "prodigy" else [0.5, 1.0]
    sw = diyopt.sweep(loss, P0, opt, STEPS, grid={"lr": values})
    for k, lr in enumerate(values):
        single = diyopt.fit(loss, P0, opt.replace_hyperparams(lr=lr), STEPS)
        assert _max_diff({n: sw.params[n][k] for n in P0}, single.params) <= 1e-12, (name, lr)


@pytest.mark.parametrize("name,why", [("soap", "eigenbasis"), ("muon_adamw", "bfloat16")])
def test_sweep_refuses_what_vmap_would_change(name, why):
    with pytest.raises(ValueError, match=rf"cannot run in a sweep \(torch.func.vmap\).*{why}"):
        diyopt.sweep(loss, P0, MAKERS[name](), 4, grid={"lr": [1e-3, 2e-2]})


@pytest.mark.slow  # torch.compile of each rule: 30-100 s each on two cores
@pytest.mark.parametrize("name", ["adopt", "adan", "prodigy", "partition"])
def test_compiled_fit_equals_eager(name):
    opt = MAKERS[name]()
    eager = diyopt.fit(loss, P0, opt, STEPS)
    compiled = diyopt.fit(loss, P0, opt, STEPS, engine="compiled")
    assert _max_diff(compiled.params, eager.params) <= 1e-12


@pytest.mark.slow  # Inductor compiling Muon's Newton-Schulz inside the loop: minutes on two busy cores
def test_compiled_muon_equals_eager():
    """Muon's bfloat16 Newton-Schulz compiled: Inductor keeps the intermediates of a bfloat16 addmm in
    float32 unless emulate_precision_casts is on (3e-3 from eager in 30 steps without it), and inside
    the compiled loop the tensor coefficients' addmm could not be traced at all (a data-dependent guard).
    chunk=2: the loop path (two steps per turn), at half the default's code."""
    opt = MAKERS["muon_adamw"]()
    eager = diyopt.fit(loss, P0, opt, STEPS)
    compiled = diyopt.fit(loss, P0, opt, STEPS, engine="compiled", chunk=2)
    assert _max_diff(compiled.params, eager.params) <= 1e-12
    torch.testing.assert_close(compiled.losses, eager.losses, rtol=1e-12, atol=0)


def test_compiled_soap_refuses_with_its_reason():
    with pytest.raises(
        ValueError, match=r"soap cannot run compiled \(engine='compiled'\): .*rank-deficient.*engine='eager'"
    ):
        diyopt.fit(loss, P0, MAKERS["soap"](), 4, engine="compiled")


# the learning rates for the kit's convergence checks (parabola, Rosenbrock from (-1.2, 1) to 3e-2 in 20,000
# steps); muon_adamw's vectors all go to AdamW, at its default adamw_lr
CONVERGENCE_LR = {"adopt": 0.1, "adan": 3e-2, "prodigy": 1.0, "soap": 3e-2, "muon_adamw": 1e-2}


@pytest.mark.parametrize("name", sorted(CONVERGENCE_LR))
def test_conformance_kit_passes(name):
    report = diyopt.check(getattr(optim, name)(), lr=CONVERGENCE_LR[name])
    assert report.passed, report.table()


# ---------------------------------------------------------------- partition itself


def test_partition_routes_by_shape_and_by_name_and_equals_each_rule_alone():
    grads = {k: torch.sin(v + 1) for k, v in P0.items()}
    by_shape = T.partition(
        {"adam": optim.adam(lr=1e-2), "sgd": optim.sgd(lr=0.1)}, lambda name, t: "adam" if t.ndim == 2 else "sgd"
    )
    by_name = T.partition(
        {"adam": optim.adam(lr=1e-2), "sgd": optim.sgd(lr=0.1)}, {"w1": "adam", "w2": "adam", "b1": "sgd", "b2": "sgd"}
    )
    adam, sgd = optim.adam(lr=1e-2), optim.sgd(lr=0.1)
    mats = {k: v for k, v in P0.items() if v.ndim == 2}
    vecs = {k: v for k, v in P0.items() if v.ndim != 2}
    for opt in (by_shape, by_name):
        updates, state = opt.update(grads, opt.init(P0), P0)
        assert list(updates) == list(P0)  # the params' order is kept
        a, _ = adam.update({k: grads[k] for k in mats}, adam.init(mats), mats)
        s, _ = sgd.update({k: grads[k] for k in vecs}, sgd.init(vecs), vecs)
        for k in P0:
            assert torch.equal(updates[k], {**a, **s}[k]), k
        assert set(state) == {"adam", "sgd"}


def test_partition_to_torch_state_dict_round_trip_equals_torch_pair():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    twin.load_state_dict(model.state_dict())
    ours = diyopt.to_torch(adam_sgd(), model)
    refs = [
        torch.optim.Adam([p for p in twin.parameters() if p.ndim == 2], lr=1e-2),
        torch.optim.SGD([p for p in twin.parameters() if p.ndim != 2], lr=0.05, momentum=0.9),
    ]
    for step in range(20):
        for m, opts in ((model, [ours]), (twin, refs)):
            for o in opts:
                o.zero_grad()
            torch.nn.functional.mse_loss(m(X), Y).backward()
            for o in opts:
                o.step()
        if step == 9:  # a fresh instance from the state dict carries on
            saved = ours.state_dict()
            ours = diyopt.to_torch(adam_sgd(), model)
            ours.load_state_dict(saved)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # each rule's state sits under its param, named by the rule's label and torch's own field names
    assert {"adam.exp_avg", "adam.exp_avg_sq", "adam.step"} <= set(ours.state[model[0].weight])
    assert "sgd.momentum_buffer" in ours.state[model[0].bias]


@pytest.mark.parametrize(
    "rules,labels,error,match",
    [
        ({}, lambda n, t: "a", ValueError, "non-empty"),
        ({"a": "adam"}, lambda n, t: "a", TypeError, "rule 'a' is a str"),
        ({"a": optim.sgd()}, 3, TypeError, "labels must be a function"),
        (
            {"a": optim.sgd()},
            lambda n, t: "b",
            ValueError,
            r"'w1' is labelled 'b', which names no rule; rules: \['a'\]",
        ),
        ({"a": optim.sgd()}, {"w1": "a"}, ValueError, r"parameter 'b1' has no label"),
    ],
)
def test_partition_bad_input(rules, labels, error, match):
    with pytest.raises(error, match=match):
        T.partition(rules, labels).init(P0)


# ---------------------------------------------------------------- SIGKILL and resume, in a subprocess

SCRIPT = textwrap.dedent("""
    import sys, torch, diyopt
    sys.path.insert(0, {tests!r})
    from test_recent_forms import loss, P0, MAKERS
    r = diyopt.fit(loss, P0, MAKERS[sys.argv[1]](), 150, checkpoint=sys.argv[2], checkpoint_every=1,
                   resume=True)
    torch.save(r.params, sys.argv[3])
""")


@pytest.mark.slow  # two interpreter starts and 150 steps saved one by one: ~40 s
@pytest.mark.parametrize("name", ["soap", "prodigy"])
def test_sigkill_and_resume_is_bitwise(name, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [os.path.join(os.path.dirname(__file__), "..", "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    ck, out = str(tmp_path / "run.pt"), str(tmp_path / "out.pt")
    proc = subprocess.Popen([sys.executable, str(script), name, ck, out], env=env)
    for _ in range(600):  # kill it once the checkpoint exists, mid-run
        if os.path.exists(ck) or proc.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, str(script), name, ck, out], env=env, timeout=600)
    assert done.returncode == 0
    resumed = torch.load(out)
    full = diyopt.fit(loss, P0, MAKERS[name](), 150)
    for k in P0:
        assert torch.equal(resumed[k], full.params[k]), k
