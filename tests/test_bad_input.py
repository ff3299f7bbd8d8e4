"""A catalog of bad inputs to ``diyopt fit``: each ends in exit code 2, one line on stderr naming the
problem, no traceback, and the output folder exactly as it was.

One row per bad input: ``(id, options, files, regex)``. ``options`` change the base command line (a value
of None drops an option, True adds a bare flag); ``files`` are written into the test's folder first (text,
bytes, or a function of the folder); ``{t}`` in either stands for that folder.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_folders import plant_output, snapshot, write_files

import diyopt
from diyopt.cli import main

BASE = {"--problem": "line", "--optimizer": "adam", "--steps": "20", "--out": "{t}/out"}

RULE = """import torch
import diyopt

@diyopt.elementwise
def rule(grad, state, param, *, lr=1e-3):
    return {body}, state
"""


def _evil(t: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (open, (str(t / "pwned"), "w"))

    return pickle.dumps({"format": "diyopt-checkpoint", "params": Evil()}, protocol=2)


def _other_settings(t: Path) -> bytes:
    path = t / "tmp.pt"
    diyopt.checkpoint.save(
        path, params={"a": torch.zeros(1)}, state=(), step=0, losses=torch.zeros(0), fingerprint={"optimizer": "sgd"}
    )
    data = path.read_bytes()
    path.unlink()
    return data


def _crafted(**changes):
    """A checkpoint that is valid plain data (weights_only loads it) with some fields of the wrong type."""

    def make(t: Path) -> bytes:
        path = t / "tmp.pt"
        diyopt.checkpoint.save(
            path,
            params={"a": torch.zeros(1)},
            state=(),
            step=0,
            losses=torch.zeros(0),
            fingerprint={"optimizer": "adam"},
        )
        payload = torch.load(path, weights_only=True)
        path.unlink()
        for k, v in changes.items():
            if v is None:
                del payload[k]
            else:
                payload[k] = v(payload) if callable(v) else v
        import io

        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    return make


def _laughs(p: dict):
    """A "billion laughs" fingerprint: 19 KB on disk, 2**60 leaves if walked or formatted."""
    x: list = ["lol"]
    for _ in range(60):
        x = [x, x]
    return {"optimizer": x}


CATALOG = [
    # --- data files
    ("data-missing", {"--data": "{t}/nope.csv"}, {}, r"nope\.csv: no such file"),
    ("data-is-a-folder", {"--data": "{t}/folder"}, {"folder/": ""}, r"folder: cannot read"),
    ("data-not-text", {"--data": "{t}/d.csv"}, {"d.csv": b"\xff\xfe\x00\x81x,y"}, r"d\.csv: cannot read .*Unicode"),
    ("data-empty", {"--data": "{t}/d.csv"}, {"d.csv": ""}, r"d\.csv: empty file"),
    ("data-header-only", {"--data": "{t}/d.csv"}, {"d.csv": "x,y\n"}, r"d\.csv: no data rows"),
    ("data-missing-column", {"--data": "{t}/d.csv"}, {"d.csv": "x,z\n1,2\n"}, r"missing column\(s\) \['y'\]"),
    ("data-bad-row", {"--data": "{t}/d.csv"}, {"d.csv": "x,y\n1,2\n3,4,5\n"}, r"d\.csv:3: expected 2 values, got 3"),
    (
        "data-x-y-lengths-differ",
        {"--data": "{t}/d.csv"},
        {"d.csv": "x,y\n1,2\n3,4\n5\n"},
        r"d\.csv:4: expected 2 values, got 1",
    ),
    (
        "data-non-numeric",
        {"--data": "{t}/d.csv"},
        {"d.csv": "x,y\n1,2\nabc,4\n"},
        r"d\.csv:3: column 'x' is not a number: 'abc'",
    ),
    ("data-nan", {"--data": "{t}/d.csv"}, {"d.csv": "x,y\n1,nan\n"}, r"d\.csv:2: column 'y' is not finite"),
    ("data-inf", {"--data": "{t}/d.csv"}, {"d.csv": "x,y\n1,2\n-inf,3\n"}, r"d\.csv:3: column 'x' is not finite"),
    (
        "data-with-other-problem",
        {"--problem": "rosenbrock", "--data": "{t}/d.csv"},
        {"d.csv": "x,y\n1,2\n"},
        r"--data .* --problem line",
    ),
    # --- names
    ("unknown-optimizer", {"--optimizer": "adamm"}, {}, r"unknown optimizer 'adamm' \(did you mean 'adam'\?\)"),
    ("unknown-loss", {"--loss": "hubr"}, {}, r"unknown loss 'hubr' \(did you mean 'huber'\?\)"),
    ("unknown-problem", {"--problem": "rosenbrok"}, {}, r"unknown problem 'rosenbrok' \(did you mean 'rosenbrock'\?\)"),
    (
        "loss-for-fixed-problem",
        {"--problem": "rosenbrock", "--loss": "mse"},
        {},
        r"problem 'rosenbrock' has its own loss",
    ),
    ("unknown-engine", {"--engine": "jit"}, {}, r"invalid choice: 'jit'"),
    ("unknown-policy", {"--on-nonfinite": "halt"}, {}, r"invalid choice: 'halt'"),
    ("missing-problem", {"--problem": None}, {}, r"required: --problem"),
    # --- optimizer specs and hyperparameters (torch's wording)
    ("spec-no-value", {"--optimizer": "adam:lr"}, {}, r"bad setting 'lr' in spec 'adam:lr'"),
    ("spec-not-a-number", {"--optimizer": "adam:lr=fast"}, {}, r"bad value 'fast' for 'lr'"),
    ("spec-unknown-hyperparameter", {"--optimizer": "adam:momentum=0.9"}, {}, r"unknown setting for adam: 'momentum'"),
    ("invalid-lr", {"--optimizer": "adam:lr=-1"}, {}, r"Invalid learning rate: -1"),
    ("invalid-beta", {"--optimizer": "adam:betas=1.5/0.9"}, {}, r"Invalid beta parameter at index 0: 1\.5"),
    ("invalid-eps", {"--optimizer": "adam:eps=-1e-8"}, {}, r"Invalid epsilon value: -1e-08"),
    # --- a user's rule file
    ("rule-file-missing", {"--optimizer": "{t}/nope.py:rule"}, {}, r"no such file: .*nope\.py"),
    ("rule-syntax-error", {"--optimizer": "{t}/r.py:rule"}, {"r.py": "import torch\ndef rule(:\n"}, r"r\.py.*line 2"),
    (
        "rule-import-fails",
        {"--optimizer": "{t}/r.py:rule"},
        {"r.py": "import torch\n\nx = 1 / 0\n"},
        r"r\.py.*line 3.*ZeroDivisionError",
    ),
    (
        "rule-wrong-shape",
        {"--optimizer": "{t}/r.py:rule"},
        {"r.py": RULE.format(body="-lr * grad.sum()")},
        r"update for parameter 'a' has shape \(\), expected the parameter's shape \(1,\)",
    ),
    (
        "rule-wrong-dtype",
        {"--optimizer": "{t}/r.py:rule"},
        {"r.py": RULE.format(body="(-lr * grad).float()")},
        r"update for parameter 'a' has dtype torch\.float32, expected .* torch\.float64",
    ),
    (
        "rule-not-a-tensor",
        {"--optimizer": "{t}/r.py:rule"},
        {"r.py": RULE.format(body="0.0")},
        r"update for parameter 'a' must be a Tensor, got float",
    ),
    # --- a user's loss file
    ("loss-file-missing", {"--loss": "{t}/nope.py:loss"}, {}, r"no such file: .*nope\.py"),
    (
        "loss-syntax-error",
        {"--loss": "{t}/l.py:loss"},
        {"l.py": "def loss(pred, target)\n    return 0\n"},
        r"cannot import .*l\.py, line 1: SyntaxError",
    ),
    (
        "loss-import-fails",
        {"--loss": "{t}/l.py:loss"},
        {"l.py": "import torch\n\nraise RuntimeError('no GPU')\n"},
        r"cannot import .*l\.py, line 3: RuntimeError: no GPU",
    ),
    (
        "loss-name-missing",
        {"--loss": "{t}/l.py:loss"},
        {"l.py": "def lsos(pred, target):\n    return 0\n"},
        r"unknown name in .*l\.py: 'loss' \(did you mean 'lsos'\?\)",
    ),
    (
        "loss-not-scalar",
        {"--loss": "{t}/l.py:loss"},
        {"l.py": "def loss(pred, target):\n    return target - pred\n"},
        r"loss_fn must return a scalar, got a tensor of shape \(100,\)",
    ),
    (
        "loss-no-gradient-path",
        {"--loss": "{t}/l.py:loss"},
        {"l.py": "import torch\ndef loss(pred, target):\n    return torch.tensor(float((target - pred).norm()))\n"},
        r"loss has no gradient path",
    ),
    (
        "loss-not-a-tensor",
        {"--loss": "{t}/l.py:loss"},
        {"l.py": "def loss(pred, target):\n    return 1.0\n"},
        r"loss_fn must return a scalar Tensor, got float",
    ),
    # --- counts
    ("steps-zero", {"--steps": "0"}, {}, r"--steps: must be a positive integer, got 0"),
    ("steps-negative", {"--steps": "-5"}, {}, r"--steps: must be a positive integer, got -5"),
    ("steps-not-a-number", {"--steps": "many"}, {}, r"--steps: expected a positive integer, got 'many'"),
    (
        "checkpoint-every-zero",
        {"--checkpoint": "{t}/c.pt", "--checkpoint-every": "0"},
        {},
        r"--checkpoint-every: must be a positive integer, got 0",
    ),
    ("seed-not-a-number", {"--seed": "x1"}, {}, r"--seed: invalid int value: 'x1'"),
    # --- outputs and checkpoints
    ("out-under-a-file", {"--out": "{t}/f.txt/out"}, {"f.txt": "a file"}, r"cannot write to .*f\.txt.* not a folder"),
    (
        "out-is-a-file",
        {"--out": "{t}/f.txt"},
        {"f.txt": "a file"},
        r"cannot write to .*f\.txt: it exists and is not a folder",
    ),
    ("out-not-writable", {"--out": "/proc/diyopt-out"}, {}, r"cannot write to /proc/diyopt-out"),
    ("resume-without-checkpoint", {"--resume": True}, {}, r"--resume needs --checkpoint"),
    ("every-without-checkpoint", {"--checkpoint-every": "5"}, {}, r"--checkpoint-every needs --checkpoint"),
    ("checkpoint-exists", {"--checkpoint": "{t}/c.pt"}, {"c.pt": b"an earlier run"}, r"c\.pt exists: resume from it"),
    (
        "checkpoint-garbage",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": b"\x00garbage"},
        r"c\.pt: refused to load, not a plain-data checkpoint.*Unsupported operand",
    ),
    (
        "checkpoint-malicious",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _evil},
        r"c\.pt: refused to load.*Unsupported global: GLOBAL (io|builtins)\.open",
    ),
    (
        "checkpoint-other-settings",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _other_settings},
        r"checkpoint was made with optimizer=sgd, now optimizer=adam",
    ),
    # --- issue 11: checkpoints that are plain data of the wrong shape, bounded
    (
        "checkpoint-params-are-floats",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _crafted(params={"a": 1.0, "b": 2.0})},
        r"c\.pt: not a valid diyopt checkpoint: 'params' must map names to tensors, got str -> float",
    ),
    (
        "checkpoint-fingerprint-a-list",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _crafted(fingerprint=["optimizer", "adam"])},
        r"c\.pt: .*'fingerprint' must map setting names to texts, got a list",
    ),
    (
        "checkpoint-losses-not-a-tensor",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _crafted(losses=[0.5, 0.25])},
        r"c\.pt: .*'losses' must be a 1-D float tensor, got a list",
    ),
    (
        "checkpoint-fingerprint-missing",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _crafted(fingerprint=None)},
        r"c\.pt: not a valid diyopt checkpoint: the field 'fingerprint' is missing",
    ),
    (
        "checkpoint-billion-laughs",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _crafted(fingerprint=_laughs)},
        r"c\.pt: .*'fingerprint' must map setting names to short texts, got str -> list",
    ),
    (
        "checkpoint-step-not-a-count",
        {"--checkpoint": "{t}/c.pt", "--resume": True},
        {"c.pt": _crafted(step="12")},
        r"c\.pt: .*'step' must be a count, got a str",
    ),
    (
        "checkpoint-folder-missing",
        {"--checkpoint": "{t}/nope/c.pt"},
        {},
        r"cannot write checkpoint .*nope/c\.pt: folder .*nope does not exist",
    ),
    # --- issue 11: outputs that belong to the user
    (
        "out-holds-the-users-file",
        {"--out": "{t}/proj"},
        {"proj/": "", "proj/result.json": "the user's own\n"},
        r"proj already holds result\.json, which diyopt did not write; move them away or choose another --out",
    ),
    # --- issue 10 bug 3 / issue 11: errors raised inside the user's code: their file and line, exit 2
    (
        "rule-raises-at-run-time",
        {"--optimizer": "{t}/r.py:rule"},
        {"r.py": RULE.format(body="-lr * grad if grad.numel() > 99 else (_ for _ in ()).throw(RuntimeError('boom'))")},
        r"error in .*r\.py:6 \(in .*\): RuntimeError: boom",
    ),
    (
        "rule-raises-value-error",
        {"--optimizer": "{t}/r.py:rule"},
        {
            "r.py": "import diyopt\n\n@diyopt.elementwise\ndef rule(grad, state, param, *, lr=1e-3):\n"
            "    raise ValueError('my rule is unhappy')\n"
        },
        r"error in .*r\.py:5 \(in rule\): ValueError: my rule is unhappy",
    ),
    (
        "loss-raises-at-run-time",
        {"--loss": "{t}/l.py:loss"},
        {"l.py": "def loss(pred, target):\n    return {}['missing']\n"},
        r"error in .*l\.py:2 \(in loss\): KeyError: 'missing'",
    ),
    (
        "rule-wrong-arity",
        {"--optimizer": "{t}/r.py:rule"},
        {
            "r.py": "import diyopt\n\n@diyopt.elementwise\ndef rule(grad, state, param, *, lr=1e-3):\n    return -lr * grad\n"
        },
        r"rule 'rule' \(.*r\.py:3\) must return \(update, new_state\), got a Tensor",
    ),
    (
        "rule-sys-exit-at-import",
        {"--optimizer": "{t}/r.py:rule"},
        {"r.py": "import sys\nsys.exit(0)\n"},
        r"cannot import .*r\.py, line 2: it calls sys\.exit\(0\) at import",
    ),
    ("rule-file-not-utf8", {"--optimizer": "{t}/r.py:rule"}, {"r.py": b"x = '\xff\xfe'\n"}, r"r\.py.*line 1"),
    # --- issue 11: unfriendly messages made to name the problem
    (
        "spec-bool-for-a-number",
        {"--optimizer": "adam:lr=true"},
        {},
        r"bad value 'true' for 'lr' in spec 'adam:lr=true': expected a number",
    ),
    (
        "data-duplicate-columns",
        {"--data": "{t}/d.csv"},
        {"d.csv": "x,y,x\n1,2,3\n"},
        r"d\.csv:1: column\(s\) \['x'\] appear more than once",
    ),
]


def _ids(rows):
    return [r[0] for r in rows]


def command_line(t: Path, options: dict) -> list[str]:
    merged = {**BASE, **options}
    argv = ["fit"]
    for flag, value in merged.items():
        if value is None:
            continue
        argv += [flag] if value is True else [flag, value.replace("{t}", str(t))]
    return argv


def prepare(t: Path, files: dict) -> dict:
    write_files(t, files)
    if not (t / "out").exists():  # an earlier run's results: a failed run must leave them alone
        plant_output(t / "out", {"result.json": "earlier results\n"})
    return snapshot(t)


def test_the_catalog_is_large_enough():
    assert len(CATALOG) >= 30
    assert len(set(_ids(CATALOG))) == len(CATALOG)


@pytest.mark.parametrize("name, options, files, pattern", CATALOG, ids=_ids(CATALOG))
def test_bad_input(name, options, files, pattern, tmp_path, capsys):
    before = prepare(tmp_path, files)
    code = main(command_line(tmp_path, options))
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written, nothing removed, no temp folder left
    assert not Path("/proc/diyopt-out").exists()


@pytest.mark.parametrize("name", ["unknown-optimizer", "data-bad-row", "steps-zero"])
def test_bad_input_in_a_real_process(name, tmp_path):
    _, options, files, pattern = next(r for r in CATALOG if r[0] == name)
    before = prepare(tmp_path, files)
    proc = subprocess.run(
        [sys.executable, "-m", "diyopt.cli", *command_line(tmp_path, options)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and re.search(pattern, proc.stderr)
    assert "Traceback" not in proc.stderr and snapshot(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path, capsys):
    prepare(tmp_path, {})
    assert main(["--debug"] + command_line(tmp_path, {"--data": "{t}/nope.csv"})) == 2
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------- the same checks through the Python API

WRONG_RULES = [
    ("shape", lambda g, lr: -lr * g.sum(), ValueError, r"update for parameter 'b' has shape \(\), expected .* \(2,\)"),
    ("dtype", lambda g, lr: (-lr * g).half(), TypeError, r"update for parameter 'a' has dtype torch\.float16"),
    ("type", lambda g, lr: 0.0, TypeError, r"update for parameter 'a' must be a Tensor, got float"),
]


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "named"])
@pytest.mark.parametrize("name, body, error, pattern", WRONG_RULES, ids=[r[0] for r in WRONG_RULES])
def test_wrong_update_names_the_parameter(name, body, error, pattern, flat):
    @diyopt.elementwise
    def rule(grad, state, param, *, lr=1e-3):
        return body(grad, lr), state

    # b has 2 elements so a shape error names it; a float32 'c' forces the named (not flat) layout.
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)}
    if name == "shape":
        p0 = {"b": p0["b"], "a": p0["a"]}
    if not flat:
        p0["c"] = torch.zeros(1, dtype=torch.float32)
    loss = lambda p: sum((v.double() - 1).square().sum() for v in p.values())  # noqa: E731
    with pytest.raises(error, match=pattern):
        diyopt.fit(loss, p0, rule(lr=0.1), 3)
