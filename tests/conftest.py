import os

# Figures are written headless in tests.
os.environ.setdefault("MPLBACKEND", "Agg")

# The tests use tiny tensors: one intra-op thread. With two, every small float64 matmul waits on an OpenMP
# barrier, which on a busy CI machine costs ~40 ms per op instead of ~3 us (measured: 20x5 @ 5x3).
import torch  # noqa: E402

torch.set_num_threads(1)
