"""``diyopt fit``: one fit from the command line, with checkpoints, a divergence guard and safe outputs.

    diyopt fit --problem line --optimizer adam:lr=1e-2 --steps 4000 --out runs/a \\
               [--loss mse] [--seed 0] [--data my.csv] [--checkpoint runs/a.pt --checkpoint-every 100] \\
               [--resume] [--deterministic] [--engine eager|compiled] [--on-nonfinite stop|raise|skip]

writes ``OUT/result.json`` (final params, final loss, steps, the counts ``nfev``/``njev``/``nhev``, stop_reason,
settings) and ``OUT/losses.csv``
(``step,loss``, one row per step, floats written exactly). Outputs are staged and published by
:mod:`diyopt._util.files`, so a failure or a kill never leaves half an output, and files in ``OUT`` that
diyopt did not write are never touched. Bad input: one line, exit
2; a fit that diverged: its last finite params are written, exit 3. Under ``torchrun`` the line data is
sharded across ranks and rank 0 writes.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diyopt import problems
from diyopt._util.files import dumps, output_folder
from diyopt._util.validate import positive_int
from diyopt.core.checks import NONFINITE_POLICIES
from diyopt.engines import distributed as dd
from diyopt.engines import fit
from diyopt.errors import DivergedError, describe_nonfinite
from diyopt.problems import Problem, data, losses


def run_fit(args: Any) -> int:
    """The handler of ``diyopt fit``; returns the exit code."""
    import sys

    from diyopt.errors import EXIT_DIVERGED

    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(args.seed)
    optimizer = optimizer_from_spec(args.optimizer)  # parse every input before any work or output
    problem, reduction = build_problem(args)
    settings = {
        "problem": args.problem,
        "optimizer_spec": args.optimizer,
        "loss": args.loss,
        "seed": args.seed,
        "data": args.data,
        "engine": args.engine,
    }
    checkpoint = args.checkpoint
    if args.checkpoint_every is not None and checkpoint is None:
        raise ValueError("--checkpoint-every needs --checkpoint FILE")
    if args.resume and checkpoint is None:
        raise ValueError("--resume needs --checkpoint FILE")
    writer = dd.is_main()
    if writer and checkpoint is not None and _inside(checkpoint, args.out):
        Path(args.out).mkdir(parents=True, exist_ok=True)  # --checkpoint OUT/c.pt: OUT holds it from the start
    try:
        with output_folder(args.out, names=("result.json", "losses.csv"), kind="fit") if writer else _nowhere() as tmp:
            result = fit(
                problem.loss,
                problem.params0,
                optimizer,
                args.steps,
                engine=args.engine,
                on_nonfinite=args.on_nonfinite,
                checkpoint=checkpoint,
                checkpoint_every=args.checkpoint_every,
                resume=args.resume,
                settings=settings,
                distributed=reduction,
                progress=None,
            )  # a bar on a terminal only
            if writer:
                write_outputs(tmp, result, settings | {"steps": args.steps})
    except DivergedError as e:  # on_nonfinite="raise": no outputs, the checkpoint has the last finite params
        print(f"diyopt: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    if result.stop_reason == "diverged":
        print(
            f"diyopt: {describe_nonfinite(result.info['diverged'])}; the last finite params are in {args.out}",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    if writer:
        print(f"{result!r}\nresult.json and losses.csv in {args.out}")
    return 0


def _inside(path: str, folder: str) -> bool:
    return Path(folder).resolve() in Path(path).resolve().parents


def default_out(problem: str, optimizer: str) -> str:
    """``diyopt fit``'s output folder when ``--out`` is not given: ``runs/fit-PROBLEM-OPTIMIZER``, every
    character but letters, digits, ``-``, ``_`` and ``.`` made ``_`` (``runs/fit-rosenbrock_dim_4-adam``)."""
    import re

    safe = lambda text: re.sub(r"[^\w.-]+", "_", text).strip("_.") or "x"
    return f"runs/fit-{safe(problem)}-{safe(optimizer.rpartition('/')[2])}"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def optimizer_from_spec(spec: str):
    """``diyopt.optim.get(spec)`` -- the registry's spec syntax (``adam:lr=1e-2``, ``file.py:name``)."""
    from diyopt import optim

    return optim.get(spec)


def build_problem(args: Any) -> tuple[Problem, str | None]:
    """The problem of ``--problem SPEC`` (:func:`diyopt.problems.parse_spec`, the syntax every subcommand
    takes), its data sharded when running under torchrun, and the reduction its loss needs.

    ``--data FILE`` is the ``path`` of the ``csv`` problem (``--problem csv:model=poly:2 --data f.csv``),
    or the data of the seed's line (``--problem line``, params ``a``, ``b``). ``--loss`` and ``--seed``
    go to the problem's factory where it takes them."""
    name, kwargs = problems.parse_spec(args.problem)
    accepted = problems.arguments(name)
    loss_name = args.loss
    if loss_name is not None and not _is_file_spec(loss_name):
        losses.get(loss_name)  # unknown names fail here, with a suggestion
    if loss_name is not None and "loss" in kwargs and kwargs["loss"] != loss_name:
        raise ValueError(f"--loss {loss_name} and loss={kwargs['loss']} in --problem {args.problem}: give one")
    if name == "line" and (args.data is not None or dd.active() or _is_file_spec(loss_name)):
        return _line_problem(args, loss_name or kwargs.pop("loss", "l2_norm"), kwargs)
    if args.data is not None:
        if "path" not in accepted:
            raise ValueError(f"--data is the data file of --problem csv:model=... or --problem line, not of {name!r}")
        if "path" in kwargs:
            raise ValueError(f"--data {args.data} and path={kwargs['path']} in --problem: give one")
        kwargs["path"] = args.data
    if dd.active():
        raise ValueError(f"torchrun works with --problem line (its data is sharded by rank), not {name!r}")
    if _is_file_spec(loss_name):
        raise ValueError(f"--loss FILE.py:NAME works with --problem line, not {name!r}")
    if loss_name is not None:
        if "loss" not in accepted:
            takes = ", ".join(n for n in problems.names() if "loss" in problems.arguments(n))
            raise ValueError(f"problem {name!r} has its own loss; --loss applies to: {takes}")
        kwargs["loss"] = loss_name
    if "seed" in accepted:
        kwargs.setdefault("seed", args.seed)
    return problems.get(name, **kwargs), None


def _line_problem(args: Any, loss_name: str, kwargs: dict | None = None) -> tuple[Problem, str | None]:
    """The line ``y = a x + b`` on the seed's data (``kwargs``: ``make_line``'s) or a CSV file, on this
    rank's shard of the rows."""
    kwargs = dict(kwargs or {})
    if args.data and kwargs:
        raise ValueError(
            f"--data FILE replaces the line's generated data; drop {', '.join(kwargs)} from --problem {args.problem}"
        )
    x, y = data.load_csv(args.data) if args.data else data.make_line(**{"seed": args.seed, **kwargs})
    reduction = None
    if dd.active():
        reduction = None if _is_file_spec(loss_name) else dd.REDUCTION.get(loss_name)
        if reduction is None:
            raise ValueError(
                f"loss {loss_name!r} does not decompose across ranks; use one of {', '.join(sorted(dd.REDUCTION))}"
            )
        x, y = dd.shard(x, y, even=reduction == "mean")
    loss_on_pred = load_from_file(loss_name) if _is_file_spec(loss_name) else losses.get(loss_name)
    zero = torch.zeros(1, dtype=torch.float64)
    return Problem(
        "line",
        {"a": zero, "b": zero.clone()},
        lambda p: loss_on_pred(p["a"] * x + p["b"], y),
        info={"x": x, "y": y, "loss": loss_name},
    ), reduction


def _is_file_spec(spec: str | None) -> bool:
    return bool(spec) and ".py:" in spec


def load_from_file(spec: str) -> Any:
    """``path/to/file.py:name`` -> that object, by the spec registry's loader (errors name file and line)."""
    from diyopt.optim import getattr_from_file

    path, _, name = spec.rpartition(":")
    return getattr_from_file(path, name)


def write_outputs(folder, result, settings: dict) -> None:
    """``result.json`` and ``losses.csv``; floats as Python's shortest exact repr (they round-trip)."""
    summary = {
        "params": {k: v.detach().cpu().double().reshape(-1).tolist() for k, v in result.params.items()},
        "shapes": {k: list(v.shape) for k, v in result.params.items()},
        "final_loss": result.final_loss,
        **result.counts,  # steps, and the evaluations of the loss, its gradient and Hessian (core/result.py)
        "stop_reason": result.stop_reason,
        "seconds": result.seconds,
        "settings": {k: v for k, v in settings.items() if v is not None},
        "info": {k: v for k, v in result.info.items() if k in ("diverged", "skipped")},
        # "eval": params are the optimizer's evaluation params (schedule-free, EMA), train_params beside
        "params_are": result.params_are,
    }
    if result.train_params is not None:
        summary["train_params"] = {
            k: v.detach().cpu().double().reshape(-1).tolist() for k, v in result.train_params.items()
        }
    (folder / "result.json").write_text(dumps(summary))  # strict JSON: a nan/inf is null, its reason beside
    with open(folder / "losses.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["step", "loss"])
        out.writerows((i, repr(v)) for i, v in enumerate(result.losses.double().tolist()))


class _nowhere:
    """Ranks other than 0 write nothing."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def add(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="one fit of a problem with an optimizer spec; checkpoints, resume, "
        "divergence guard; writes result.json and losses.csv",
        description="Fit --problem with --optimizer for --steps updates and write "
        "OUT/result.json and OUT/losses.csv (complete or not at all). Exit 2 on bad input, "
        "3 when the fit diverged (the last finite params are written). Runs under torchrun "
        "too: the data is sharded by rank, rank 0 writes.",
    )
    p.add_argument(
        "--problem",
        required=True,
        help="problem spec NAME[:key=value,...] as in compare and sweep: "
        "rosenbrock:dim=4, nist:Misra1a, csv:path=data.csv,model=poly:2 (diyopt list problems)",
    )
    p.add_argument("--optimizer", required=True, help="optimizer spec, e.g. adam:lr=1e-2 or my_rule.py:name")
    p.add_argument("--steps", type=positive_int, default=1000, help="number of updates (default: 1000)")
    p.add_argument(
        "--out",
        default=None,
        help="output folder for result.json and losses.csv (default: "
        "runs/fit-PROBLEM-OPTIMIZER, e.g. runs/fit-rosenbrock_dim_4-adam)",
    )
    p.add_argument(
        "--loss",
        help="loss name for problems that take one (line, csv): l2_norm, mse, sse, ...; "
        "with --problem line also FILE.py:NAME",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the data and RNGs (default: 0)")
    p.add_argument(
        "--data",
        help="a CSV file with columns x, y: the path of --problem csv (any model it takes: "
        "csv:model=poly:2), or the data of --problem line",
    )
    p.add_argument("--checkpoint", help="checkpoint file, saved atomically every --checkpoint-every updates")
    p.add_argument("--checkpoint-every", type=positive_int, help="updates between checkpoints (default: 100)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--engine", choices=["eager", "compiled"], default="eager", help="default: eager")
    p.add_argument(
        "--on-nonfinite",
        choices=NONFINITE_POLICIES,
        default="stop",
        help="what a nan/inf loss or gradient does: stop (exit 3, the last finite params "
        "written), raise (exit 3, nothing written), skip (leave params and state as they were for "
        "that step), ignore (no check) (default: stop)",
    )

    def run(args) -> int:

        if args.out is None:
            args.out = default_out(args.problem, args.optimizer)
        return run_fit(args)

    p.set_defaults(run=run)
