"""NIST StRD: the reader, the formulas, and certified accuracy of least_squares(method="lm").

Reference values are NIST's certified parameters, standard deviations and residual sums of squares,
read from the files in ``<repo>/../shared/nist`` (or ``$DIYOPT_NIST_DIR``).
"""

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import diyopt
from diyopt import nist
from diyopt.problems.data import DataError

NIST_DIR = nist.nist_dir()
FILES = sorted(NIST_DIR.glob("*.dat"))
needs_files = pytest.mark.skipif(not FILES, reason=f"no NIST StRD files in {NIST_DIR} (set DIYOPT_NIST_DIR)")
NONLINEAR = [f.stem for f in FILES if f.stem != "Norris"]
TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=20000)
ALL_27 = [
    "Misra1a",
    "Chwirut2",
    "Chwirut1",
    "Lanczos3",
    "Gauss1",
    "Gauss2",
    "DanWood",
    "Misra1b",
    "Kirby2",
    "Hahn1",
    "Nelson",
    "MGH17",
    "Lanczos1",
    "Lanczos2",
    "Gauss3",
    "Misra1c",
    "Misra1d",
    "Roszman1",
    "ENSO",
    "MGH09",
    "Thurber",
    "BoxBOD",
    "Rat42",
    "MGH10",
    "Eckerle4",
    "Rat43",
    "Bennett5",
]


def test_shared_nist_is_found():
    assert (NIST_DIR / "Misra1a.dat").exists(), f"shared/nist not found at {NIST_DIR}"


@functools.cache
def _fit(name: str, start: str):
    """LM with its *default* arguments: what a user calls (issue 10: the defaults reach certified accuracy)."""
    p = diyopt.problems.nist(name)
    return p, diyopt.least_squares(p.residual, p.starts[start], method="lm")


def _rounding_level(p) -> bool:
    """Residuals at float64 rounding level (Lanczos1: RSS 1.4e-25 on y ~ 1): its RSS, and so its standard
    deviations, carry only ~3 digits when the residuals are evaluated in float64."""
    return p.certified_rss < 1e-20 * float(p.info["y"].square().sum())


@needs_files
@pytest.mark.parametrize("start", ["start1", "start2"])
@pytest.mark.parametrize("name", NONLINEAR)
def test_lm_certified_accuracy(name, start):
    """With default arguments: LRE >= 6 on every parameter from both NIST starts (and the RSS to 6
    digits), at a point that passes the first-order optimality test."""
    p, r = _fit(name, start)
    assert r.stop_reason == "converged", r.info["message"]
    assert nist.worst_lre(r.params, p.certified) >= 6
    assert r.info["optimality"] < 1e-3 and not r.info["degenerate"]
    if not _rounding_level(p):
        assert nist.lre(r.final_loss, p.certified_rss) >= 6


@needs_files
@pytest.mark.parametrize("start", ["start1", "start2"])
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=pytest.mark.xfail(
                reason="Lanczos1's residuals are at float64 rounding level: "
                "its std LRE measures 2.9-3.0 depending on the start",
                strict=False,
            ),
        )
        if n == "Lanczos1"
        else n
        for n in NONLINEAR
    ],
)
def test_standard_errors_match_certified(name, start):
    """Standard errors from the autograd Jacobian agree with NIST's certified standard deviations to
    >= 3 digits."""
    p, r = _fit(name, start)
    std = diyopt.stats.standard_errors(p.residual, r.params)
    assert nist.worst_lre(std, p.certified_std) >= 3


@needs_files
def test_norris_linear_to_nine_digits():
    p = diyopt.problems.nist("Norris")
    assert p.info["kind"] == "linear" and set(p.certified) == {"B0", "B1"}
    r = diyopt.least_squares(p.residual, p.params0)
    assert nist.worst_lre(r.params, p.certified) >= 9
    assert nist.worst_lre(diyopt.stats.standard_errors(p.residual, r.params), p.certified_std) >= 9
    assert nist.lre(r.final_loss, p.certified_rss) >= 9


@needs_files
def test_problem_fields():
    p = diyopt.problems.get("nist", path_or_name="Misra1a")
    assert p.name == "nist:Misra1a" and list(p.params0) == ["b1", "b2"]
    assert float(p.params0["b1"]) == 500 and float(p.starts["start2"]["b2"]) == 0.0005
    assert float(p.certified["b1"]) == 2.3894212918e02 and float(p.certified_std["b2"]) == 7.2668688436e-06
    # The loss is NIST's residual sum of squares: at the certified values it is the certified RSS.
    assert nist.lre(p.loss(p.certified), p.certified_rss) >= 8
    assert p.optimum == p.certified_rss and p.solution is p.certified
    nelson = diyopt.problems.nist(NIST_DIR / "Nelson.dat")  # an explicit path, 2 predictors, log(y)
    assert set(nelson.info["x"]) == {"x1", "x2"}
    assert nist.lre(nelson.loss(nelson.certified), nelson.certified_rss) >= 8


def _anchor_models():
    path = NIST_DIR.parent / "anchors" / "nist_scipy.py"
    if not path.exists():
        pytest.skip(f"no {path}")
    pytest.importorskip("scipy")
    spec = importlib.util.spec_from_file_location("nist_scipy_anchor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODELS


def test_formula_table_covers_all_27_and_matches_the_anchor():
    """Each of NIST's 27 formulas, parsed, equals the anchor's hand-written numpy model."""
    assert sorted(nist.FORMULAS) == sorted(ALL_27)
    models = _anchor_models()
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 3.0, 20)
    for name, text in nist.FORMULAS.items():
        f = nist.Formula(text)
        b = rng.uniform(0.5, 1.5, len(f.params))
        params = {k: torch.tensor(v) for k, v in zip(f.params, b)}
        if name == "Nelson":
            x2 = rng.uniform(1.0, 3.0, 20)
            got = f.model(params, {"x1": torch.tensor(x), "x2": torch.tensor(x2)}).numpy()
            want = b[0] - b[1] * x * np.exp(-b[2] * x2)
        else:
            got = f.model(params, {"x": torch.tensor(x)}).numpy()
            want = models[name](b, x)
        np.testing.assert_allclose(got, want, rtol=1e-13, err_msg=name)


# BoxBOD (not in shared/): NIST's data, starts and certified values, written out in NIST's file format.
BOXBOD = """NIST/ITL StRD
Dataset Name:  BoxBOD            (BoxBOD.dat)

Procedure:     Nonlinear Least Squares Regression

Data:          1 Response  (y = biochemical oxygen demand)
               1 Predictor (x = incubation time)
               6 Observations
               Higher Level of Difficulty
               Observed Data

Model:         Exponential Class
               2 Parameters (b1 and b2)

               y = b1*(1-exp[-b2*x])  +  e

          Starting values                  Certified Values

        Start 1     Start 2           Parameter     Standard Deviation
  b1 =     1           100           2.1380940889E+02  1.2354515176E+01
  b2 =     1             0.75        5.4723748542E-01  1.0455993237E-01

Residual Sum of Squares:                    1.1680088766E+03
Residual Standard Deviation:                1.7088072423E+01
Degrees of Freedom:                                 4
Number of Observations:                             6

Data:   y               x
      109             1
      149             2
      149             3
      191             5
      213             7
      224            10
"""


def test_a_file_outside_shared(tmp_path, monkeypatch):
    (tmp_path / "BoxBOD.dat").write_text(BOXBOD)
    monkeypatch.setenv("DIYOPT_NIST_DIR", str(tmp_path))
    p = diyopt.problems.nist("BoxBOD")  # by name, through $DIYOPT_NIST_DIR
    r = diyopt.least_squares(p.residual, p.starts["start2"], **TIGHT)
    assert nist.worst_lre(r.params, p.certified) >= 6
    assert nist.worst_lre(diyopt.stats.standard_errors(p.residual, r.params), p.certified_std) >= 3
    assert nist.lre(r.final_loss, p.certified_rss) >= 6


def test_model_section_missing_falls_back_to_the_table(tmp_path):
    text = BOXBOD.replace("               y = b1*(1-exp[-b2*x])  +  e\n", "")
    (tmp_path / "BoxBOD.dat").write_text(text)
    p = diyopt.problems.nist(tmp_path / "BoxBOD.dat")
    assert p.info["formula"] == nist.Formula(nist.FORMULAS["BoxBOD"]).text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("      149             3\n", "      149             three\n"), "not numeric"),
        (lambda t: t.replace("      224            10\n", ""), "expected 6 observations"),
        (lambda t: t.replace("      224            10\n", "      224  10  3\n"), "expected 2 values"),
        (lambda t: t.replace("y = b1*(1-exp[-b2*x])", "y = b1*__import__('os')"), "unsupported"),
        (lambda t: t.replace("y = b1*(1-exp[-b2*x])", "y = b1*(1-exp[-b2*z])"), "unknown name"),
        (
            lambda t: t.replace("  b2 =     1             0.75        5.4723748542E-01  1.0455993237E-01\n", ""),
            "do not match",
        ),
        (lambda t: t.replace("Dataset Name:", "Name:"), "no 'Dataset Name:'"),
        (lambda t: t.replace("Residual Sum of Squares:", "RSS:"), "Residual Sum of Squares"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, edit, message):
    path = tmp_path / "Bad.dat"
    path.write_text(edit(BOXBOD))
    with pytest.raises(DataError, match=message) as info:
        nist.read(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_name_and_missing_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DIYOPT_NIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Nope.dat"):
        nist.read("Nope")
    with pytest.raises(FileNotFoundError, match="no such NIST StRD file"):
        nist.read(tmp_path / "missing.dat")


def test_lre():
    assert nist.lre(1.23456789, 1.23456789) == 11.0
    assert math.isclose(nist.lre(1.0001, 1.0), 4.0, rel_tol=1e-6)
    assert nist.lre(float("nan"), 1.0) == 0.0


# ---------------------------------------------------------------- false convergence: detected, recovered


def _boxbod(tmp_path):
    (tmp_path / "BoxBOD.dat").write_text(BOXBOD)
    return diyopt.problems.nist(tmp_path / "BoxBOD.dat")


@pytest.mark.parametrize("start", ["start1", "start2"])
def test_boxbod_defaults_recover_from_a_false_convergence(tmp_path, start):
    """From NIST's start 1 LM's first step sends b2 to ~110, where exp(-b2 x) = 0: the cost is flat there
    and every test holds after 4 evaluations (LRE 0, reported "converged" before). The saturation check
    sees b2's Jacobian column vanish and the restart with a small trust region reaches the certified
    values."""
    p = _boxbod(tmp_path)
    r = diyopt.least_squares(p.residual, p.starts[start])
    assert r.stop_reason == "converged", r.info["message"]
    assert nist.worst_lre(r.params, p.certified) >= 6
    assert nist.lre(r.final_loss, p.certified_rss) >= 6
    assert r.info["restarts"] == (1 if start == "start1" else 0)


def test_a_false_convergence_that_cannot_be_recovered_is_reported(tmp_path):
    p = _boxbod(tmp_path)
    r = diyopt.least_squares(p.residual, p.starts["start1"], max_nfev=4)  # no budget left to restart
    assert r.stop_reason == "false_convergence" and r.info["restarts"] == 0
    assert r.info["degenerate"] == ["b2"] and "b2" in r.info["message"]
    assert nist.worst_lre(r.params, p.certified) < 1  # it is far from the minimum indeed


@needs_files
def test_a_premature_stop_fails_the_gradient_test():
    """xtol=0.1 stops Misra1a from start 1 while the cost still slopes: the gradient test says so; at the
    certified minimum the same test passes."""
    p = diyopt.problems.nist("Misra1a")
    r = diyopt.least_squares(p.residual, p.starts["start1"], xtol=0.1)
    assert r.stop_reason == "false_convergence" and r.info["optimality"] > 1e-3
    assert "gradient test" in r.info["message"] and nist.worst_lre(r.params, p.certified) < 3
    at_minimum = diyopt.least_squares(p.residual, p.certified, xtol=0.1)
    assert at_minimum.stop_reason == "converged" and at_minimum.info["optimality"] < 1e-6


HARD = sorted((Path(__file__).parents[1] / "benchmarks" / "nist_hard").glob("*.dat"))


@pytest.mark.parametrize("start", ["start1", "start2"])
@pytest.mark.parametrize("path", HARD, ids=[p.stem for p in HARD])
def test_higher_difficulty_files_with_defaults(path, start):
    """Five of NIST's higher-difficulty files (typed in, benchmarks/nist_hard): the data are NIST's (the RSS
    at the certified values is NIST's RSS), and LM with default arguments reaches LRE >= 6 from both starts
    (the old defaults: BoxBOD start 1 LRE 0, MGH09 5.1)."""
    p = diyopt.problems.nist(path)
    assert nist.lre(p.loss(p.certified), p.certified_rss) >= 9
    r = diyopt.least_squares(p.residual, p.starts[start])
    assert r.stop_reason == "converged", r.info["message"]
    assert nist.worst_lre(r.params, p.certified) >= 6
