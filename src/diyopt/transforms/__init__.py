"""Small composable gradient transformations; a named optimizer (:mod:`diyopt.optim`) is a chain of them.

Each transform is an :class:`~diyopt.core.Optimizer`. Per-tensor ones are :func:`~diyopt.core.elementwise`
rules with a ``NamedTuple`` state of tensors; hyperparameters may be Python numbers or tensors (the fast
engines pass tensors so nothing recompiles when they change), so no rule branches in Python on a
hyperparameter's value -- ``torch.where`` selects instead. Validation lives one layer up, in
:mod:`diyopt.optim`. One concern per private module: scaling and schedules, weight decay, momentum,
clipping, the wrappers that change *where* or *when* an inner transform applies, and the adaptive
per-tensor scalings of Adam, RMSprop, Adagrad, ...
"""

from ._adan import (
    AdanState,
    clip_by_global_norm_f32,
    scale_by_adan,
)
from ._adaptive import (
    AdadeltaState,
    AdafactorState,
    AdagradState,
    AdamaxState,
    AdamState,
    AsgdState,
    LionState,
    MuonState,
    NadamState,
    RadamState,
    RmsState,
    RpropState,
    SparseAdamState,
    orthogonalize,
    scale_by_adadelta,
    scale_by_adafactor,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_asgd,
    scale_by_lion,
    scale_by_muon,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rprop,
    scale_by_sparse_adam,
)
from ._adopt import (
    AdoptState,
    adopt_clip,
    scale_by_adopt,
)
from ._clipping import (
    clip,
    clip_by_global_norm,
)
from ._decay import (
    add_decayed_weights,
    add_decoupled_weight_decay,
)
from ._momentum import (
    MomentumState,
    TraceState,
    heavy_ball,
    trace,
)
from ._partition import (
    Routing,
    partition,
    routing,
)
from ._prodigy import (
    ProdigyMoments,
    ProdigyState,
    scale_by_prodigy,
)
from ._scaling import (
    Schedule,
    ScheduleState,
    scale,
    scale_by_lr,
    scale_by_schedule,
    set_to_zero,
)
from ._schedule_free import (
    ScheduleFreeAdamState,
    ScheduleFreeState,
    scale_by_schedule_free,
    scale_by_schedule_free_adam,
)
from ._soap import (
    SoapState,
    scale_by_soap,
)
from ._wrappers import (
    AccumulateState,
    ApplyIfFiniteState,
    Mask,
    accumulate,
    apply_if_finite,
    freeze,
    masked,
)

__all__ = [
    "accumulate",
    "AccumulateState",
    "AdadeltaState",
    "AdafactorState",
    "AdagradState",
    "AdamaxState",
    "AdamState",
    "AdanState",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "adopt_clip",
    "AdoptState",
    "apply_if_finite",
    "ApplyIfFiniteState",
    "AsgdState",
    "clip",
    "clip_by_global_norm",
    "clip_by_global_norm_f32",
    "freeze",
    "heavy_ball",
    "LionState",
    "Mask",
    "masked",
    "MomentumState",
    "MuonState",
    "NadamState",
    "orthogonalize",
    "partition",
    "Routing",
    "routing",
    "ProdigyMoments",
    "ProdigyState",
    "RadamState",
    "RmsState",
    "RpropState",
    "scale",
    "scale_by_adadelta",
    "scale_by_adafactor",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_adopt",
    "scale_by_asgd",
    "scale_by_lion",
    "scale_by_lr",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_prodigy",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_schedule",
    "scale_by_schedule_free",
    "scale_by_schedule_free_adam",
    "scale_by_soap",
    "scale_by_sparse_adam",
    "Schedule",
    "ScheduleFreeAdamState",
    "ScheduleFreeState",
    "ScheduleState",
    "set_to_zero",
    "SoapState",
    "SparseAdamState",
    "trace",
    "TraceState",
]
