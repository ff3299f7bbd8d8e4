"""diyopt bench --suite workloads: the validation metric, the scoring, the tuning rules, the CLI."""

import math
import sys
from pathlib import Path

import pytest
import torch

import diyopt
from diyopt.analysis.benchmarking import run as bench_run
from diyopt.analysis.benchmarking.workloads import MISSING, train, workloads
from diyopt.cli import main

sklearn_metrics = pytest.importorskip("sklearn.metrics")
RULES = str(Path(__file__).with_name("bench_rules.py"))
BROKEN = [f"{RULES}:frozen", f"{RULES}:ascent", f"{RULES}:adam_ascent"]


def _workload(name):
    return next(w for w in workloads() if w.name == name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["breast_cancer_logreg-1", "digits_mlp-1", "digits_cnn-1", "sort_transformer-1"])
def test_metric_is_sklearn_error_on_the_same_predictions(name, dtype):
    w = _workload(name)
    p = w.problem(0, dtype)
    assert all(v.dtype == dtype for v in p.params.values())
    shifted = {k: v + 0.1 * torch.ones_like(v) for k, v in p.params.items()}  # not only the start
    for params in (p.params, shifted):
        pred = p.predict(params).numpy().ravel()  # the transformer's: one prediction per token
        ref = 1.0 - sklearn_metrics.accuracy_score(p.y_val.numpy().ravel(), pred)
        assert float(w.metric(p, params)) == pytest.approx(ref, abs=1e-12)
    assert float(w.metric(p, p.params)) > w.target  # the start does not pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autoencoder_metric_is_sklearn_mse_on_the_same_reconstructions(dtype):
    w = _workload("digits_autoencoder-1")
    p = w.problem(0, dtype)
    shifted = {k: v + 0.05 * torch.ones_like(v) for k, v in p.params.items()}
    for params in (p.params, shifted):
        ref = sklearn_metrics.mean_squared_error(p.y_val.numpy().ravel(), p.predict(params).numpy().ravel())
        assert float(w.metric(p, params)) == pytest.approx(ref, rel=1e-5 if dtype == torch.float32 else 1e-12)
    assert float(w.metric(p, p.params)) > w.target


def test_breast_cancer_loss_is_sklearn_log_loss():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    p = _workload("breast_cancer_logreg-1").problem(1, torch.float64)
    data = load_breast_cancer()
    Xt, _, yt, _ = train_test_split(data.data, data.target, test_size=0.25, stratify=data.target, random_state=0)
    Xt = (Xt - Xt.mean(0)) / Xt.std(0, ddof=1)  # torch's std is the unbiased one
    z = torch.as_tensor(Xt) @ p.params["w"] + p.params["b"]
    ref = sklearn_metrics.log_loss(yt, torch.sigmoid(z).numpy())
    assert float(p.loss(p.params)) == pytest.approx(ref, rel=1e-9)


def test_train_counts_steps_at_evaluations_and_stops_at_target():
    w = _workload("breast_cancer_logreg-1")
    p = w.problem(0, torch.float64)
    r = train(w, p, diyopt.optim.adam(lr=0.05))
    assert math.isfinite(r["steps"]) and r["steps"] % w.eval_every == 0 and r["seconds"] > 0
    assert r["best"] <= w.target
    # An independent loop with torch.optim.Adam: the same first passing evaluation.
    params = {k: v.clone().requires_grad_(True) for k, v in p.params.items()}
    opt = torch.optim.Adam(params.values(), lr=0.05)
    hit = None
    for step in range(1, w.steps + 1):
        opt.zero_grad()
        p.loss(params).backward()
        opt.step()
        if step % w.eval_every == 0 and float(p.metric({k: v.detach() for k, v in params.items()})) <= w.target:
            hit = step
            break
    assert r["steps"] == hit


def test_tuned_adam_reaches_the_breast_cancer_target_and_broken_rules_do_not():
    r = diyopt.bench(["adam", *BROKEN], suite="workloads", tasks=["breast_cancer_logreg"], trials=4, seeds=1)
    rows = {row["optimizer"]: row for row in r.rows}
    assert rows["adam"]["solved"] and rows["adam"]["steps_to_target"] <= 300
    assert 0 < rows["adam"]["seconds_to_target"] < math.inf
    assert rows["adam"]["engine"].startswith("vmap (4 trials at once")
    for b in BROKEN:
        assert not rows[b]["solved"], b
        assert rows[b]["steps_to_target"] == math.inf and rows[b]["seconds_to_target"] == math.inf


def test_suite_all_is_diagnostic_then_workloads():
    names = [t.name for t in bench_run.suite_tasks("all")]
    diag = [t.name for t in bench_run.suite_tasks("diagnostic")]
    assert names == diag + [w.name for w in workloads()]
    with pytest.raises(ValueError, match="unknown suite"):
        bench_run.suite_tasks("nope")


def test_cli_workloads_writes_rows_and_missing_sklearn_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b"
    rc = main(
        [
            "bench",
            "--suite",
            "workloads",
            "--tasks",
            "breast_cancer_logreg",
            "--optimizers",
            "adam",
            "--trials",
            "2",
            "--seeds",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "vmap refused" not in capsys.readouterr().err  # the workloads loop by design, not as a fallback
    text = (out / "results.csv").read_text().splitlines()
    assert "seconds_to_target" in text[0].split(",") and text[1].startswith("breast_cancer_logreg-1,adam,")
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    rc = main(["bench", "--suite", "workloads", "--optimizers", "adam", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and MISSING in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_sort_targets_are_the_sorted_inputs_and_the_splits_differ():
    from diyopt.analysis.benchmarking.workloads import SORT_LENGTH, SORT_VOCAB, sort_sequences

    x, y = sort_sequences(64, 1)
    assert x.shape == (64, SORT_LENGTH) and int(x.max()) < SORT_VOCAB
    for row, srt in zip(x.tolist(), y.tolist()):
        assert srt == sorted(row)
    assert not torch.equal(x, sort_sequences(64, 2)[0])


def test_torch_adam_class_on_a_workload_equals_diyopt_adam():
    r = diyopt.bench(["adam", torch.optim.Adam], suite="workloads", tasks=["breast_cancer_logreg"], trials=3, seeds=2)
    ours, torchs = r.rows
    for k in ("solved", "attempts", "steps_to_target", "steps_to_target_lo", "steps_to_target_hi", "studies_solved"):
        assert ours[k] == torchs[k], k
    assert ours["best_metric"] == torchs["best_metric"]  # a count of misclassified samples over 143


def test_tuned_adamw_reaches_the_cnn_and_transformer_targets():
    # The first Sobol point of AdamW's space without the schedule (lr 8e-3, beta1 0.79, constant) reaches both
    # within the budget.
    space = {"adamw": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear")}}
    r = diyopt.bench(
        ["adamw"], suite="workloads", tasks=["digits_cnn", "sort_transformer"], trials=1, seeds=1, spaces=space
    )
    for row in r.rows:
        assert row["solved"] and row["steps_to_target"] <= _workload(row["task"]).steps, row


@pytest.mark.parametrize(
    "family,dtype,tol",
    [
        ("breast_cancer_logreg", torch.float64, 1e-10),
        ("digits_autoencoder", torch.float64, 1e-10),
        ("digits_mlp", torch.float64, 1e-10),
        # float32: the batch's matrix products sum in another order; one validation sample of 143 at most
        ("breast_cancer_logreg", torch.float32, 1 / 143 + 1e-9),
    ],
)
def test_vectorized_trials_equal_the_loop_trial_by_trial(family, dtype, tol):
    """train_batched (one vmap over the trials, with their schedules) against train (one trial at a time):
    the same evaluations passed, the same steps to the target, the same best validation metric."""
    import dataclasses

    from diyopt.analysis.benchmarking.tuning import SPACES, points, tunable
    from diyopt.analysis.benchmarking.workloads import train, train_batched

    w = dataclasses.replace(_workload(f"{family}-1"), steps=80)  # short: the rules, not the targets
    keys = list(SPACES["adamw"])
    pts = [tuple(p[k] for k in keys) for p in points(SPACES["adamw"], 6)]
    problem = w.problem(0, dtype)
    opt = tunable(diyopt.optim.adamw(), keys, None, w.steps)
    batched = train_batched(w, problem, opt.build, pts)
    loop = [train(w, problem, opt.build(point=pt)) for pt in pts]
    assert [b["steps"] for b in batched] == [x["steps"] for x in loop]
    for b, x in zip(batched, loop):
        assert b["best"] == pytest.approx(x["best"], abs=tol, rel=0)
    if family == "breast_cancer_logreg":
        assert any(math.isfinite(b["steps"]) for b in batched)  # some trial reaches the target


def test_workload_rows_say_which_engine_ran():
    r = diyopt.bench(["adamw", torch.optim.AdamW], suite="workloads", tasks=["breast_cancer_logreg"], trials=2, seeds=1)
    ours, torchs = r.rows
    assert ours["engine"].startswith("vmap (2 trials at once") and torchs["engine"].startswith("loop (torch.optim")


def test_a_rule_vmap_refuses_runs_the_loop_and_says_so():
    rules = str(Path(__file__).with_name("bench_rules.py"))
    space = {f"{rules}:gd_item": {"lr": (0.1, 1.0, "log")}, "gradient_descent": {"lr": (0.1, 1.0, "log")}}
    r = diyopt.bench(
        [f"{rules}:gd_item", "gradient_descent"],
        suite="workloads",
        tasks=["breast_cancer_logreg"],
        trials=2,
        seeds=1,
        spaces=space,
    )
    loop, vec = r.rows
    assert loop["engine"].startswith("loop (vmap refused") and vec["engine"].startswith("vmap")
    for k in ("solved", "attempts", "steps_to_target", "best_metric"):
        assert loop[k] == vec[k], k
