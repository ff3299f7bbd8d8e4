"""Issue 15, target 1: every built-in through the default ``to_torch`` vs its torch.optim class (foreach=True), and a user's rule: time, memory.

The model of the speed target: 10M float32 parameters in 80 tensors ([1M]*8 + [250k]*8 + [1000]*64), fixed
random gradients (the backward pass is the same for both and is left out). Prints, for each built-in with a
torch.optim counterpart (Adam, AdamW, SGD with momentum 0.9 and without, Adagrad, RMSprop, Adadelta, Adamax,
NAdam, RAdam, Rprop, ASGD) the torch class with ``foreach=True`` and diyopt's default ``to_torch`` (the kernel
engine: torch's fused or multi-tensor in-place step, see :mod:`diyopt.engines._kernels`), then a user's own
``elementwise`` Adam (``examples/my_adam.py``) against ``Adam(foreach=True)``, and diyopt's Adam compiled
(``to_torch(..., compiled=True)``), with issue 15's target 1 (built-ins <= 1.0x time, a user's rule <= 1.5x;
<= 1.1x peak memory of the torch class) as ``TARGET`` rows: median step time over
``--steps`` timed steps after warm-up (compilation excluded, reported apart; the engines' steps are timed
round-robin so a shared machine's load hits all alike), the ratio to torch, and peak
memory.

Peak memory is peak *tensor* memory during a step: the bytes held by params, grads and optimizer state when
the step starts, plus the high-water mark of the CPU allocations the step makes (torch's profiler with
``profile_memory=True`` records every allocation and free of torch's CPU allocator; their running sum's
maximum is the step's transient peak). tracemalloc does not see torch's allocations, and process RSS mixes in
the compiler's own memory, allocator caching and page-touch effects, so it is not used.

    python benchmarks/to_torch_step.py [--steps 20] [--no-compiled] [--only adam,sgd,my_adam,compiled]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from common import machine, target_row

import diyopt

SIZES = [1_000_000] * 8 + [250_000] * 8 + [1000] * 64


def make_params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g).requires_grad_() for n in SIZES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def held_bytes(params, opt) -> int:
    """Bytes of params, grads and every tensor in the optimizer's state (each storage once)."""
    seen, total = set(), 0
    tensors = list(params) + [p.grad for p in params]
    for s in opt.state.values():
        tensors += [v for v in s.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def transient_peak(opt) -> int:
    """The high-water mark of bytes allocated (and not yet freed) during one ``opt.step()``, above what the
    step started with.

    Two steps run under the profiler and the second is measured: the profiler drops the free of a block
    allocated before it started, so an engine that replaces its state tensors (frees the old ones) would
    look as if it kept both; in the second step the first step's tensors are known to it. The boundary is
    a marker op (``special_zeta``, which no optimizer calls). The steps run without torch.optim's profiling
    wrapper (``profile_hook_step``: hooks and a ``record_function`` region, no tensors): the profiler books
    a free that happens outside any op (a Python reference dropped) on the enclosing region, at its end.
    """
    step = getattr(type(opt).step, "__wrapped__", None) or type(opt).step
    two, one = torch.tensor(2.0), torch.tensor(1.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.no_grad():
            step(opt)
            torch.special.zeta(two, one)  # the marker: the measured step starts here
            step(opt)
    # The profiler books an allocation on the innermost op running (its *self* memory) and a free on the op
    # it happened in, or on a "[memory]" event: count a positive self memory at the op's start, a negative
    # one at its end.
    events = list(prof.events())
    mark = min(e.time_range.start for e in events if "zeta" in e.name)
    deltas = []
    for e in events:
        if e.self_cpu_memory_usage > 0:
            deltas.append((e.time_range.start, e.self_cpu_memory_usage))
        elif e.self_cpu_memory_usage < 0:
            deltas.append((e.time_range.end, e.self_cpu_memory_usage))
    live, base, peak = 0, None, 0
    for when, d in sorted(deltas, key=lambda x: x[0]):
        if base is None and when >= mark:
            base = peak = live
        live += d
        if base is not None:
            peak = max(peak, live)
    return max(peak - (base if base is not None else live), 0)


def measure(engines: dict, steps: int) -> list[dict]:
    """Set every engine up (first step: state, compilation), then time their steps round-robin, so load
    from other processes on a shared machine hits all of them alike."""
    runs = []
    for name, make_opt in engines.items():
        params = make_params()
        start = time.perf_counter()
        opt = make_opt(params)
        opt.step()
        runs.append({"name": name, "opt": opt, "params": params, "first_s": time.perf_counter() - start, "times": []})
        for _ in range(2):
            opt.step()
    for _ in range(steps):
        for run in runs:
            t = time.perf_counter()
            run["opt"].step()
            run["times"].append(time.perf_counter() - t)
    for run in runs:
        run["ms"] = 1e3 * statistics.median(run["times"])
        run["peak_mb"] = (held_bytes(run["params"], run["opt"]) + transient_peak(run["opt"])) / 2**20
    return runs


# (label, torch.optim class and kwargs, diyopt factory and kwargs): issue 15's target 1, first bullet
PAIRS = [
    ("adam", torch.optim.Adam, diyopt.optim.adam, {}),
    ("adamw", torch.optim.AdamW, diyopt.optim.adamw, {}),
    ("sgd momentum", torch.optim.SGD, diyopt.optim.sgd, {"lr": 1e-2, "momentum": 0.9}),
    ("sgd", torch.optim.SGD, diyopt.optim.sgd, {"lr": 1e-2}),
    ("adagrad", torch.optim.Adagrad, diyopt.optim.adagrad, {}),
    ("rmsprop", torch.optim.RMSprop, diyopt.optim.rmsprop, {}),
    ("adadelta", torch.optim.Adadelta, diyopt.optim.adadelta, {}),
    ("adamax", torch.optim.Adamax, diyopt.optim.adamax, {}),
    ("nadam", torch.optim.NAdam, diyopt.optim.nadam, {}),
    ("radam", torch.optim.RAdam, diyopt.optim.radam, {}),
    ("rprop", torch.optim.Rprop, diyopt.optim.rprop, {}),
    ("asgd", torch.optim.ASGD, diyopt.optim.asgd, {}),
]
TIME_TARGET, PEAK_TARGET = 1.0, 1.1  # x the torch class with foreach=True
USER_TIME_TARGET = 1.5  # a user's own elementwise rule, x Adam(foreach=True)


def load_my_adam():
    """``my_adam`` from examples/my_adam.py: a user's Adam written as an ``elementwise`` rule."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "my_adam.py"
    spec = importlib.util.spec_from_file_location("my_adam", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["my_adam"] = mod
    spec.loader.exec_module(mod)
    return mod.my_adam


def report(rows: dict, ref_name: str, label: str, time_goal: float) -> None:
    ref = rows[ref_name]
    for r in rows.values():
        t, m = r["ms"] / ref["ms"], r["peak_mb"] / ref["peak_mb"]
        print(f"{r['name']:46s} {r['ms']:9.1f} {t:6.2f} {r['peak_mb']:8.0f} {m:10.2f} {r['first_s']:10.1f}")
        if r is not ref and "(default)" in r["name"]:
            target_row(1, f"to_torch({label}) step time vs {ref_name}", t, time_goal)
            target_row(1, f"to_torch({label}) peak memory vs {ref_name}", m, PEAK_TARGET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled engine")
    parser.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    only = {s for s in args.only.split(",") if s}
    print(
        f"torch {torch.__version__}, {machine()}, "
        f"{sum(SIZES) / 1e6:.0f}M float32 params in {len(SIZES)} tensors, {args.steps} timed steps"
    )
    print(f"{'optimizer':46s} {'step ms':>9s} {'ratio':>6s} {'peak MB':>8s} {'peak ratio':>10s} {'1st step s':>10s}")
    # one pair at a time (each engine holds ~200 MB), the two timed round-robin
    for label, cls, factory, kw in PAIRS:
        if only and label not in only:
            continue
        ref = f"torch.optim.{cls.__name__}(foreach=True)"
        engines = {
            ref: lambda p, cls=cls, kw=kw: cls(p, foreach=True, **kw),
            f"diyopt {label}, to_torch (default)": lambda p, f=factory, kw=kw: diyopt.to_torch(f(**kw), p),
        }
        report({r["name"]: r for r in measure(engines, args.steps)}, ref, label, TIME_TARGET)
    if not only or "my_adam" in only:
        my_adam = load_my_adam()
        ref = "torch.optim.Adam(foreach=True)"
        engines = {
            ref: lambda p: torch.optim.Adam(p, foreach=True),
            "user my_adam (examples/), to_torch (default)": lambda p: diyopt.to_torch(my_adam(), p),
        }
        report({r["name"]: r for r in measure(engines, args.steps)}, ref, "my_adam()", USER_TIME_TARGET)
    if not args.no_compiled and (not only or "compiled" in only):
        ref = "torch.optim.Adam(foreach=True)"
        engines = {
            ref: lambda p: torch.optim.Adam(p, foreach=True),
            "diyopt adam, to_torch(compiled=True)": lambda p: diyopt.to_torch(diyopt.optim.adam(), p, compiled=True),
        }
        rows = {r["name"]: r for r in measure(engines, args.steps)}
        report(rows, ref, "adam(), compiled=True", TIME_TARGET)
        target_row(
            2,
            "to_torch(adam(), compiled=True) first step (Inductor cache as found)",
            rows["diyopt adam, to_torch(compiled=True)"]["first_s"],
            30.0,
            " s",
        )


if __name__ == "__main__":
    main()
