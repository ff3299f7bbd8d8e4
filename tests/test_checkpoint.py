"""Checkpoints: exact resume after SIGKILL, atomic writes, settings fingerprint, safe loading."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import pickle
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import diyopt
from diyopt import checkpoint as ckpt
from diyopt.cli import main
from diyopt.cli.fit import seed_everything

STEPS, EVERY = 2000, 50


def fit_args(out: Path, ck: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--problem",
        "line",
        "--optimizer",
        "adam",
        "--loss",
        "mse",
        "--steps",
        str(STEPS),
        "--out",
        str(out),
        "--checkpoint",
        str(ck),
        "--checkpoint-every",
        str(EVERY),
        *extra,
    ]


def read_outputs(out: Path) -> tuple[dict, list[str]]:
    result = json.loads((out / "result.json").read_text())
    with open(out / "losses.csv") as f:
        rows = list(csv.reader(f))
    return result["params"], rows


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_at_random_moments_then_resume_is_bitwise_identical(tmp_path, sig):
    """SIGKILL (no cleanup at all) or SIGTERM (handled like Ctrl-C: the checkpoint is saved at that step
    boundary) at random moments, 20 times each, including inside checkpoint writes: the checkpoint is
    absent or whole, the output absent or complete, the resumed run bitwise the uninterrupted one, and
    no temp file or lock is left after the resume."""
    # The uninterrupted run, in this process; its wall time sets the range of kill moments.
    ref_out = tmp_path / "ref"
    t0 = time.perf_counter()
    assert main(fit_args(ref_out, tmp_path / "ref.pt")) == 0
    duration = time.perf_counter() - t0
    ref_params, ref_rows = read_outputs(ref_out)
    ref_losses = torch.tensor([float(r[1]) for r in ref_rows[1:]], dtype=torch.float64)
    assert len(ref_losses) == STEPS

    # A fork server with diyopt imported starts each CLI run in milliseconds, not a fresh interpreter;
    # it never ran torch itself, so forking it is safe.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["diyopt.cli"])
    rng = random.Random(20261126)
    kinds = {"before the first checkpoint": 0, "mid-run": 0, "after the outputs": 0}
    for i in range(20):
        out, ck = tmp_path / f"out{i}", tmp_path / f"run{i}.pt"
        child = ctx.Process(target=main, args=(fit_args(out, ck),))
        child.start()
        time.sleep(rng.uniform(0.0, 1.1 * duration))
        try:
            os.kill(child.pid, sig)  # SIGKILL: no cleanup, no flush; SIGTERM: save, clean up, exit
        except ProcessLookupError:  # it had finished already
            pass
        child.join()

        # Whatever instant the kill hit, the checkpoint is absent or whole and consistent ...
        if ck.exists():
            payload = ckpt.load(ck)
            step = payload["step"]
            assert step % EVERY == 0 or step == STEPS or sig == signal.SIGTERM
            assert torch.equal(payload["losses"], ref_losses[:step])
            kinds["mid-run" if step < STEPS else "after the outputs"] += 1
        else:
            kinds["before the first checkpoint"] += 1
        # ... and the output folder is absent or complete.
        if out.exists():
            assert read_outputs(out) == (ref_params, ref_rows)

        assert main(fit_args(out, ck, "--resume")) == 0
        assert read_outputs(out) == (ref_params, ref_rows), f"run {i} differs after resume"
        left = [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))]
        left += [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".lock"))]
        assert left == [], f"run {i} left {left}"
    assert kinds["mid-run"] >= 5, kinds  # the kills did land inside the fit


def test_resume_in_python_continues_bitwise(tmp_path):
    x, y = diyopt.data.make_line(seed=3)
    loss = lambda p: diyopt.losses.l2_norm(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float32)[:1]}
    opt = diyopt.optim.adam(lr=1e-2)  # float32 + float64: named (not flat) layout
    full = diyopt.fit(loss, p0, opt, 300)
    ck = tmp_path / "c.pt"
    part = diyopt.fit(loss, p0, opt, 300, checkpoint=ck, checkpoint_every=40, callback=lambda step, *_: step == 129)
    assert part.steps == 130 and ckpt.load(ck)["step"] == 130
    rest = diyopt.fit(loss, p0, opt, 300, checkpoint=ck, resume=True)
    assert torch.equal(rest.losses, full.losses)
    assert all(torch.equal(rest.params[k], full.params[k]) for k in full.params)
    # The state comes back with its NamedTuple types, as optimizer.init builds them.
    assert type(rest.state) is type(full.state)
    assert all(
        torch.equal(a, b)
        for a, b in zip(torch.utils._pytree.tree_leaves(rest.state), torch.utils._pytree.tree_leaves(full.state))
    )


def test_rng_states_are_restored(tmp_path):
    import numpy as np

    def noisy(p):  # a stochastic loss: draws from torch's, numpy's and Python's RNGs every step
        noise = torch.randn(1, dtype=torch.float64) + float(np.random.rand()) + random.random()
        return ((p["w"] - noise) ** 2).sum()

    p0 = {"w": torch.zeros(1, dtype=torch.float64)}
    opt = diyopt.optim.adam(lr=1e-2)
    seed_everything(7)
    full = diyopt.fit(noisy, p0, opt, 100)
    seed_everything(7)
    diyopt.fit(
        noisy, p0, opt, 100, checkpoint=tmp_path / "c.pt", checkpoint_every=10, callback=lambda step, *_: step == 44
    )
    seed_everything(123)  # a different state: resuming must restore the saved one
    rest = diyopt.fit(noisy, p0, opt, 100, checkpoint=tmp_path / "c.pt", resume=True)
    assert torch.equal(rest.losses, full.losses)


def test_resume_with_other_settings_is_refused_naming_the_difference(tmp_path):
    x, y = diyopt.data.make_line(seed=0)
    loss = lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    ck = tmp_path / "c.pt"
    diyopt.fit(loss, p0, diyopt.optim.adam(lr=0.01), 50, checkpoint=ck, checkpoint_every=10)
    with pytest.raises(ValueError, match=r"checkpoint was made with lr=0\.01, now lr=0\.1"):
        diyopt.fit(loss, p0, diyopt.optim.adam(lr=0.1), 50, checkpoint=ck, resume=True)
    with pytest.raises(FileExistsError, match="resume"):  # never overwrite a run's checkpoint silently
        diyopt.fit(loss, p0, diyopt.optim.adam(lr=0.01), 50, checkpoint=ck)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resume_with_more_steps_extends_a_finished_run_bitwise(tmp_path, dtype):
    # issue 10 item 10: the step budget is not part of what must match; 40 + 25 more == 65 in one go.
    x, y = diyopt.data.make_line(seed=0)
    x, y = x.to(dtype), y.to(dtype)
    loss = lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=dtype), "b": torch.zeros(1, dtype=dtype)}
    opt = diyopt.optim.adam(lr=0.01)
    full = diyopt.fit(loss, p0, opt, 65)
    ck = tmp_path / "c.pt"
    assert diyopt.fit(loss, p0, opt, 40, checkpoint=ck, checkpoint_every=10).steps == 40
    more = diyopt.fit(loss, p0, opt, 65, checkpoint=ck, resume=True)
    assert more.steps == 65 and torch.equal(more.losses, full.losses)
    assert all(torch.equal(more.params[k], full.params[k]) for k in full.params)
    with pytest.raises(ValueError, match=r"at step 65, past steps=30; give at least 65 steps"):
        diyopt.fit(loss, p0, opt, 30, checkpoint=ck, resume=True)


def test_resume_with_a_schedule_over_another_total_is_refused_naming_it(tmp_path):
    x, y = diyopt.data.make_line(seed=0)
    loss = lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    ck = tmp_path / "c.pt"
    cosine = diyopt.schedules.cosine_decay
    diyopt.fit(loss, p0, diyopt.optim.adam(lr=cosine(0.01, 40)), 40, checkpoint=ck)
    with pytest.raises(ValueError, match=r"lr=cosine_decay.*decay_steps=40.*now lr=cosine_decay.*decay_steps=60"):
        diyopt.fit(loss, p0, diyopt.optim.adam(lr=cosine(0.01, 60)), 60, checkpoint=ck, resume=True)


def test_resume_on_the_cli_with_another_loss_is_refused(tmp_path, capsys):
    ck = tmp_path / "c.pt"
    args = [
        "fit",
        "--problem",
        "line",
        "--optimizer",
        "adam",
        "--steps",
        "40",
        "--checkpoint",
        str(ck),
        "--checkpoint-every",
        "10",
    ]
    assert main(args + ["--loss", "mse", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(args + ["--loss", "sse", "--out", str(tmp_path / "b"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "loss=mse, now loss=sse" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


class _CreatesAFile:
    """Unpickling this calls open(path, "w"): the file appearing would mean code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["pickle2", "pickle4", "torch.save"])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, fmt, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    payload = {"format": "diyopt-checkpoint", "version": 1, "params": _CreatesAFile(marker)}
    if fmt.startswith("pickle"):
        bad.write_bytes(pickle.dumps(payload, protocol=int(fmt[-1])))
    else:
        torch.save(payload, bad)
    assert not marker.exists()
    with pytest.raises(ckpt.CheckpointError, match="refused to load"):
        ckpt.load(bad)
    assert not marker.exists()
    out = tmp_path / "out"
    code = main(
        [
            "fit",
            "--problem",
            "line",
            "--optimizer",
            "adam",
            "--steps",
            "10",
            "--out",
            str(out),
            "--checkpoint",
            str(bad),
            "--resume",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "refused to load" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists() and not out.exists()


def test_torn_checkpoint_is_reported_not_crashed(tmp_path):
    ck = tmp_path / "c.pt"
    ckpt.save(ck, params={"a": torch.ones(2)}, state=(), step=1, losses=torch.ones(1), fingerprint={})
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="unreadable checkpoint"):
        ckpt.load(ck)


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.atomic_write(path, b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(path, b"new but never synced")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
