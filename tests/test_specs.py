"""Optimizer specs: ``diyopt.optim.get("adam:lr=1e-2,betas=0.8/0.99")`` and ``FILE.py:NAME[:settings]``."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch

import diyopt
from diyopt.optim import parse


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("adam", ("adam", None, {})),
        ("adam:", ("adam", None, {})),
        ("adam:lr=1e-2", ("adam", None, {"lr": 0.01})),
        ("adam:lr=1e-2,betas=0.8/0.99", ("adam", None, {"lr": 0.01, "betas": (0.8, 0.99)})),
        ("adam:amsgrad=true,maximize=False", ("adam", None, {"amsgrad": True, "maximize": False})),
        ("rprop:etas=0.5/1.2,step_sizes=1e-6/50", ("rprop", None, {"etas": (0.5, 1.2), "step_sizes": (1e-6, 50)})),
        (" sgd : lr = 0.1 , momentum = 0.9 ", None),  # spaces around the name are not part of the syntax
        ("sgd:lr=0.1, momentum=9", ("sgd", None, {"lr": 0.1, "momentum": 9})),
        ("x:foo=none", ("x", None, {"foo": None})),
        ("rules/my.py:signum", ("rules/my.py", "signum", {})),
        ("rules/my.py:signum:lr=0.1,betas=0.9/0.99", ("rules/my.py", "signum", {"lr": 0.1, "betas": (0.9, 0.99)})),
    ],
)
def test_parse(spec, expected):
    if expected is None:
        with pytest.raises(ValueError, match="bad optimizer name"):
            parse(spec)
    else:
        assert parse(spec) == expected
        assert type(parse(spec)[2].get("momentum", 0)) is int


def test_get_builds_the_named_optimizer_with_its_settings():
    opt = diyopt.optim.get("adam:lr=1e-2,betas=0.8/0.99,amsgrad=true")
    reference = diyopt.optim.adam(lr=1e-2, betas=(0.8, 0.99), amsgrad=True)
    assert opt.hyperparams == reference.hyperparams
    p = {"x": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    g = {"x": torch.tensor([0.3, 0.1], dtype=torch.float64)}
    torch.testing.assert_close(
        opt.update(g, opt.init(p), p)[0]["x"], reference.update(g, reference.init(p), p)[0]["x"], rtol=0, atol=0
    )
    for name in diyopt.optim.names():
        assert diyopt.optim.get(name).hyperparams == getattr(diyopt.optim, name)().hyperparams


def test_a_wrapper_spec_builds_the_wrapped_optimizer_with_each_setting_where_it_belongs():
    opt = diyopt.optim.get("ema+sam+sgd:lr=0.1,momentum=0.9,rho=0.01,adaptive=true,decay=0.9")
    reference = diyopt.optim.ema(
        diyopt.optim.sam(diyopt.optim.sgd(lr=0.1, momentum=0.9), rho=0.01, adaptive=True), decay=0.9
    )
    assert opt.hyperparams == reference.hyperparams
    assert opt.extra_args == {"grad_fn"} and opt.eval_params is not None
    p = {"x": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    grad_fn = lambda q: {"x": 2 * q["x"]}
    a = opt.update(grad_fn(p), opt.init(p), p, grad_fn=grad_fn)[0]["x"]
    b = reference.update(grad_fn(p), reference.init(p), p, grad_fn=grad_fn)[0]["x"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert diyopt.optim.get("lookahead+adam:k=3,alpha=0.8").hyperparams["k"] == 3


@pytest.mark.parametrize(
    "spec, match",
    [
        ("sam", r"sam wraps another optimizer: write sam\+BASE\[:settings\]"),
        ("sma+adam", r"unknown wrapper 'sma' \(did you mean 'sam'\?\)"),
        ("sam+adm", r"unknown optimizer 'adm'"),
        ("sam+adam:rh0=1", r"unknown setting for adam: 'rh0'"),
        ("sam+adam:rho=-1", r"rho"),
    ],
)
def test_bad_wrapper_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        diyopt.optim.get(spec)


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("adm", ValueError, r"unknown optimizer 'adm' \(did you mean 'adam'\?\)"),
        ("adam:bta=0.9", ValueError, r"unknown setting for adam: 'bta' \(did you mean 'betas'\?\)"),
        ("adam:lr", ValueError, r"bad setting 'lr' in spec 'adam:lr': expected key=value"),
        ("adam:lr=", ValueError, r"bad setting 'lr='"),
        ("adam:=1", ValueError, r"bad setting '=1'"),
        ("adam:lr=fast", ValueError, r"bad value 'fast' for 'lr'"),
        ("adam:lr=1,lr=2", ValueError, r"setting 'lr' given twice"),
        ("adam:lr=-1", ValueError, r"Invalid learning rate: -1"),
        ("", ValueError, r"empty optimizer spec"),
        ("my rule", ValueError, r"bad optimizer name 'my rule'"),
        ("rules.py", ValueError, r"names a file but no object in it"),
        ("rules.py:1x", ValueError, r"bad object name '1x'"),
        ("does/not/exist.py:rule", FileNotFoundError, r"no such file: does/not/exist.py"),
        (3, TypeError, r"must be a string"),
    ],
)
def test_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        diyopt.optim.get(spec)


SEED_RULE = """
import diyopt


@diyopt.elementwise
def gradient_descent(grad, state, param, *, lr=1e-3):
    return -lr * grad, state


built = gradient_descent(lr=0.5)


def make(lr=0.1):
    return gradient_descent(lr=lr)


not_an_optimizer = 3
"""


@pytest.fixture
def rule_file(tmp_path):
    path = tmp_path / "my_rule.py"
    path.write_text(SEED_RULE)
    return path


@pytest.mark.parametrize(
    "attr, settings, lr",
    [
        ("gradient_descent", "", 1e-3),  # an elementwise rule, called with no settings
        ("gradient_descent", ":lr=0.25", 0.25),  # ... and with settings
        ("built", "", 0.5),  # an Optimizer, as is
        ("built", ":lr=0.125", 0.125),  # an Optimizer, rebuilt with the settings
        ("make", ":lr=2", 2),  # a factory
    ],
)
def test_user_file(rule_file, attr, settings, lr):
    opt = diyopt.optim.get(f"{rule_file}:{attr}{settings}")
    p, g = {"x": torch.tensor([1.0])}, {"x": torch.tensor([2.0])}
    update, _ = opt.update(g, opt.init(p), p)
    assert update["x"].item() == pytest.approx(-2.0 * lr)


def test_user_file_errors(rule_file, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"unknown name in .*my_rule.py: 'gradient_decent' \(did you mean "
        r"'gradient_descent'\?\)",
    ):
        diyopt.optim.get(f"{rule_file}:gradient_decent")
    with pytest.raises(TypeError, match="is a int; expected an Optimizer"):
        diyopt.optim.get(f"{rule_file}:not_an_optimizer")
    with pytest.raises(ValueError, match="unknown setting for .*'momentum'"):
        diyopt.optim.get(f"{rule_file}:gradient_descent:momentum=0.9")

    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\ndef rule(:\n    pass\n")
    with pytest.raises(ImportError, match=r"cannot import .*broken.py, line 3: SyntaxError"):
        diyopt.optim.get(f"{broken}:rule")

    raising = tmp_path / "raising.py"
    raising.write_text(
        textwrap.dedent("""
        import torch
        x = 1
        y = x / 0
    """)
    )
    with pytest.raises(ImportError, match=r"cannot import .*raising.py, line 4: ZeroDivisionError: division by zero"):
        diyopt.optim.get(f"{raising}:y")


@pytest.mark.parametrize(
    "spec, base",
    [("lookahead+rmsprop:alpha=0.5", "rmsprop"), ("lookahead+asgd:lr=0.1,alpha=0.5", "asgd")],
)
def test_a_setting_both_the_wrapper_and_the_base_take_is_an_error_naming_both(spec, base):
    with pytest.raises(
        ValueError, match=rf"setting 'alpha' in spec '{re.escape(spec)}' is taken by both lookahead and {base}"
    ):
        diyopt.optim.get(spec)


def test_a_wrappers_own_settings_follow_its_name():
    opt = diyopt.optim.get("lookahead:alpha=0.25,k=2+rmsprop:lr=0.1,alpha=0.9")
    ref = diyopt.optim.lookahead(diyopt.optim.rmsprop(lr=0.1, alpha=0.9), k=2, alpha=0.25)
    p = {"x": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    grad = lambda q: {"x": 2 * q["x"]}
    a, b = dict(p), dict(p)
    sa, sb = opt.init(a), ref.init(b)
    for _ in range(4):  # across a slow-weights sync (k=2): lookahead's alpha acts there, rmsprop's each step
        ua, sa = opt.update(grad(a), sa, a)
        ub, sb = ref.update(grad(b), sb, b)
        a, b = {"x": a["x"] + ua["x"]}, {"x": b["x"] + ub["x"]}
    torch.testing.assert_close(a["x"], b["x"], rtol=0, atol=0)
    other = diyopt.optim.lookahead(diyopt.optim.rmsprop(lr=0.1, alpha=0.9), k=2, alpha=0.5)
    c, sc = dict(p), other.init(p)
    for _ in range(4):
        uc, sc = other.update(grad(c), sc, c)
        c = {"x": c["x"] + uc["x"]}
    assert not torch.equal(a["x"], c["x"])  # lookahead's alpha did reach lookahead
    # the wrapper's settings after the base still go to it when only it takes them; a setting given twice is refused
    assert diyopt.optim.get("sam+adam:lr=1e-2,rho=1e+2").hyperparams["rho"] == 100.0
    with pytest.raises(ValueError, match=r"unknown setting for sam: 'rhoo'.*in spec 'sam:rhoo=1\+adam'"):
        diyopt.optim.get("sam:rhoo=1+adam")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("sam+adam:rho=abc", r"bad value 'abc' for 'rho' in spec 'sam\+adam:rho=abc'"),
        ("sam+adam:rh0=1", r"unknown setting for adam: 'rh0'.*\(in spec 'sam\+adam:rh0=1'\)"),
        ("ema+sam+adam:lr", r"bad setting 'lr' in spec 'ema\+sam\+adam:lr'"),
    ],
)
def test_a_settings_error_quotes_the_whole_spec(spec, match):
    with pytest.raises(ValueError, match=match):
        diyopt.optim.get(spec)


def test_a_path_with_a_plus_is_not_split_into_wrappers(tmp_path, monkeypatch):
    folder = tmp_path / "c++"
    folder.mkdir()
    (folder / "my_rule.py").write_text(SEED_RULE)
    monkeypatch.chdir(tmp_path)
    p, g = {"x": torch.tensor([1.0])}, {"x": torch.tensor([2.0])}
    for spec in (f"{folder}/my_rule.py:gradient_descent:lr=0.25", "c++/my_rule.py:gradient_descent:lr=0.25"):
        opt = diyopt.optim.get(spec)
        assert opt.update(g, opt.init(p), p)[0]["x"].item() == pytest.approx(-0.5)
    wrapped = diyopt.optim.get("sam+c++/my_rule.py:gradient_descent:lr=0.25,rho=0.1")
    assert wrapped.hyperparams["rho"] == 0.1 and wrapped.hyperparams["lr"] == 0.25
    assert wrapped.extra_args == {"grad_fn"}


def test_cli_exits_2_on_an_ambiguous_setting(capsys):
    from diyopt.cli import main

    assert main(["check", "lookahead+rmsprop:alpha=0.5"]) == 2
    err = capsys.readouterr().err
    assert "taken by both lookahead and rmsprop" in err and "Traceback" not in err


def test_a_wrapped_file_spec_runs_the_file_once(tmp_path):
    runs = tmp_path / "runs.txt"
    path = tmp_path / "counted.py"
    path.write_text(f"open({str(runs)!r}, 'a').write('x')\n" + SEED_RULE)
    opt = diyopt.optim.get(f"sam+{path}:gradient_descent:lr=0.25,rho=0.1")
    assert runs.read_text() == "x"
    assert opt.hyperparams["rho"] == 0.1 and opt.hyperparams["lr"] == 0.25
