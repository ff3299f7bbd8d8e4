"""B4: ``diyopt demo`` end to end, process start to exit, with a warm install (goal <= 5 s).

Runs ``python -m diyopt.cli demo --out TMP`` ``--reps`` times (the first also warms the OS file cache)
and prints the best wall time next to a bare ``python -c "import torch"`` as the floor.
Run: python benchmarks/demo.py [--reps 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from common import machine, row


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"B4 diyopt demo, process start to exit -- {machine()}")
    floor = min(wall([sys.executable, "-c", "import torch"]) for _ in range(args.reps))
    with tempfile.TemporaryDirectory() as out:
        demo = min(wall([sys.executable, "-m", "diyopt.cli", "demo", "--out", out]) for _ in range(args.reps + 1))
    print(row("python -c 'import torch' (the floor)", floor, "s"))
    print(row("diyopt demo --out TMP", demo, "s", f"{demo / floor:.1f}x the import floor (goal <= 5 s)"))


if __name__ == "__main__":
    main()
