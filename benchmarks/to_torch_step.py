"""diyopt's ``adam``, ``adamw``, ``sgd`` through ``to_torch`` vs the torch.optim class (foreach=True): time, memory.

The model of the speed target: 10M float32 parameters in 80 tensors ([1M]*8 + [250k]*8 + [1000]*64), fixed
random gradients (the backward pass is the same for both and is left out). Prints, for each of Adam, AdamW
, SGD with momentum 0.9 and Adagrad the torch class with ``foreach=True`` and diyopt's default ``to_torch`` (the kernel
engine: torch's fused in-place step, see :mod:`diyopt.torch_optim`), and for Adam diyopt compiled
(``to_torch(..., compiled=True)``), with issue 15's target for the default path (<= 1.0x time, <= 1.1x peak
memory of the torch class) and whether it is met: median step time over
``--steps`` timed steps after warm-up (compilation excluded, reported apart; the engines' steps are timed
round-robin so a shared machine's load hits all alike), the ratio to torch, and peak
memory.

Peak memory is peak *tensor* memory during a step: the bytes held by params, grads and optimizer state when
the step starts, plus the high-water mark of the CPU allocations the step makes (torch's profiler with
``profile_memory=True`` records every allocation and free of torch's CPU allocator; their running sum's
maximum is the step's transient peak). tracemalloc does not see torch's allocations, and process RSS mixes in
the compiler's own memory, allocator caching and page-touch effects, so it is not used.

    python benchmarks/to_torch_step.py [--steps 20] [--no-compiled]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

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


def transient_peak(step) -> int:
    """The high-water mark of bytes allocated (and not yet freed) during one ``step()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # The profiler books an allocation on the innermost op running (its *self* memory) and a free on the op
    # or record_function region it happened in -- often an enclosing one, at its end -- or on a "[memory]"
    # event. So: count a positive self memory at the op's start, a negative one at its end.
    deltas = []
    for e in prof.events():
        if e.self_cpu_memory_usage > 0:
            deltas.append((e.time_range.start, e.self_cpu_memory_usage))
        elif e.self_cpu_memory_usage < 0:
            deltas.append((e.time_range.end, e.self_cpu_memory_usage))
    live = peak = 0
    for _, d in sorted(deltas, key=lambda x: x[0]):
        live += d
        peak = max(peak, live)
    return peak


def measure(engines: dict, steps: int) -> list[dict]:
    """Set every engine up (first step: state, compilation), then time their steps round-robin, so load
    from other processes on a shared machine hits all of them alike."""
    runs = []
    for name, make_opt in engines.items():
        params = make_params()
        start = time.perf_counter()
        opt = make_opt(params)
        opt.step()
        runs.append({"name": name, "opt": opt, "params": params, "first_s": time.perf_counter() - start,
                     "times": []})
        for _ in range(2):
            opt.step()
    for _ in range(steps):
        for run in runs:
            t = time.perf_counter()
            run["opt"].step()
            run["times"].append(time.perf_counter() - t)
    for run in runs:
        run["ms"] = 1e3 * statistics.median(run["times"])
        run["peak_mb"] = (held_bytes(run["params"], run["opt"]) + transient_peak(run["opt"].step)) / 2**20
    return runs


# (label, torch.optim class and kwargs, diyopt factory and kwargs): issue 15's target 1, first bullet
PAIRS = [
    ("adam", torch.optim.Adam, diyopt.optim.adam, {}),
    ("adamw", torch.optim.AdamW, diyopt.optim.adamw, {}),
    ("sgd momentum", torch.optim.SGD, diyopt.optim.sgd, {"lr": 1e-2, "momentum": 0.9}),
    ("adagrad", torch.optim.Adagrad, diyopt.optim.adagrad, {}),
]
TIME_TARGET, PEAK_TARGET = 1.0, 1.1  # x the torch class with foreach=True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled engine")
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{sum(SIZES) / 1e6:.0f}M float32 params in {len(SIZES)} tensors, {args.steps} timed steps")
    engines, refs = {}, {}
    for label, cls, factory, kw in PAIRS:
        ref = f"torch.optim.{cls.__name__}(foreach=True)"
        engines[ref] = lambda p, cls=cls, kw=kw: cls(p, foreach=True, **kw)
        engines[f"diyopt {label}, to_torch (default)"] = lambda p, f=factory, kw=kw: diyopt.to_torch(f(**kw), p)
        refs[ref] = ref
        refs[f"diyopt {label}, to_torch (default)"] = ref
    if not args.no_compiled:
        name = "diyopt adam, to_torch(compiled=True)"
        engines[name] = lambda p: diyopt.to_torch(diyopt.optim.adam(), p, compiled=True)
        refs[name] = "torch.optim.Adam(foreach=True)"
    rows = {r["name"]: r for r in measure(engines, args.steps)}
    print(f"{'optimizer':40s} {'step ms':>9s} {'ratio':>6s} {'peak MB':>8s} {'peak ratio':>10s} {'1st step s':>10s}"
          f"  target (time, peak)")
    for r in rows.values():
        ref = rows[refs[r["name"]]]
        t, m = r["ms"] / ref["ms"], r["peak_mb"] / ref["peak_mb"]
        verdict = ""
        if r is not ref and "(default)" in r["name"]:
            met = t <= TIME_TARGET and m <= PEAK_TARGET
            verdict = f"  <= {TIME_TARGET}x, <= {PEAK_TARGET}x: {'met' if met else 'missed'}"
        print(f"{r['name']:40s} {r['ms']:9.1f} {t:6.2f} {r['peak_mb']:8.0f} {m:10.2f} {r['first_s']:10.1f}{verdict}")


if __name__ == "__main__":
    main()
