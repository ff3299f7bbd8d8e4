"""``diyopt demo``: the seed's whole experiment in one call.

1. Make the noisy line data (``make_line``) and draw it (``sample.png``).
2. Fit ``a, b`` with the packaged ``torch.optim.Adam`` and the seed's loss ``(y - y_hat).norm()``
   (``Adam_loss.png``, ``Adam.png``).
3. Fit again with diyopt's ``gradient_descent``, the seed's ``a = a - eta * a.grad``
   (``original_loss.png``, ``original.png``).
4. Overlay both loss curves (``compare_loss.png``) and write ``summary.json``, with each fit's error
   against the exact least-squares line for the same data.

Everything is written to a staging folder first and published at the end (:mod:`diyopt._util.files`), so
a failed or interrupted run leaves no half-written output, and files in ``out`` that diyopt did not write
are never touched. Both fits go through ``fit``'s divergence guard: a fit that diverges stops at its last
finite params, and the summary says so (``"stop_reason": "diverged"``; the CLI exits 3).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import torch

from diyopt._util.files import dumps
from diyopt.core.result import Result
from diyopt.engines import fit
from diyopt.optim import gradient_descent
from diyopt.problems.data import least_squares_line, make_line
from diyopt.problems.losses import l2_norm


def initial_params(seed: int) -> dict[str, torch.Tensor]:
    """The seed's ``a = torch.randn(1)``, ``b = torch.randn(1)``, drawn from ``seed`` in float64."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(1, generator=gen, dtype=torch.float64),
        "b": torch.randn(1, generator=gen, dtype=torch.float64),
    }


def seed_loss(x: torch.Tensor, y: torch.Tensor):
    """The seed's model and loss: ``(y - (a x + b)).norm()``."""
    return lambda p: l2_norm(p["a"] * x + p["b"], y)


def fit_with_torch_adam(seed: int, n: int, steps: int, lr: float) -> Result:
    """The seed's first fit: ``torch.optim.Adam`` on the seed's loss (the data made again from ``seed``)."""
    x, y = make_line(n=n, seed=seed)
    return fit(seed_loss(x, y), initial_params(seed), torch.optim.Adam, steps, lr=lr)


def run_demo(
    out: str | Path = "runs/demo",
    seed: int = 0,
    steps: int = 4000,
    lr: float = 1e-3,
    n: int = 100,
    parallel: bool | None = None,
) -> dict:
    """Run the seed's experiment, write six figures and ``summary.json`` to ``out``; return the summary.

    The two fits are independent, so with ``parallel`` (default: on Linux with two or more cores) the
    Adam fit runs in a forked worker process while this one runs gradient descent and draws the data.
    Same results either way: each fit is the same deterministic computation in its own process.
    """
    out = Path(out)
    x, y = make_line(n=n, seed=seed)
    params0 = initial_params(seed)
    exact_a, exact_b = least_squares_line(x, y)
    if parallel is None:
        parallel = sys.platform == "linux" and len(os.sched_getaffinity(0)) > 1

    from diyopt._util.files import output_folder

    with output_folder(out, names=OUTPUT_FILES, kind="demo") as tmp, _worker(parallel) as worker:
        adam = worker.submit(fit_with_torch_adam, seed, n, steps, lr) if worker else None
        from diyopt.analysis import (
            figures as plots,  # matplotlib loads here, after the fork: the worker does not wait for it
        )

        fits = {"gradient_descent": fit(seed_loss(x, y), params0, gradient_descent(lr=lr), steps)}
        _save(plots.plot_data(x, y), tmp / "sample.png")
        _save_fit_figures(
            tmp, x, y, fits["gradient_descent"], "original", LABELS["gradient_descent"], (exact_a, exact_b)
        )
        fits = {"adam": adam.result() if adam else fit_with_torch_adam(seed, n, steps, lr), **fits}
        _save_fit_figures(tmp, x, y, fits["adam"], "Adam", LABELS["adam"], (exact_a, exact_b))
        curves = [(LABELS["adam"], fits["adam"].losses), (LABELS["gradient_descent"], fits["gradient_descent"].losses)]
        _save(plots.plot_losses(curves, ylabel=LOSS_LABEL), tmp / "compare_loss.png")
        summary = {
            "data": {"n": n, "a": -1.0, "b": 1.0, "sigma": 0.1, "seed": seed},
            "exact": {"a": exact_a, "b": exact_b},
            "settings": {
                "steps": steps,
                "lr": lr,
                "loss": "l2_norm",
                "init": {k: float(v) for k, v in params0.items()},
            },
            "fits": {name: _fit_summary(r, exact_a, exact_b) for name, r in fits.items()},
        }
        (tmp / "summary.json").write_text(dumps(summary))
    return summary


#: What the demo writes into its folder (the seed's six figures and the summary).
OUTPUT_FILES = (
    "sample.png",
    "Adam_loss.png",
    "Adam.png",
    "original_loss.png",
    "original.png",
    "compare_loss.png",
    "summary.json",
)


class _Future:
    def __init__(self, conn, process):
        self.conn, self.process = conn, process

    def result(self):
        try:
            ok, value = pickle.loads(self.conn.recv_bytes())
        except EOFError:
            raise RuntimeError(
                f"the demo's worker process ended without a result (exit code {self.process.exitcode})"
            ) from None
        if not ok:
            raise value
        return value


class _worker:
    """``with _worker(True) as w``: ``w.submit(fn, *args)`` runs ``fn`` in one forked child process.

    The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux: even a SIGKILLed parent leaves no
    orphan), leaves Ctrl-C and SIGTERM to the parent, and is killed as soon as the ``with`` block is left
    for any reason -- so a signal ends the whole demo at once, instead of waiting for the child's fit.
    ``None`` when not parallel.
    """

    def __init__(self, parallel: bool):
        self.parallel = parallel
        self.process = None

    def __enter__(self):
        return self if self.parallel else None

    def submit(self, fn, *args) -> _Future:
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_child, args=(send, os.getpid(), fn, args), daemon=True)
        self.process.start()
        send.close()
        return _Future(receive, self.process)

    def __exit__(self, *exc):
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join()
        return False


def _child(conn, parent: int, fn, args) -> None:
    import signal

    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles them, and kills this process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Plain pickle: tensors by value. (multiprocessing's own pickler would pass them as shared memory
    # through a helper thread of this process, which must outlive the transfer.)
    try:
        conn.send_bytes(pickle.dumps((True, fn(*args))))
    except Exception as e:  # noqa: BLE001 -- handed to the parent, which raises it
        conn.send_bytes(pickle.dumps((False, e)))
    finally:
        conn.close()
        os._exit(0)  # no atexit handlers or finalizers of the parent's copy


def _fit_summary(result: Result, exact_a: float, exact_b: float) -> dict:
    a, b = float(result.params["a"]), float(result.params["b"])
    summary = {
        "a": a,
        "b": b,
        "final_loss": float(result.losses[-1]) if len(result.losses) else float("nan"),
        "seconds": result.seconds,
        **result.counts,  # steps, nfev, njev, nhev
        "abs_error_a": abs(a - exact_a),
        "abs_error_b": abs(b - exact_b),
        "stop_reason": result.stop_reason,
    }
    if "diverged" in result.info:
        from diyopt.errors import describe_nonfinite

        summary["diverged"] = describe_nonfinite(result.info["diverged"])
    return summary


def _save(ax, path: Path) -> None:
    from diyopt.analysis import figures as plots

    plots.save(ax, path, tight=False)  # one panel, no title: the fixed margins fit, and save a redraw


# What the figures call the two fits and the loss (the seed's file names stay: Adam*.png, original*.png).
LABELS = {"adam": "Adam (torch.optim)", "gradient_descent": "gradient descent (own rule)"}
LOSS_LABEL = "loss ‖y − ŷ‖ (norm of the residuals)"


def _save_fit_figures(folder: Path, x, y, result: Result, stem: str, label: str, exact: tuple[float, float]) -> None:
    """The seed's two figures of one fit: ``{stem}_loss.png`` (loss per step) and ``{stem}.png`` (data,
    fitted line and the exact least-squares line)."""
    from diyopt.analysis import figures as plots

    _save(plots.plot_loss(result.losses, label=label, ylabel=LOSS_LABEL), folder / f"{stem}_loss.png")
    _save(
        plots.plot_line_fit(x, y, float(result.params["a"]), float(result.params["b"]), label, exact=exact),
        folder / f"{stem}.png",
    )


def format_table(summary: dict) -> str:
    """A small fixed-width table of both fits against the exact line."""
    ex = summary["exact"]
    rows = [
        f"{'fit':<18}{'a':>11}{'b':>11}{'final loss':>13}{'|a-a*|':>10}{'|b-b*|':>10}{'seconds':>9}",
        f"{'exact (lstsq)':<18}{ex['a']:>11.6f}{ex['b']:>11.6f}",
    ]
    for name, f in summary["fits"].items():
        rows.append(
            f"{name:<18}{f['a']:>11.6f}{f['b']:>11.6f}{f['final_loss']:>13.6f}"
            f"{f['abs_error_a']:>10.1e}{f['abs_error_b']:>10.1e}{f['seconds']:>9.3f}"
        )
    return "\n".join(rows)
