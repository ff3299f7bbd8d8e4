"""``diyopt demo``: the seed's whole experiment in one call.

1. Make the noisy line data (``make_line``) and draw it (``sample.png``).
2. Fit ``a, b`` with the packaged ``torch.optim.Adam`` and the seed's loss ``(y - y_hat).norm()``
   (``Adam_loss.png``, ``Adam.png``).
3. Fit again with diyopt's ``gradient_descent``, the seed's ``a = a - eta * a.grad``
   (``original_loss.png``, ``original.png``).
4. Overlay both loss curves (``compare_loss.png``) and write ``summary.json``, with each fit's error
   against the exact least-squares line for the same data.

Everything is written to a temporary folder first and moved into place at the end, so a failed run
leaves no half-written output.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from . import plots
from .data import least_squares_line, make_line
from .fit import Result, fit
from .losses import l2_norm
from .optim import gradient_descent


def initial_params(seed: int) -> dict[str, torch.Tensor]:
    """The seed's ``a = torch.randn(1)``, ``b = torch.randn(1)``, drawn from ``seed`` in float64."""
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(1, generator=gen, dtype=torch.float64),
            "b": torch.randn(1, generator=gen, dtype=torch.float64)}


def run_demo(out: str | Path = "runs/demo", seed: int = 0, steps: int = 4000, lr: float = 1e-3,
             n: int = 100) -> dict:
    """Run the seed's experiment, write six figures and ``summary.json`` to ``out``; return the summary."""
    out = Path(out)
    x, y = make_line(n=n, seed=seed)
    loss_fn = lambda p: l2_norm(p["a"] * x + p["b"], y)  # noqa: E731 -- the seed's model and loss
    params0 = initial_params(seed)
    exact_a, exact_b = least_squares_line(x, y)

    fits = {
        "adam": fit(loss_fn, params0, torch.optim.Adam, steps, lr=lr),
        "gradient_descent": fit(loss_fn, params0, gradient_descent(lr=lr), steps),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_figures(tmp, x, y, fits)
        summary = {
            "data": {"n": n, "a": -1.0, "b": 1.0, "sigma": 0.1, "seed": seed},
            "exact": {"a": exact_a, "b": exact_b},
            "settings": {"steps": steps, "lr": lr, "loss": "l2_norm", "init": {k: float(v) for k, v in params0.items()}},
            "fits": {name: _fit_summary(r, exact_a, exact_b) for name, r in fits.items()},
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _fit_summary(result: Result, exact_a: float, exact_b: float) -> dict:
    a, b = float(result.params["a"]), float(result.params["b"])
    return {"a": a, "b": b, "final_loss": float(result.losses[-1]), "seconds": result.seconds,
            "steps": result.steps, "abs_error_a": abs(a - exact_a), "abs_error_b": abs(b - exact_b)}


def _write_figures(folder: Path, x, y, fits: dict[str, Result]) -> None:
    plots.save(plots.plot_data(x, y), folder / "sample.png")
    for name, stem, label in (("adam", "Adam", "Adam result"), ("gradient_descent", "original", "original result")):
        r = fits[name]
        plots.save(plots.plot_loss(r.losses), folder / f"{stem}_loss.png")
        plots.save(plots.plot_line_fit(x, y, float(r.params["a"]), float(r.params["b"]), label), folder / f"{stem}.png")
    curves = [("Adam (torch.optim)", fits["adam"].losses), ("gradient_descent (diyopt)", fits["gradient_descent"].losses)]
    plots.save(plots.plot_losses(curves), folder / "compare_loss.png")


def format_table(summary: dict) -> str:
    """A small fixed-width table of both fits against the exact line."""
    ex = summary["exact"]
    rows = [f"{'fit':<18}{'a':>11}{'b':>11}{'final loss':>13}{'|a-a*|':>10}{'|b-b*|':>10}{'seconds':>9}",
            f"{'exact (lstsq)':<18}{ex['a']:>11.6f}{ex['b']:>11.6f}"]
    for name, f in summary["fits"].items():
        rows.append(f"{name:<18}{f['a']:>11.6f}{f['b']:>11.6f}{f['final_loss']:>13.6f}"
                    f"{f['abs_error_a']:>10.1e}{f['abs_error_b']:>10.1e}{f['seconds']:>9.3f}")
    return "\n".join(rows)
