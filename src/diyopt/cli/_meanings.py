"""The one meaning of a seed and of ``--tol`` in compare and sweep (README: "Seeds and --tol")."""

from __future__ import annotations

# The one meaning of a seed and of --tol in compare and sweep (README: "Seeds and --tol").
SEEDS_MEANING = (
    "Seed 0 is the problem's standard start; seed s > 0 starts at x0 + 0.1 (1 + |x0|) z, "
    "z ~ N(0, 1) drawn with torch.Generator().manual_seed(s) (a NIST problem's seed 1 is its "
    "Start 2)."
)


TOL_MEANING = (
    "A run reaches --tol at the first step i with f(x_i) - f* <= tol (f(x_0) - f*): the gap to "
    "the optimum f* cut by the factor tol, f* the problem's known optimum, or where none is "
    "known the lowest loss any run reached. A run that never does is 'not reached'."
)
