"""NIST StRD regression files: ``nist(path_or_name) -> Problem`` with certified answers.

Reads any file of NIST's Statistical Reference Datasets for nonlinear regression (Misra1a ... Bennett5,
27 in all) and the linear ones written like ``Norris.dat``: the data, the model, Start 1 / Start 2, the
certified parameters, their standard deviations and the certified residual sum of squares.

The model is the formula in the file's ``Model:`` section (``y = b1*(1-exp[-b2*x])  +  e``), parsed
into a torch function: brackets become parentheses, ``pi``, ``exp``, ``log``, ``sin``, ``cos`` and
``arctan`` are the only names besides the parameters and predictors, and the parsed expression is
checked node by node before it is compiled. ``FORMULAS`` keeps NIST's 27 nonlinear formulas keyed by
dataset name, used when a file's own ``Model:`` text cannot be found.

Names resolve in ``$DIYOPT_NIST_DIR``, then in ``shared/nist`` beside the repository
(``<repo>/../shared/nist``); an explicit path is used as is.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from diyopt.errors import DataError
from diyopt.problems.expressions import FUNCTIONS, compile_expression, names_in

# NIST's formulas as its files write them (Model: section), for the 27 nonlinear datasets.
FORMULAS: dict[str, str] = {
    "Misra1a": "y = b1*(1-exp[-b2*x])",
    "Chwirut2": "y = exp(-b1*x)/(b2+b3*x)",
    "Chwirut1": "y = exp[-b1*x]/(b2+b3*x)",
    "Lanczos3": "y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)",
    "Gauss1": "y = b1*exp( -b2*x ) + b3*exp( -(x-b4)**2 / b5**2 ) + b6*exp( -(x-b7)**2 / b8**2 )",
    "Gauss2": "y = b1*exp( -b2*x ) + b3*exp( -(x-b4)**2 / b5**2 ) + b6*exp( -(x-b7)**2 / b8**2 )",
    "DanWood": "y  = b1*x**b2",
    "Misra1b": "y = b1 * (1-(1+b2*x/2)**(-2))",
    "Kirby2": "y = (b1 + b2*x + b3*x**2) / (1 + b4*x + b5*x**2)",
    "Hahn1": "y = (b1+b2*x+b3*x**2+b4*x**3) / (1+b5*x+b6*x**2+b7*x**3)",
    "Nelson": "log[y] = b1 - b2*x1 * exp[-b3*x2]",
    "MGH17": "y = b1 + b2*exp[-x*b4] + b3*exp[-x*b5]",
    "Lanczos1": "y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)",
    "Lanczos2": "y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)",
    "Gauss3": "y = b1*exp( -b2*x ) + b3*exp( -(x-b4)**2 / b5**2 ) + b6*exp( -(x-b7)**2 / b8**2 )",
    "Misra1c": "y = b1 * (1-(1+2*b2*x)**(-.5))",
    "Misra1d": "y = b1*b2*x*((1+b2*x)**(-1))",
    "Roszman1": "y =  b1 - b2*x - arctan[b3/(x-b4)]/pi",
    "ENSO": "y = b1 + b2*cos( 2*pi*x/12 ) + b3*sin( 2*pi*x/12 ) + b5*cos( 2*pi*x/b4 ) + b6*sin( 2*pi*x/b4 )"
    " + b8*cos( 2*pi*x/b7 ) + b9*sin( 2*pi*x/b7 )",
    "MGH09": "y = b1*(x**2+x*b2) / (x**2+x*b3+b4)",
    "Thurber": "y = (b1 + b2*x + b3*x**2 + b4*x**3) / (1 + b5*x + b6*x**2 + b7*x**3)",
    "BoxBOD": "y = b1*(1-exp[-b2*x])",
    "Rat42": "y = b1 / (1+exp[b2-b3*x])",
    "MGH10": "y = b1 * exp[b2/(x+b3)]",
    "Eckerle4": "y = (b1/b2) * exp[-0.5*((x-b3)/b2)**2]",
    "Rat43": "y = b1 / ((1+exp[b2-b3*x])**(1/b4))",
    "Bennett5": "y = b1 * (b2+x)**(-1/b3)",
}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?"


class Formula:
    """A NIST model formula ``lhs = rhs`` as a torch function; residual = ``lhs(y) - rhs(params, x)``.

    ``Formula("log[y] = b1 - b2*x1 * exp[-b3*x2]")`` has ``params == ["b1", "b2", "b3"]`` and
    ``predictors == ["x1", "x2"]``.
    """

    def __init__(self, text: str, source: str = "formula"):
        text = " ".join(text.split())
        text = re.sub(r"\+\s*e\s*$", "", text).strip()  # NIST writes the error term "+ e"
        if text.count("=") != 1:
            raise ValueError(f"{source}: expected one 'lhs = rhs' formula, got {text!r}")
        lhs, rhs = (s.strip().replace("[", "(").replace("]", ")") for s in text.split("="))
        self.text = text
        self.lhs = compile_expression(lhs, source)
        self.rhs = compile_expression(rhs, source)
        names = names_in(self.rhs) | names_in(self.lhs)
        self.params = sorted((n for n in names if re.fullmatch(r"[bB]\d+", n)), key=lambda n: int(n[1:]))
        self.predictors = sorted(n for n in names if re.fullmatch(r"x\d*", n))
        unknown = names - set(self.params) - set(self.predictors) - set(FUNCTIONS) - {"pi", "y"}
        if unknown:
            raise ValueError(f"{source}: unknown name(s) {sorted(unknown)} in model {text!r}")
        if names_in(self.lhs) - set(FUNCTIONS) != {"y"}:
            raise ValueError(f"{source}: the left side of the model must be a function of y, got {lhs!r}")

    def model(self, params: dict[str, Tensor], x: dict[str, Tensor]) -> Tensor:
        return eval(self.rhs, {"__builtins__": {}}, {**FUNCTIONS, "pi": math.pi, **params, **x})

    def response(self, y: Tensor) -> Tensor:
        return eval(self.lhs, {"__builtins__": {}}, {**FUNCTIONS, "y": y})


# ---------------------------------------------------------------- finding and reading files


def nist_dir() -> Path:
    """Where dataset names resolve: ``$DIYOPT_NIST_DIR``, else ``<repo>/../shared/nist``."""
    env = os.environ.get("DIYOPT_NIST_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:  # src/diyopt/nist.py -> <repo> -> <repo>/../shared/nist
        candidate = parent.parent / "shared" / "nist"
        if (parent / "pyproject.toml").exists() and candidate.is_dir():
            return candidate
    return here.parents[3] / "shared" / "nist"


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A path as given if it exists or looks like a path, else ``<nist_dir>/<name>.dat``."""
    path = Path(path_or_name)
    if path.exists() or path.suffix or len(path.parts) > 1:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such NIST StRD file")
        return path
    found = nist_dir() / f"{path}.dat"
    if not found.exists():
        raise FileNotFoundError(
            f"no NIST StRD file {found}; set DIYOPT_NIST_DIR or pass a path "
            f"(NIST's 27 nonlinear datasets: {', '.join(FORMULAS)})"
        )
    return found


def read(path_or_name: str | os.PathLike) -> dict:
    """Parse a NIST StRD file into a dict: name, formula, x (dict of predictors), y, starts, certified,
    certified_std, certified_rss, kind ("nonlinear" or "linear"), path."""
    path = resolve(path_or_name)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None

    def bad(why: str) -> DataError:
        return DataError(f"{path}: not a NIST StRD file: {why}")

    name_line = next((ln for ln in lines if ln.startswith("Dataset Name:")), None)
    if name_line is None:
        raise bad("no 'Dataset Name:' line")
    name = name_line.split(":", 1)[1].split()[0]
    linear = any("Linear Least Squares" in ln for ln in lines[:20])
    formula = _read_formula(lines, name, path)
    if linear:
        rows = [m.groups() for ln in lines if (m := re.fullmatch(rf"\s*(B\d+)\s+({_NUMBER})\s+({_NUMBER})\s*", ln))]
        if not rows:
            raise bad("no certified 'B0 estimate std' rows")
        names = [r[0] for r in rows]
        cert = [float(r[1]) for r in rows]
        std = [float(r[2]) for r in rows]
        start1 = start2 = [0.0] * len(rows)
        rss_line = next((ln for ln in lines if re.match(r"\s*Residual\s+\d+\s", ln)), None)
        if rss_line is None:
            raise bad("no 'Residual  df  sum-of-squares' row in the analysis of variance table")
        rss = float(rss_line.split()[2])
    else:
        rows = [
            m.groups()
            for ln in lines
            if (m := re.fullmatch(rf"\s*(b\d+)\s*=\s*({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s*", ln))
        ]
        if not rows:
            raise bad("no 'b1 = start1 start2 certified std' rows")
        names = [r[0] for r in rows]
        start1, start2, cert, std = ([float(r[i]) for r in rows] for i in (1, 2, 3, 4))
        rss_line = next((ln for ln in lines if ln.strip().startswith("Residual Sum of Squares:")), None)
        if rss_line is None:
            raise bad("no 'Residual Sum of Squares:' line")
        rss = float(rss_line.split(":")[1])
    if sorted(names) != sorted(formula.params):
        raise bad(f"the parameter rows {names} do not match the model's parameters {formula.params}")
    x, y = _read_data(lines, path, formula)
    as_params = lambda values: {n: torch.tensor(v, dtype=torch.float64) for n, v in zip(names, values)}
    return {
        "name": name,
        "path": path,
        "kind": "linear" if linear else "nonlinear",
        "formula": formula,
        "x": x,
        "y": y,
        "starts": {"start1": as_params(start1), "start2": as_params(start2)},
        "certified": as_params(cert),
        "certified_std": as_params(std),
        "certified_rss": rss,
    }


def _read_formula(lines: list[str], name: str, path: Path) -> Formula:
    """The ``lhs = rhs + e`` text of the Model: section (continuation lines joined)."""
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Model:")), None)
    if start is None:
        if name in FORMULAS:
            return Formula(FORMULAS[name], f"{path} (NIST's {name} formula)")
        raise DataError(f"{path}: not a NIST StRD file: no 'Model:' section")
    text, collecting = [], False
    for ln in lines[start + 1 : start + 20]:
        s = ln.strip()
        if not collecting and "=" in s and re.search(r"\by\b", s.split("=")[0]):
            collecting = True
        if collecting:
            if not s:
                break
            text.append(s)
            if re.search(r"\+\s*e$", s):
                break
    if not text:
        if name in FORMULAS:
            return Formula(FORMULAS[name], f"{path} (NIST's {name} formula)")
        raise DataError(f"{path}: not a NIST StRD file: no 'y = ...' formula in the Model: section")
    try:
        return Formula(" ".join(text), str(path))
    except ValueError as e:
        raise DataError(str(e)) from None


def _read_data(lines: list[str], path: Path, formula: Formula) -> tuple[dict[str, Tensor], Tensor]:
    # The data table follows the last 'Data:' line, whose remaining words name the columns (y x1 x2 ...).
    at = max((i for i, ln in enumerate(lines) if ln.startswith("Data:")), default=None)
    if at is None:
        raise DataError(f"{path}: not a NIST StRD file: no 'Data:' table")
    columns = lines[at].split()[1:]
    if "y" not in columns or not all(re.fullmatch(r"[xy]\d*", c) for c in columns):
        raise DataError(f"{path}: the data header should name columns y, x..., got {lines[at]!r}")
    rows = []
    for lineno, ln in enumerate(lines[at + 1 :], start=at + 2):
        if not ln.strip():
            continue
        try:
            row = [float(t) for t in ln.split()]
        except ValueError:
            raise DataError(f"{path}:{lineno}: data row is not numeric: {ln.strip()!r}") from None
        if len(row) != len(columns):
            raise DataError(f"{path}:{lineno}: expected {len(columns)} values ({' '.join(columns)}), got {len(row)}")
        rows.append(row)
    expected = next((int(m.group(1)) for ln in lines if (m := re.search(r"(\d+)\s+Observations", ln))), None)
    if not rows or (expected is not None and len(rows) != expected):
        raise DataError(f"{path}: expected {expected} observations, found {len(rows)} data rows")
    table = torch.tensor(rows, dtype=torch.float64)
    data = {c: table[:, i] for i, c in enumerate(columns)}
    missing = [p for p in formula.predictors if p not in data]
    if missing:
        raise DataError(f"{path}: the model uses {missing} but the data columns are {columns}")
    return {p: data[p] for p in formula.predictors}, data["y"]


def residual_fn(formula: Formula, x: dict[str, Tensor], y: Tensor) -> Callable[[dict], Tensor]:
    """``residual(params) = lhs(y) - model(params, x)``; NIST's certified RSS is ``sum(residual**2)``."""
    response = formula.response(y)
    return lambda params: response - formula.model(params, x)


def lre(estimate: float | Tensor, certified: float | Tensor) -> float:
    r"""Log relative error, the number of correct significant digits:
    :math:`-\log_{10}(|e - c| / |c|)`, capped at 11 (or :math:`-\log_{10}|e|` when ``c == 0``)."""
    e, c = float(estimate), float(certified)
    if not math.isfinite(e):
        return 0.0
    if e == c:
        return 11.0
    err = abs(e - c) / abs(c) if c != 0 else abs(e)
    return max(0.0, min(11.0, -math.log10(err)))


def worst_lre(params: dict[str, Tensor], certified: dict[str, Tensor]) -> float:
    """The smallest LRE over the parameters (NIST's accuracy measure for a fit)."""
    return min(lre(params[k], certified[k]) for k in certified)


# ---------------------------------------------------------------- as a Problem


def problem(path_or_name: str | os.PathLike):
    """A NIST StRD dataset as a :class:`NistProblem`: ``loss = sum(residual**2)`` (NIST's RSS),
    ``params0`` = Start 1, ``solution`` = the certified parameters, ``optimum`` = the certified RSS.

    Example::

        >>> import diyopt
        >>> p = diyopt.problems.nist("Misra1a")
        >>> r = diyopt.least_squares(p.residual, p.starts["start2"])
        >>> diyopt.nist.worst_lre(r.params, p.certified) > 6
        True
    """
    from diyopt.problems._problem import NistProblem

    d = read(path_or_name)
    residual = residual_fn(d["formula"], d["x"], d["y"])
    return NistProblem(
        name=f"nist:{d['name']}",
        params0={k: v.clone() for k, v in d["starts"]["start1"].items()},
        loss=lambda p: residual(p).square().sum(),
        solution=d["certified"],
        optimum=d["certified_rss"],
        residual=residual,
        info={
            "description": f"NIST StRD {d['name']} ({d['kind']}): {d['formula'].text}",
            "path": str(d["path"]),
            "x": d["x"],
            "y": d["y"],
            "kind": d["kind"],
            "formula": d["formula"].text,
        },
        starts=d["starts"],
        certified=d["certified"],
        certified_std=d["certified_std"],
        certified_rss=d["certified_rss"],
    )
