"""Inductor's settings while diyopt's engines compile: what the compile costs, measured (issue 15).

Where the compile of the seed fit went (``fit(..., engine="compiled")``, 4,000 steps, float64; load 4-6
on 2 shared cores; ``torch._dynamo.utils.compile_times()`` and a timer on each ``g++`` call):

- checking the CPU's vector ISAs: with an empty cache directory Inductor builds a small probe per ISA
  with ``g++ -O3`` (0.7-3.4 s each, six of them) and, in *every* process, ``dlopen``s each in a child
  Python. A cold process took 71.8 and 83.8 s with the checks, 33.0 and 41.9 s without (same minutes,
  load 4-6); at load ~2.5, 26.8 s before these settings and 19.9 s with them;
- Dynamo's trace, done twice: the first attempt is thrown away when the tensorify pass restarts it for
  the float64 0-dim hyperparameters (4-9 s);
- Inductor's lowering and code generation of the loop (6-20 s) and ``g++`` of its C++ wrapper (one
  1,750-line file, 5-9 s); both were redone in every process, because the caches refused the loop.
"""

from __future__ import annotations

import contextlib

import torch
from torch._higher_order_ops.while_loop import while_loop_op

#: The name ``HigherOrderOperator.cacheable()`` looks up: ``torch.ops.higher_order.while_loop``.
_WHILE_LOOP = f"{while_loop_op.__module__}.{while_loop_op.__name__}"


def inductor_settings() -> contextlib.AbstractContextManager:
    """Inductor's config while an engine compiles: loop graphs cached, the CPU's ISA taken from cpuinfo.

    - ``unsafe_marked_cacheable_functions`` gets ``while_loop``: the FX graph cache and the AOTAutograd
      cache refuse a graph holding a higher-order op not marked cacheable, and torch 2.13 marks
      ``while_loop`` only this way. Without it the compiled fit's chunk loop was traced, lowered and
      code-generated again in every process (10.7 s of a 13.8 s second process; only the C++ compile was
      cached). The mark is safe: ``while_loop`` is pure, and the cache key already holds the loop's
      condition and body graphs (submodules of the graph it hashes), with torch's version as the mark.
    - ``cpp.vec_isa_ok=True``: the vector ISAs the CPU reports (``/proc/cpuinfo``) are used without
      building and loading a probe library for each (see the module doc for what the probes cost). The
      probes guard against a compiler too old for the CPU's ISA; any g++ that builds torch's C++ headers
      (which Inductor needs anyway) builds AVX2 and AVX-512.

    The same settings in every process, so they are part of the same cache keys.
    """
    config = torch._inductor.config
    changes = {}
    marked = getattr(config, "unsafe_marked_cacheable_functions", None)
    if isinstance(marked, dict) and _WHILE_LOOP not in marked:  # another torch: as it is
        changes["unsafe_marked_cacheable_functions"] = {**marked, _WHILE_LOOP: torch.__version__}
    if hasattr(config, "cpp") and hasattr(config.cpp, "vec_isa_ok") and config.cpp.vec_isa_ok is None:
        changes["cpp.vec_isa_ok"] = True  # None: not set by the user (TORCHINDUCTOR_VEC_ISA_OK)
    return config.patch(changes) if changes else contextlib.nullcontext()
