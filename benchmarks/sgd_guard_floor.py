"""Issue 15, target 1, SGD without momentum: what the divergence guard's finite check costs, piece by piece.

On 10M float32 params in 80 tensors (to_torch_step.py's model), times the step alone and the step with a
gradient check in front, each as median over ``--repeats`` rounds (all variants timed round-robin, so a
shared machine's load hits all alike), relative to torch.optim.SGD(foreach=True)'s step
(``_foreach_add_(params, grads, alpha=-lr)``):

- ``fused``: ``torch._fused_sgd_``, to_torch's kernel; ``foreach``: torch's own multi-tensor step
- ``sum + fused``: to_torch's default (the guard's sums over every gradient, then the step)
- ``dot + fused``, ``norm + fused``: other one-pass reductions for the same check
- ``sum + fused reversed``: the same check, then the step over the tensors last to first, so the gradients
  the check read last are still in cache when the step reads them (exact: the check is done before any write)
- ``interleaved``: each gradient's sum right before that tensor's step (the gradient still in cache). Not
  the guard's contract (a later non-finite gradient finds earlier tensors stepped); measured as a floor.

Once with torch's default thread count, once single-threaded (a reduction's cost under OpenMP on a loaded
two-core machine differs from its memory traffic).

    python benchmarks/sgd_guard_floor.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine

SIZES = [1_000_000] * 8 + [250_000] * 8 + [1000] * 64
KW = dict(weight_decay=0.0, momentum=0.0, lr=1e-6, dampening=0.0, nesterov=False, maximize=False)


def variants(params: list, grads: list) -> dict:
    big = [g for g in grads if g.numel() >= 1 << 16]
    tiny = [g for g in grads if g.numel() < 1 << 16]

    def fused(p=params, g=grads):
        torch._fused_sgd_(p, g, [], **KW, is_first_step=False, grad_scale=None, found_inf=None)

    def checked(reduce):
        def run():
            float(torch.stack([reduce(g) for g in big] + list(torch._foreach_norm(tiny, 2))).sum())
            fused()

        return run

    def reversed_step():  # the check in order, then the step last tensor first: its gradients are in cache
        float(torch.stack([g.sum() for g in big] + list(torch._foreach_norm(tiny, 2))).sum())
        fused(params[::-1], grads[::-1])

    def interleaved():
        for p, g in zip(params, grads):
            float(g.sum())
            fused([p], [g])

    return {
        "foreach (torch.optim.SGD)": lambda: torch._foreach_add_(params, grads, alpha=-1e-6),
        "fused": fused,
        "sum + fused": checked(torch.sum),
        "dot + fused": checked(lambda g: torch.dot(g, g)),
        "norm + fused": lambda: (float(torch.stack(torch._foreach_norm(grads, 2)).sum()), fused()),
        "sum + fused reversed": reversed_step,
        "interleaved (not exact)": interleaved,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in SIZES]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in SIZES]
    print(f"SGD without momentum, 10M float32 params in 80 tensors -- {machine()}")
    default_threads = torch.get_num_threads()
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        fns = variants(params, grads)
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        base = statistics.median(times["foreach (torch.optim.SGD)"])
        print(f"{threads} thread(s): {'variant':26s} {'median ms':>10s} {'ratio':>6s}")
        for k, v in times.items():
            print(f"{'':13s}{k:26s} {statistics.median(v) * 1e3:10.2f} {statistics.median(v) / base:6.2f}")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
