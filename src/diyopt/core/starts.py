"""What a seed means, everywhere (``compare``, ``sweep``, ``diyopt compare``, ``diyopt sweep``).

Seed 0 is the standard start ``params0``. Seed ``s > 0`` is ``params0`` moved by a seeded relative
perturbation,

    x_s = x_0 + perturb * (1 + |x_0|) * z,    z ~ N(0, 1) elementwise,

with ``z`` drawn in float64 from ``torch.Generator().manual_seed(s)``, tensor by tensor in parameter
order (then cast to each tensor's dtype). The scale follows each entry's magnitude, so an entry at 0 and
one at 1e3 move by a comparable *relative* amount; ``perturb`` is 0.1 unless a caller says otherwise.
A problem with named starts (NIST's Start 1 and Start 2) uses them first, see
:func:`diyopt.problems.start_point`.
"""

from __future__ import annotations

import torch

from diyopt.core.tree import Params, as_params

PERTURB = 0.1  # the default relative size of the perturbation for seeds > 0


def perturbed(params: Params, seed: int, perturb: float = PERTURB) -> Params:
    """Seed ``seed``'s start from ``params`` (module docstring): ``params`` itself for seed 0."""
    p0 = as_params(params)
    if seed == 0:
        return p0
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for k, v in p0.items():
        z = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(device=v.device, dtype=v.dtype)
        out[k] = v + perturb * (1 + v.abs()) * z
    return out
