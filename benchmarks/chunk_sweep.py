"""Issue 15, target 1: the cache-blocking chunk size of ``to_torch``'s default engine, swept.

On ``to_torch_step.py``'s model (10M float32 params in 80 tensors, fixed gradients), times one optimizer's
torch.optim class with ``foreach=True`` and diyopt's default ``to_torch`` with the group run in chunks of
each ``--sizes`` (MiB of params; 0: the whole group at once, no chunking), all timed round-robin in one
process, and prints each one's median step time and its ratio to the torch class. Pick the chunk size
(``diyopt.engines._kernels.CHUNK_BYTES``; ``RULE_CHUNK_BYTES`` for ``my_adam``, a user's rule from
``examples/my_adam.py``, against ``Adam(foreach=True)``) from the table; ``to_torch_step.py`` checks the target.

    python benchmarks/chunk_sweep.py [--only rmsprop,nadam] [--sizes 0,1,2,4,8] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from common import machine
from to_torch_step import PAIRS, load_my_adam, make_params

import diyopt
from diyopt.engines import _kernels


def chunked(make_opt, size: int | None, knob: str):
    """A step of ``make_opt``'s optimizer run with ``_kernels.<knob> = size``."""

    def step(opt):
        old = getattr(_kernels, knob)
        setattr(_kernels, knob, size)
        try:
            opt.step()
        finally:
            setattr(_kernels, knob, old)

    return make_opt, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="rmsprop,adadelta,adamax,nadam,radam,asgd")
    ap.add_argument("--sizes", default="0,1,2,4,8,16", help="MiB of params per chunk, 0: no chunking")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch's intra-op threads (0: its default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    sizes = [float(s) for s in args.sizes.split(",")]
    print(f"{machine()}; median ms, ratio to torch")
    pairs = [(label, cls, f, kw) for label, cls, f, kw in PAIRS if label in args.only.split(",")]
    if "my_adam" in args.only.split(","):
        pairs.append(("my_adam", torch.optim.Adam, load_my_adam(), {}))
    for label, cls, factory, kw in pairs:
        engines = {f"torch.optim.{cls.__name__}(foreach=True)": (lambda p, c=cls, k=kw: c(p, foreach=True, **k), None)}
        for mb in sizes:
            knob = "RULE_CHUNK_BYTES" if label == "my_adam" else "CHUNK_BYTES"
            engines[f"{label} chunk {mb:g} MiB"] = chunked(
                lambda p, f=factory, k=kw: diyopt.to_torch(f(**k), p), int(mb * 2**20) or None, knob
            )
        runs = []
        for name, (make, step) in engines.items():
            opt = make(make_params())
            for _ in range(3):
                (step or type(opt).step)(opt)
            runs.append((name, opt, step or type(opt).step, []))
        for _ in range(args.steps):
            for _, opt, step, times in runs:
                t = time.perf_counter()
                step(opt)
                times.append(time.perf_counter() - t)
        ref = statistics.median(runs[0][3])
        for name, _, _, times in runs:
            ms = statistics.median(times)
            print(f"{name:40s} {1e3 * ms:8.2f} {ms / ref:6.2f}")


if __name__ == "__main__":
    main()
