"""Certified accuracy on the NIST StRD regression problems: diyopt LM (exact autograd Jacobian) vs scipy.

Run:  python benchmarks/nist_lre.py [DIR_OR_FILE ...]
      (default: diyopt.nist.nist_dir(), i.e. shared/nist, then benchmarks/nist_hard: five of NIST's eight
      higher-difficulty files -- BoxBOD, MGH09, MGH10, Rat42, Rat43 -- typed in from NIST's pages (data,
      starts, certified values; checked: the RSS at the certified values matches NIST's to 11 digits).
      BoxBOD from start 1 is a false convergence for plain LM.)

For every dataset and both NIST starts, prints the LRE (log relative error = correct significant digits,
capped at 11) of the worst parameter for ``diyopt.least_squares(residual, start, method="lm")`` with its
*default* arguments (what a user calls) and, when scipy is installed, for
``scipy.optimize.least_squares(method="lm")`` with its default finite-difference Jacobian and
ftol = xtol = gtol = 1e-15, max_nfev = 20000 (its best; its defaults stop earlier), measured in the same
run; the worst LRE of diyopt's standard errors against NIST's certified standard deviations; residual
evaluations, Jacobian evaluations, restarts after a detected false convergence, and seconds. Ends with
the counts of fits reaching LRE >= 4 and >= 6.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

import diyopt
from diyopt import nist

HARD = Path(__file__).parent / "nist_hard"
TOL = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=20000)  # scipy's: its tightest


def files(args: list[str]) -> list[Path]:
    paths = [Path(a) for a in args] or [nist.nist_dir(), HARD]
    out = []
    for p in paths:
        out += sorted(p.glob("*.dat")) if p.is_dir() else [p]
    return out


def scipy_fit(problem, start):
    """scipy's LM (MINPACK lmdif: forward differences) on the same residual, evaluated in numpy."""
    from scipy.optimize import least_squares

    names = list(problem.certified)
    x0 = torch.stack([start[k] for k in names]).numpy()

    def residual(b):
        with torch.no_grad():
            return problem.residual(dict(zip(names, torch.from_numpy(b)))).numpy()

    t = time.perf_counter()
    with warnings.catch_warnings(), __import__("numpy").errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            r = least_squares(residual, x0, method="lm", **TOL)
            params, nfev = dict(zip(names, torch.from_numpy(r.x))), r.nfev
        except Exception:
            params, nfev = None, 0
    score = nist.worst_lre(params, problem.certified) if params is not None else 0.0
    return score, nfev, time.perf_counter() - t


def main(args: list[str]) -> None:
    try:
        import scipy  # noqa: F401

        have_scipy = True
    except ImportError:
        have_scipy = False
    header = (
        f"{'dataset':10s} {'start':6s} | {'diyopt LRE':>10s} {'std LRE':>7s} {'nfev':>5s} {'njev':>5s} "
        f"{'restarts':>8s} {'seconds':>7s} | {'scipy LRE':>9s} {'nfev':>5s} {'seconds':>7s}"
    )
    # Warm up torch.func's first-call set-up so it is not billed to the first dataset.
    for jac in ("fwd", "rev"):
        diyopt.least_squares(lambda p: p["a"] * torch.arange(3.0) - 1, {"a": torch.tensor(0.0)}, jac=jac)
    print(header)
    print("-" * len(header))
    tally: dict[str, list[float]] = {}
    for path in files(args):
        p = diyopt.problems.nist(path)
        for start in ("start1", "start2"):
            if p.info["kind"] == "linear" and start == "start2":
                continue  # linear files have no starts: both are zeros
            t = time.perf_counter()
            r = diyopt.least_squares(p.residual, p.starts[start], method="lm")  # the defaults
            seconds = time.perf_counter() - t
            ours = nist.worst_lre(r.params, p.certified)
            std = nist.worst_lre(diyopt.stats.standard_errors(p.residual, r.params), p.certified_std)
            group = "" if path.parent != HARD else " (nist_hard)"
            tally.setdefault(f"diyopt {start}{group}", []).append(ours)
            line = (
                f"{p.name[5:]:10s} {start:6s} | {ours:10.1f} {std:7.1f} {r.nfev:5d} "
                f"{r.njev:5d} {r.info.get('restarts', 0):8d} {seconds:7.3f} |"
            )
            if have_scipy:
                theirs, nfev, s_seconds = scipy_fit(p, p.starts[start])
                tally.setdefault(f"scipy  {start}{group}", []).append(theirs)
                line += f" {theirs:9.1f} {nfev:5d} {s_seconds:7.3f}"
            print(line, flush=True)
    print()
    for label, scores in tally.items():
        print(
            f"{label}: LRE >= 4 on {sum(s >= 4 for s in scores)}/{len(scores)}, "
            f"LRE >= 6 on {sum(s >= 6 for s in scores)}/{len(scores)}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
