"""``diyopt.bench``: every optimizer, tuned by the rules of :mod:`diyopt.analysis.benchmarking.tuning`, on every task.

The output folder (written through :func:`diyopt._util.files.output_folder`, so each publication is atomic):

- ``results.csv`` -- one row per task x optimizer: ``task, optimizer, solved, attempts, best_metric,
  steps_to_target, seconds_to_target`` (workloads only), ``seconds`` and the criterion, target, studies solved, engine;
- ``matrix.png`` -- tasks x optimizers, the fraction of studies that solved the task (LightBench's matrix);
- ``manifest.json`` -- what ran: versions, seeds, trials, search spaces, git revision, machine, flags.

After each task x optimizer pair the folder is republished with the rows so far (``manifest.json`` says
``"complete": false``), so ``resume=True`` (``--resume``) after a kill skips the pairs already done.
"""
from __future__ import annotations

import csv
import io
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diyopt.core.contract import Optimizer

from .tasks import Task
from .tasks import suite as get_suite
from .tuning import points, space_for, tunable
from .workloads import Workload, require_sklearn, train
from .workloads import workloads as get_workloads

SUITES = ("diagnostic", "workloads", "all")

COLUMNS = ["task", "optimizer", "solved", "attempts", "best_metric", "steps_to_target", "seconds_to_target",
           "seconds", "criterion", "target", "studies_solved", "trials", "engine"]
NOT_REACHED = "not reached"


@dataclass
class BenchResult:
    """What :func:`bench` returns: ``rows`` (one dict per task x optimizer, :data:`COLUMNS`), the
    ``manifest`` and the output folder (None without ``out``)."""

    rows: list[dict]
    manifest: dict
    out: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # pairs taken from an earlier run

    def solved(self, optimizer: str) -> list[str]:
        """The tasks ``optimizer`` solved."""
        return [r["task"] for r in self.rows if r["optimizer"] == optimizer and r["solved"]]

    def to_csv(self) -> str:
        with io.StringIO(newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(COLUMNS)
            for r in self.rows:
                w.writerow([_cell(r[c]) for c in COLUMNS])
            return f.getvalue()


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, float):
        return NOT_REACHED if math.isinf(v) else repr(v)
    return str(v)


def _resolve(spec: Any) -> tuple[str, Optimizer]:
    """A spec string (``adam``, ``adam:eps=1e-6``, ``my_rules.py:rule``) or ``(label, Optimizer)``."""
    from diyopt.optim import get

    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Optimizer):
        return str(spec[0]), spec[1]
    if not isinstance(spec, str):
        raise TypeError(f"an optimizer for bench is a spec string or (label, Optimizer), got {spec!r}")
    return spec, get(spec)


def _space(label: str, optimizer: Optimizer, space: Mapping | None) -> dict:
    """The box tuned for ``label``: its search space less the hyperparameters the spec fixes
    (``adam:lr=1e-2`` tunes ``beta1`` only; ``adam:betas=0.9/0.99`` tunes ``lr`` only)."""
    from diyopt.optim import parse

    box = space_for(_space_name(label), optimizer, space)
    try:
        fixed = set(parse(label)[2])
    except (ValueError, TypeError):
        fixed = set()
    return {k: v for k, v in box.items() if ("betas" if k == "beta1" else k) not in fixed}


def _space_name(label: str) -> str:
    from diyopt.optim import parse

    if isinstance(label, str):
        try:
            target, attr, _ = parse(label)
            return target if attr is None else attr
        except (ValueError, TypeError):
            pass
    return label


def run_task(task: Task, label: str, optimizer: Optimizer, *, trials: int, seeds: Sequence[int],
             space: Mapping | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """One task x optimizer: ``len(seeds)`` studies of ``trials`` Sobol points each, every study one
    :func:`diyopt.sweep` (the vectorized engine; its loop fallback where vmap refuses, recorded in
    ``engine``). Returns the results row."""
    from diyopt.engines import sweep

    box = _space(label, optimizer, space)
    keys = list(box)
    trials = trials if keys else 1  # nothing left to tune: one trial, the spec as given
    grid = {"point": [tuple(pt[k] for k in keys) for pt in points(box, trials)]}
    t0 = time.perf_counter()
    firsts, bests, steps_hit, engines = [], [], [], set()
    by_loss = task.problem(seeds[0], dtype).metric is None  # the criterion is the loss: its curve tells when
    for seed in seeds:
        problem = task.problem(seed, dtype)
        opt = tunable(optimizer, keys, problem.effect)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = sweep(problem.loss, problem.params, opt, task.steps, grid=grid)
        engines.add("loop (vmap refused the rule or loss)" if r.info.get("fallback") else r.info.get("engine", "vmap"))
        for w in caught:
            if "fallback" not in r.info:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        metric = problem.metric or problem.loss
        values = []
        with torch.no_grad():
            for k, row in enumerate(r.rows):
                m = float(metric(r.run_params(k)))
                values.append(m if math.isfinite(m) and not row["diverged"] else math.inf)
        passed = [k for k, v in enumerate(values) if v <= task.target]
        firsts.append(passed[0] + 1 if passed else math.inf)
        bests.append(min(values))
        if by_loss and passed:
            below = r.losses[passed] <= task.target
            hit = torch.where(below.any(1), below.float().argmax(1), task.steps)
            steps_hit.append(float(hit.min()))
        else:
            steps_hit.append(math.inf)
    n_solved = sum(math.isfinite(f) for f in firsts)
    solved = n_solved > len(seeds) / 2
    return {"task": task.name, "optimizer": label, "solved": solved,
            "attempts": statistics.median(firsts) if solved else math.inf,
            "best_metric": statistics.median(bests),
            "steps_to_target": statistics.median(steps_hit) if by_loss else None, "seconds_to_target": None,
            "seconds": round(time.perf_counter() - t0, 4), "criterion": task.criterion, "target": task.target,
            "studies_solved": f"{n_solved}/{len(seeds)}", "trials": trials, "engine": "; ".join(sorted(engines))}


def run_workload(workload: Workload, label: str, optimizer: Optimizer, *, trials: int, seeds: Sequence[int],
                 space: Mapping | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """One workload x optimizer under the tuning rules of :func:`run_task`; the trials run one by one
    (:func:`diyopt.analysis.benchmarking.workloads.train`: the score needs the metric every ``eval_every`` steps).
    ``steps_to_target`` / ``seconds_to_target``: median over studies of the study's best passing trial."""
    box = _space(label, optimizer, space)
    keys = list(box)
    trials = trials if keys else 1
    pts = [tuple(pt[k] for k in keys) for pt in points(box, trials)]
    opt = tunable(optimizer, keys, None)
    t0 = time.perf_counter()
    firsts, bests, steps_hit, secs_hit = [], [], [], []
    for seed in seeds:
        problem = workload.problem(seed, dtype)
        results = [train(workload, problem, opt.build(point=pt)) for pt in pts]
        passed = [k for k, r in enumerate(results) if math.isfinite(r["steps"])]
        firsts.append(passed[0] + 1 if passed else math.inf)
        bests.append(min(r["best"] for r in results))
        steps_hit.append(min(r["steps"] for r in results))
        secs_hit.append(min(r["seconds"] for r in results))
    n_solved = sum(math.isfinite(f) for f in firsts)
    solved = n_solved > len(seeds) / 2
    return {"task": workload.name, "optimizer": label, "solved": solved,
            "attempts": statistics.median(firsts) if solved else math.inf,
            "best_metric": statistics.median(bests), "steps_to_target": statistics.median(steps_hit),
            "seconds_to_target": round(statistics.median(secs_hit), 4),
            "seconds": round(time.perf_counter() - t0, 4), "criterion": workload.criterion,
            "target": workload.target, "studies_solved": f"{n_solved}/{len(seeds)}", "trials": trials,
            "engine": f"loop (validation every {workload.eval_every} steps)"}


def suite_tasks(name: str) -> list:
    """The tasks of ``--suite``: ``diagnostic``, ``workloads`` or ``all`` (diagnostic, then workloads)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(map(repr, SUITES))}")
    return ((get_suite() if name != "workloads" else []) + (get_workloads() if name != "diagnostic" else []))


def bench(optimizers: Sequence[Any], *, suite: str = "diagnostic", trials: int = 16, seeds: int | Sequence[int] = 3,
          out: str | os.PathLike | None = None, tasks: Sequence[str] | None = None,
          spaces: Mapping[str, Mapping] | None = None, dtype: torch.dtype = torch.float32, resume: bool = False,
          progress: bool | None = None, flags: Mapping[str, Any] | None = None) -> BenchResult:
    """Tune each optimizer on each task of ``suite`` and tell which it solves.

    Args:
      optimizers: specs (``"adam"``, ``"sgd:nesterov=true"``, ``"my_rules.py:rule"``, as
        :func:`diyopt.optim.get`) or ``(label, Optimizer)`` pairs. The search space
        (:data:`diyopt.analysis.benchmarking.tuning.SPACES`, by name; a user's rule: its ``lr``) is tuned, less the settings
        the spec fixes (``adam:lr=1e-2`` tunes only ``beta1``).
      trials: Sobol points per study; seeds: studies (a count ``S`` means seeds ``0..S-1``).
      out: the output folder (``results.csv``, ``matrix.png``, ``manifest.json``); None: write nothing.
      tasks: task names or family names to run (default: all).
      spaces: ``{label: {hyperparameter: (low, high, "log"|"linear")}}`` overriding the built-in spaces.
      resume: keep the rows of an earlier, interrupted run in ``out`` with the same settings.
      progress: a bar over task x optimizer pairs on stderr (None: when stderr is a terminal).

    A task is solved when more than half of the studies have a passing trial; see :mod:`diyopt.analysis.benchmarking.tuning`.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds}")
        seeds = list(range(seeds))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")
    if not optimizers:
        raise ValueError("no optimizers to bench")
    resolved = [_resolve(s) for s in optimizers]
    labels = [l for l, _ in resolved]
    if len(set(labels)) != len(labels):
        raise ValueError(f"optimizer given twice: {sorted(l for l in labels if labels.count(l) > 1)}")
    all_tasks = suite_tasks(suite)
    chosen = _select(all_tasks, tasks)
    if any(isinstance(t, Workload) for t in chosen):
        require_sklearn()  # before any work: a one-line error naming the extra
    spaces = dict(spaces or {})
    for label, opt in resolved:  # every space checked before any work
        _space(label, opt, spaces.get(label))
    config = {"suite": suite, "tasks": [t.name for t in chosen], "optimizers": labels, "trials": trials,
              "seeds": seeds, "dtype": str(dtype).removeprefix("torch."),
              "spaces": {l: _space(l, o, spaces.get(l)) for l, o in resolved}}
    manifest = _manifest(config, flags)
    done: dict[tuple[str, str], dict] = {}
    if resume and out is not None:
        done = _earlier(Path(out), config)
    rows: list[dict] = []
    skipped = []
    pairs = [(t, l, o) for t in chosen for l, o in resolved]
    bar = _bar(progress, len(pairs))
    for task, label, opt in pairs:
        if (task.name, label) in done:
            rows.append(done[(task.name, label)])
            skipped.append((task.name, label))
        else:
            runner = run_workload if isinstance(task, Workload) else run_task
            rows.append(runner(task, label, opt, trials=trials, seeds=seeds, space=spaces.get(label),
                                 dtype=dtype))
            if out is not None:
                _publish(Path(out), rows, manifest, complete=False)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    manifest["finished"] = _now()
    result = BenchResult(rows, manifest, Path(out) if out is not None else None, skipped)
    if out is not None:
        _publish(Path(out), rows, manifest, complete=True)
    return result


def _select(all_tasks: list[Task], names: Sequence[str] | None) -> list[Task]:
    if not names:
        return all_tasks
    from diyopt.errors import unknown_name

    known = {t.name for t in all_tasks} | {t.family for t in all_tasks}
    families = list(dict.fromkeys(t.family for t in all_tasks))
    for n in names:
        if n not in known:
            near = unknown_name("task", n, sorted(known)).split(";")[0]
            raise ValueError(f"{near}; a task is FAMILY or FAMILY-LEVEL, families: {', '.join(families)}")
    return [t for t in all_tasks if t.name in names or t.family in names]


def _bar(progress, total):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="task", file=sys.stderr)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _manifest(config: dict, flags: Mapping | None) -> dict:
    import numpy

    from diyopt import __version__

    return {"config": config, "started": _now(), "finished": None, "complete": False,
            "versions": {"diyopt": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                         "python": platform.python_version()},
            "git_revision": _git_revision(),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
            "flags": {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                      "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
                      **dict(flags or {})}}


def _earlier(out: Path, config: dict) -> dict[tuple[str, str], dict]:
    """The rows of an earlier run in ``out`` with the same config (a clear error when the config differs)."""
    import json

    from diyopt._util.files import owned_files

    if not (out / "manifest.json").is_file() or "results.csv" not in owned_files(out):
        return {}
    old = json.loads((out / "manifest.json").read_text())
    if old.get("config") != json.loads(_dumps(config)):
        raise ValueError(f"cannot resume in {out}: it holds a bench run with other settings (suite, tasks, "
                         "optimizers, trials, seeds, dtype or search spaces); choose another --out")
    rows = {}
    with open(out / "results.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows[(r["task"], r["optimizer"])] = _parse_row(r)
    return rows


def _parse_row(r: dict) -> dict:
    def num(v):
        if v == "":
            return None
        if v == NOT_REACHED:
            return math.inf
        return float(v)

    return {"task": r["task"], "optimizer": r["optimizer"], "solved": r["solved"] == "true",
            "attempts": num(r["attempts"]), "best_metric": num(r["best_metric"]),
            "steps_to_target": num(r["steps_to_target"]), "seconds_to_target": num(r["seconds_to_target"]),
            "seconds": num(r["seconds"]),
            "criterion": r["criterion"], "target": num(r["target"]), "studies_solved": r["studies_solved"],
            "trials": int(r["trials"]), "engine": r["engine"]}


def _dumps(obj) -> str:
    from diyopt._util.files import dumps

    return dumps(obj)


def _publish(out: Path, rows: list[dict], manifest: dict, complete: bool) -> None:
    from diyopt._util.files import output_folder

    manifest = {**manifest, "complete": complete}
    names = ["results.csv", "manifest.json"] + (["matrix.png"] if complete else [])
    with output_folder(out, names=names, kind="bench") as tmp:
        (tmp / "results.csv").write_text(BenchResult(rows, manifest).to_csv())
        (tmp / "manifest.json").write_text(_dumps(manifest))
        if complete:
            matrix_png(rows, tmp / "matrix.png")


def _short(label: str) -> str:
    """``my_rules.py:rule`` for a spec naming a file by a long path; built-in specs as they are."""
    at = label.find(".py:")
    short = os.path.basename(label[:at + 3]) + label[at + 3:] if at >= 0 else label
    return short if len(short) <= 24 else short[:23] + "…"


def matrix_png(rows: list[dict], path: str | os.PathLike) -> None:
    """Tasks (rows) x optimizers (columns), colour: the fraction of studies that solved the task;
    the cell's text: median attempts (trials to the first success) or "-"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    frac = torch.full((len(tasks), len(opts)), float("nan"))
    text = {}
    for r in rows:
        i, j = tasks.index(r["task"]), opts.index(r["optimizer"])
        k, n = (int(x) for x in r["studies_solved"].split("/"))
        frac[i, j] = k / n
        a = r["attempts"]
        text[i, j] = "-" if a is None or not math.isfinite(a) else f"{a:g}"
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(opts), 1.2 + 0.24 * len(tasks)))
    im = ax.imshow(frac.numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), s in text.items():
        ax.text(j, i, s, ha="center", va="center", fontsize=7)
    solved = {o: sum(r["solved"] for r in rows if r["optimizer"] == o) for o in opts}
    ax.set_xticks(range(len(opts)), [f"{_short(o)}\n{solved[o]}/{len(tasks)}" for o in opts], rotation=30,
                  ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    ax.set_title("solved: fraction of studies (text: median attempts)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench_cli(args: Any) -> int:
    """``diyopt bench``: run, then print one line per optimizer (tasks solved) and where the files are."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    result = bench(args.optimizers, suite=args.suite, trials=args.trials, seeds=args.seeds, out=args.out,
                   tasks=args.tasks, dtype=dtype, resume=args.resume, progress=None,
                   flags={"command": "diyopt bench"})
    n_tasks = len(result.manifest["config"]["tasks"])
    for label in result.manifest["config"]["optimizers"]:
        print(f"{label}: solved {len(result.solved(label))}/{n_tasks}")
    loops = sorted({r["task"] for r in result.rows if "vmap refused" in r["engine"]})  # not the workloads
    if loops:
        print(f"diyopt: note: vmap refused {', '.join(loops)}; their trials ran one by one", file=sys.stderr)
    if result.skipped:
        print(f"resumed: {len(result.skipped)} task x optimizer pairs kept from the earlier run")
    print(f"wrote {Path(args.out) / 'results.csv'}, matrix.png, manifest.json")
    return 0
