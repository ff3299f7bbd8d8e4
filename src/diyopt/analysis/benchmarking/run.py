"""``diyopt.bench``: every optimizer, tuned by the rules of :mod:`~diyopt.analysis.benchmarking.tuning`, on every task.

The output folder (written through :func:`diyopt._util.files.output_folder`, so each publication is atomic):

- ``results.csv`` -- one row per task x optimizer (:data:`COLUMNS`): ``task, optimizer, solved``, then
  ``attempts, best_metric, steps_to_target, seconds_to_target`` (medians over studies), each followed by its
  bootstrap 95% interval ``_lo, _hi``, then ``seconds``, the criterion, target, studies solved, engine;
- ``matrix.png`` -- tasks x optimizers, the fraction of studies that solved the task (LightBench's matrix);
- ``profile_*.png`` -- performance profiles (:mod:`~diyopt.analysis.benchmarking.charts`);
- ``report.html`` -- the page ``diyopt report OUT`` writes (:func:`diyopt.analysis.report.write_report`);
- ``manifest.json`` -- what ran: versions, seeds, trials, search spaces, git revision, machine, flags.

After each round of task x optimizer pairs (one pair per rank; one rank outside torchrun) the folder is
republished with the rows so far (``manifest.json`` says ``"complete": false``), so ``resume=True``
(``--resume``) after a kill skips the pairs already done. Under ``torchrun`` the pairs are dealt round-robin
across the ranks; the last pairs, fewer than the ranks, have their *trials* split across the ranks instead
(:func:`_rounds`), and rank 0 gathers the outcomes (:mod:`diyopt.engines.distributed`) and joins the slices
in Sobol order. Every trial is a deterministic function of its settings, so the rows equal one process's
(wall times aside).
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diyopt.core.contract import Optimizer

from .charts import PROFILES, matrix_png, profiles_png
from .studies import CI_OF, is_torch_class, merge_parts, run_part, run_task, run_workload, space  # noqa: F401
from .tasks import Task
from .tasks import suite as get_suite
from .workloads import Workload, require_sklearn
from .workloads import workloads as get_workloads

SUITES = ("diagnostic", "workloads", "all")

COLUMNS = (
    ["task", "optimizer", "solved"]
    + [c for k in CI_OF for c in (k, f"{k}_lo", f"{k}_hi")]
    + ["seconds", "criterion", "target", "studies_solved", "trials", "engine"]
)
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


def _resolve(spec: Any) -> tuple[str, Optimizer | type]:
    """A spec string (``adam``, ``adam:eps=1e-6``, ``my_rules.py:rule``, ``torch.optim.Adam``), a
    ``torch.optim.Optimizer`` class, or ``(label, Optimizer or class)``."""
    from diyopt.optim import get

    if isinstance(spec, tuple) and len(spec) == 2 and (isinstance(spec[1], Optimizer) or is_torch_class(spec[1])):
        return str(spec[0]), spec[1]
    if is_torch_class(spec):
        return f"{spec.__module__.split('.')[0]}.optim.{spec.__name__}" if spec.__module__.startswith(
            "torch.optim"
        ) else f"{spec.__module__}.{spec.__qualname__}", spec
    if not isinstance(spec, str):
        raise TypeError(
            f"an optimizer for bench is a spec string, a torch.optim class or (label, Optimizer), got {spec!r}"
        )
    if spec.startswith("torch.optim."):  # the packaged optimizer, as is: torch.optim.Adam
        cls = getattr(torch.optim, spec.removeprefix("torch.optim."), None)
        if not is_torch_class(cls):
            from diyopt.errors import unknown_name

            known = sorted(n for n in dir(torch.optim) if is_torch_class(getattr(torch.optim, n)))
            raise ValueError(unknown_name("torch.optim class", spec.removeprefix("torch.optim."), known))
        return spec, cls
    return spec, get(spec)


def suite_tasks(name: str) -> list:
    """The tasks of ``--suite``: ``diagnostic``, ``workloads`` or ``all`` (diagnostic, then workloads)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(map(repr, SUITES))}")
    return (get_suite() if name != "workloads" else []) + (get_workloads() if name != "diagnostic" else [])


def bench(
    optimizers: Sequence[Any],
    *,
    suite: str = "diagnostic",
    trials: int = 16,
    seeds: int | Sequence[int] = 3,
    out: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    spaces: Mapping[str, Mapping] | None = None,
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    progress: bool | None = None,
    flags: Mapping[str, Any] | None = None,
) -> BenchResult:
    """Tune each optimizer on each task of ``suite`` and tell which it solves.

    Args:
      optimizers: specs (``"adam"``, ``"sgd:nesterov=true"``, ``"my_rules.py:rule"``, as
        :func:`diyopt.optim.get`), ``torch.optim`` classes (``torch.optim.Adam`` or ``"torch.optim.Adam"``:
        one ``diyopt.fit`` per trial, tuned in the space of the diyopt optimizer of that name) or
        ``(label, Optimizer or class)`` pairs. The search space
        (:data:`~diyopt.analysis.benchmarking.tuning.SPACES`, by name; a user's rule: its ``lr``) is tuned,
        less the settings the spec fixes (``adam:lr=1e-2`` tunes only ``beta1``).
      trials: Sobol points per study; seeds: studies (a count ``S`` means seeds ``0..S-1``).
      out: the output folder (``results.csv``, ``matrix.png``, ``manifest.json``); None: write nothing.
      tasks: task names or family names to run (default: all).
      spaces: ``{label: {hyperparameter: (low, high, "log"|"linear")}}`` overriding the built-in spaces.
      resume: keep the rows of an earlier, interrupted run in ``out`` with the same settings.
      progress: a bar over task x optimizer pairs on stderr (None: when stderr is a terminal).

    A task is solved when more than half of the studies have a passing trial; see
    :mod:`~diyopt.analysis.benchmarking.tuning`. Under ``torchrun`` every rank calls this; rank 0 returns the
    rows and writes ``out``, the other ranks return no rows.
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
    for label, opt in resolved:  # before any work: sam's own message would name fit/sweep, not bench
        if isinstance(opt, Optimizer) and "grad_fn" in opt.extra_args:
            raise ValueError(
                f"bench cannot run {label}: its update asks for grad_fn (the gradient at other params, as sam's "
                "ascent point), and bench feeds each update the task's own noisy/delayed gradient only; "
                "bench its base optimizer, or run it with fit or sweep"
            )
    labels = [l for l, _ in resolved]
    if len(set(labels)) != len(labels):
        raise ValueError(f"optimizer given twice: {sorted(l for l in labels if labels.count(l) > 1)}")
    all_tasks = suite_tasks(suite)
    chosen = _select(all_tasks, tasks)
    if any(isinstance(t, Workload) for t in chosen):
        require_sklearn()  # before any work: a one-line error naming the extra
    spaces = dict(spaces or {})
    for label, opt in resolved:  # every space checked before any work
        space(label, opt, spaces.get(label))
    config = {
        "suite": suite,
        "tasks": [t.name for t in chosen],
        "optimizers": labels,
        "trials": trials,
        "seeds": seeds,
        "dtype": str(dtype).removeprefix("torch."),
        "spaces": {l: space(l, o, spaces.get(l)) for l, o in resolved},
    }
    from diyopt.engines import distributed as dd

    rank, world = dd.init()  # (0, 1) outside torchrun
    manifest = _manifest(config, flags)
    manifest["machine"]["ranks"] = world
    done: dict[tuple[str, str], dict] = {}
    if resume and out is not None:
        done = _earlier(Path(out), config)  # every rank reads it before rank 0 writes anything
    pairs = [(t, l, o) for t in chosen for l, o in resolved]
    found = {i: done[(t.name, l)] for i, (t, l, _) in enumerate(pairs) if (t.name, l) in done}
    skipped = [(t.name, l) for t, l, _ in pairs if (t.name, l) in done]
    todo = [i for i in range(len(pairs)) if i not in found]
    main = rank == 0
    bar = _bar(progress, len(pairs)) if main else None
    if bar is not None:
        bar.update(len(found))
    for this_round in _rounds(todo, world):
        mine = []
        for i, part in (unit for unit, r in this_round if r == rank):
            task, label, opt = pairs[i]
            kwargs = dict(trials=trials, seeds=seeds, space_box=spaces.get(label), dtype=dtype, part=part)
            mine.append((i, part, run_part(task, label, opt, **kwargs)))
        got = dd.gather(mine)  # None on ranks > 0
        if got is not None:
            slices: dict[int, list] = {}
            for i, _part, res in sorted(got, key=lambda x: (x[0], x[1][0])):
                slices.setdefault(i, []).append(res)
            found.update({i: merge_parts(pairs[i][0], pairs[i][1], parts) for i, parts in slices.items()})
            if out is not None:
                _publish(Path(out), [found[i] for i in sorted(found)], manifest, complete=False)
        if bar is not None:
            bar.update(len({i for (i, _), _ in this_round}))
    if bar is not None:
        bar.close()
    manifest["finished"] = _now()
    if not main:  # the other ranks' rows live on rank 0, which writes the files
        return BenchResult([], manifest, None, skipped)
    rows = [found[i] for i in range(len(pairs))]
    result = BenchResult(rows, manifest, Path(out) if out is not None else None, skipped)
    if out is not None:
        _publish(Path(out), rows, manifest, complete=True)
    return result


def _rounds(todo: list[int], world: int) -> list[list[tuple[tuple[int, tuple[int, int]], int]]]:
    """The work of each round: ``((pair, (slice, slices)), rank)`` units, every rank one unit per round.

    While at least ``world`` pairs are left, a round deals one whole pair to each rank (round-robin, as
    :func:`diyopt.engines.distributed.split_work`). The last ``r < world`` pairs share one round: pair ``j``
    gets the ranks ``j, j + r, j + 2r, ...``, each running its slice of the pair's trials
    (:func:`~diyopt.analysis.benchmarking.studies.trial_slice`), so no rank idles while a task is left (one
    task on ``N`` ranks: ``N`` slices of its Sobol points, each one vectorized computation).
    """
    rounds = []
    full = len(todo) - len(todo) % world if world > 1 else len(todo)
    for lo in range(0, full, world):
        rounds.append([((i, (0, 1)), r) for r, i in enumerate(todo[lo : lo + world])])
    tail = todo[full:]
    if tail:
        n = len(tail)
        share = [len(range(j, world, n)) for j in range(n)]  # ranks per tail pair
        rounds.append([((tail[r % n], (r // n, share[r % n])), r) for r in range(world)])
    return rounds


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
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _manifest(config: dict, flags: Mapping | None) -> dict:
    import numpy

    from diyopt import __version__

    return {
        "config": config,
        "started": _now(),
        "finished": None,
        "complete": False,
        "versions": {
            "diyopt": __version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "git_revision": _git_revision(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "flags": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
            **dict(flags or {}),
        },
    }


def _earlier(out: Path, config: dict) -> dict[tuple[str, str], dict]:
    """The rows of an earlier run in ``out`` with the same config (a clear error when the config differs)."""
    import json

    from diyopt._util.files import owned_files

    if not (out / "manifest.json").is_file() or "results.csv" not in owned_files(out):
        return {}
    old = json.loads((out / "manifest.json").read_text())
    if old.get("config") != json.loads(_dumps(config)):
        raise ValueError(
            f"cannot resume in {out}: it holds a bench run with other settings (suite, tasks, "
            "optimizers, trials, seeds, dtype or search spaces); choose another --out"
        )
    rows = {}
    with open(out / "results.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows[(r["task"], r["optimizer"])] = _parse_row(r)
    return rows


def _parse_row(r: dict) -> dict:
    def num(v):
        if v is None or v == "":  # None: a column an earlier version did not write
            return None
        if v == NOT_REACHED:
            return math.inf
        return float(v)

    row = {"task": r["task"], "optimizer": r["optimizer"], "solved": r["solved"] == "true"}
    for k in COLUMNS[3:]:
        if k not in ("criterion", "studies_solved", "trials", "engine"):
            row[k] = num(r.get(k))
    row.update(
        criterion=r["criterion"], studies_solved=r["studies_solved"], trials=int(r["trials"]), engine=r["engine"]
    )
    return row


def _dumps(obj) -> str:
    from diyopt._util.files import dumps

    return dumps(obj)


def _publish(out: Path, rows: list[dict], manifest: dict, complete: bool) -> None:
    """Republish ``out``: results.csv and manifest.json after every round; when complete also matrix.png,
    the performance profiles and report.html (the page ``diyopt report OUT`` writes)."""
    from diyopt._util.files import output_folder
    from diyopt.analysis.report import write_report

    manifest = {**manifest, "complete": complete}
    names = ["results.csv", "manifest.json"]
    if complete:
        names += ["matrix.png", *PROFILES.values(), "report.html"]
    with output_folder(out, names=names, kind="bench") as tmp:
        (tmp / "results.csv").write_text(BenchResult(rows, manifest).to_csv())
        (tmp / "manifest.json").write_text(_dumps(manifest))
        if complete:
            matrix_png(rows, tmp / "matrix.png")
            profiles_png(rows, tmp)
            write_report(tmp)


def run_bench_cli(args: Any) -> int:
    """``diyopt bench``: run, then print one line per optimizer (tasks solved) and where the files are."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    result = bench(
        args.optimizers,
        suite=args.suite,
        trials=args.trials,
        seeds=args.seeds,
        out=args.out,
        tasks=args.tasks,
        dtype=dtype,
        resume=args.resume,
        progress=None,
        flags={"command": "diyopt bench"},
    )
    if result.out is None:  # a rank > 0 under torchrun: rank 0 prints and writes
        return 0
    n_tasks = len(result.manifest["config"]["tasks"])
    for label in result.manifest["config"]["optimizers"]:
        print(f"{label}: solved {len(result.solved(label))}/{n_tasks}")
    loops = sorted({r["task"] for r in result.rows if "vmap refused" in r["engine"]})  # not the workloads
    if loops:
        print(f"diyopt: note: vmap refused {', '.join(loops)}; their trials ran one by one", file=sys.stderr)
    if result.skipped:
        print(f"resumed: {len(result.skipped)} task x optimizer pairs kept from the earlier run")
    print(f"wrote {Path(args.out) / 'results.csv'}, matrix.png, performance profiles, report.html, manifest.json")
    return 0
