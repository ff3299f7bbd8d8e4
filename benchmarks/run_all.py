"""Run every benchmark script in this folder (``make bench``) and print issue 15's targets as one table.

Each script prints its own report and, for each target it measures, a ``TARGET`` line
(``common.target_row``): target number, what, measured value, goal, met / missed. This runner streams
every script's output, then prints all ``TARGET`` lines together, plus a "not measured" row for each of
issue 15's seven targets no script reported (e.g. JAX not installed). Exit status 1 when a script failed.

    python benchmarks/run_all.py [--only to_torch_step.py,seed_fit.py] [--skip bench_diagnostic.py]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_SCRIPTS = {"common.py", "run_all.py"}
TARGETS = {
    1: "default to_torch vs the torch.optim class, 10M params (to_torch_step.py)",
    2: "compiled to_torch / compiled_update vs Adam(fused=True) (big_step.py)",
    3: "compiled seed fit: cold start, second process, vs JAX (compiled_fit.py)",
    4: "eager fit on the seed vs the seed's loops (seed_fit.py)",
    5: "sweep, us per fit-step (sweep.py)",
    6: "diyopt demo vs the seed's script, process start to exit (demo.py)",
    7: "GPT-style transformer training step (transformer_step.py)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated script names to leave out")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    scripts = [
        p
        for p in sorted(HERE.glob("*.py"))
        if p.name not in NOT_SCRIPTS and p.name not in skip and (not only or p.name in only)
    ]
    rows, failed = [], []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=HERE)
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("TARGET "):
                rows.append(line.rstrip("\n"))
        if proc.wait() != 0:
            failed.append(script.name)
        print(f"== {script.name}: {time.perf_counter() - start:.0f} s, exit {proc.returncode}", flush=True)
    print("\n== issue 15 targets (value | goal | verdict)")
    seen = set()
    for line in sorted(rows, key=lambda r: int(r.split()[1])):
        seen.add(int(line.split()[1]))
        print(line)
    for n, what in TARGETS.items():
        if n not in seen:
            print(f"TARGET {n} | {what} | n/a | | not measured")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
