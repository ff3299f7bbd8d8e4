"""``to_torch``: any diyopt :class:`~diyopt.core.Optimizer` as a real ``torch.optim.Optimizer``.

    opt = diyopt.to_torch(diyopt.optim.adam(lr=1e-3), model)
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

What it keeps from torch: ``param_groups`` (per-group ``lr`` and any other hyperparameter of the diyopt
optimizer, so ``torch.optim.lr_scheduler`` works), ``state_dict()`` / ``load_state_dict()`` (portable by
position, loadable into a fresh instance), step pre/post hooks (the base class wraps ``step``), params whose
``grad`` is None skipped for that step.

How the state is kept: the diyopt state is a tree (tuples, NamedTuples, dicts) whose per-parameter leaves sit
under the parameter's name. Each leaf is stored in ``self.state[param]`` under a readable name -- the field
names on its path, e.g. Adam's ``step`` / ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``, torch's own
names -- or the dotted full path where field names alone would collide. Leaves that belong to no parameter
(a schedule's counter) live in ``self.state["group<i>"]``, a key torch's ``state_dict`` carries as is.
``self.state`` is the only copy: every step rebuilds the tree from it, so a loaded state dict is used as is.

Engines: the default runs, for a built-in whose settings an in-place kernel can do (Python-number
hyperparameters, no schedule: the factory sets ``Optimizer.kernel``), that kernel
(:mod:`diyopt.engines._kernels`): torch's fused step for ``adam``, ``adamw``, ``sgd``, ``adagrad`` without
``lr_decay`` (``torch._fused_adam_``, ..., what ``torch.optim.Adam(fused=True)`` runs), torch.optim's own
multi-tensor step (what the class runs with ``foreach=True``) for ``rmsprop``, ``adadelta``, ``adamax``,
``nadam``, ``radam``, ``rprop``, ``asgd`` over cache-sized chunks of the group (``_kernels.chunks``: each of
its passes then reads the cache, not memory), torch.optim.Muon's own step for ``muon`` -- on the very state tensors, under the very names, the pure rule
keeps, so checkpoints move between engines; each is tested against the pure rule in float64 and float32
(``tests/test_to_torch_kernels.py``) and torch's optimizer database runs through them. A ``partition``
runs each rule's own engine on the rule's params (``_partition_step``: ``adamw``'s share through its kernel),
its state staying under the partition's names (``adamw.exp_avg``). A user's
``elementwise`` rule runs tensor by tensor (``_rule_step``: the pure rule's own results, one tensor's
temporaries alive at a time), small tensors packed into one call and large ones cut into cached pieces. Anything else (a schedule or tensor as lr or betas, ``chain``/``masked``
around a rule, a state in another dtype, sparse grads, a step traced by ``torch.compile``) runs the
optimizer's pure ``update`` eagerly (the reference), group by group. The kernels update state in place as
torch.optim does: a ``state_dict()`` taken earlier sees later steps (``copy.deepcopy`` it to keep a
snapshot); loading copies
the tensors. ``compiled=True``
compiles each group's step -- update, state write-back and the parameter update -- with ``torch.compile``,
which fuses the whole rule into one pass over memory and writes state and params in place: the fast path
for big models (see ``benchmarks/to_torch_step.py``). The learning rate is passed as a tensor there, so a
scheduler changing it does not recompile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from diyopt.core.contract import Optimizer, elementwise
from diyopt.engines import _kernels
from diyopt.engines._extended import step_extended, swap_params
from diyopt.engines._kernels import KERNELS, SCALARS_ANY_DTYPE
from diyopt.engines.hoisting import hoisting_backend
from diyopt.transforms import routing


def to_torch(
    optimizer: Optimizer, params_or_module: Any, *, compiled: bool = False, on_nonfinite: str = "raise"
) -> TorchOptimizer:
    """Wrap ``optimizer`` as a ``torch.optim.Optimizer`` over ``params_or_module``.

    Args:
      optimizer: any diyopt :class:`~diyopt.core.Optimizer` (a named one, a ``chain``, a user's
        ``elementwise`` rule). Its ``hyperparams`` become the groups' defaults.
      params_or_module: an ``nn.Module``, a dict ``name -> tensor``, an iterable of tensors or of
        ``(name, tensor)`` pairs, or a list of param-group dicts as torch takes them
        (``[{"params": ..., "lr": 1e-2}, ...]``). Names are what the diyopt optimizer sees (a module's
        ``named_parameters`` names; positions ``"0"``, ``"1"``, ... for bare tensors).
      compiled: run each group's step through ``torch.compile``: one fused pass over memory, in place --
        faster than ``torch.optim.Adam(foreach=True)`` on big models, but the first step compiles (about a
        minute or more for an 80-tensor model on 2 CPU cores). Leave it off for small models and tests.

      on_nonfinite: ``"raise"`` (default): a step whose update would be nan or inf raises
        :class:`diyopt.fit.DivergedError` naming the parameter, before anything is written, so the params
        and state stay the last finite ones (one reduction and one read per step; the kernel engine
        reduces over the gradients, since a non-finite gradient gives a non-finite Adam, SGD or Adagrad update,
        and hands such a step to the pure path, which raises: a finite gradient whose update overflows,
        or a non-finite state loaded from a checkpoint, is not caught there before writing; a user's
        ``elementwise`` rule is checked on the gradients first, then on each tensor's update before that
        tensor is written: a non-finite update from finite gradients raises with the tensors before it in
        the group already stepped, and the message names them -- for a tensor larger than a chunk, its
        pieces before the one that failed too); ``"ignore"``: no
        check (torch.optim's behaviour). Neither ``compiled=True`` nor a step traced by ``torch.compile``
        checks.

    Returns:
      A :class:`TorchOptimizer`.
    """
    if isinstance(optimizer, Optimizer) and optimizer.torch_optimizer is not None:  # diyopt.optim.lbfgs
        return optimizer.torch_optimizer(optimizer, params_or_module, compiled=compiled)
    return TorchOptimizer(optimizer, params_or_module, compiled=compiled, on_nonfinite=on_nonfinite)


class TorchOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` running a diyopt optimizer; see :func:`to_torch`."""

    def __init__(self, optimizer: Optimizer, params: Any, *, compiled: bool = False, on_nonfinite: str = "raise"):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a diyopt Optimizer, got {type(optimizer).__name__}")
        if on_nonfinite not in ("raise", "ignore"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'ignore', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.optimizer = optimizer
        self.compiled = compiled
        self._hyper_keys = tuple(optimizer.hyperparams or {})
        self._group_opts: dict[int, tuple[tuple, Optimizer, tuple]] = {}
        self._lr_tensors: dict[int, Tensor] = {}
        self._layouts: dict[tuple, _Layout] = {}
        self._compiled_steps: dict[tuple, Any] = {}
        groups, self._named_input = _named_groups(params)
        self._eval_mode = False  # .eval() put the evaluation params in (schedule-free, EMA, lookahead)
        self._built = False
        super().__init__(groups, dict(optimizer.hyperparams or {}))
        self._built = True
        self._check_params()

    def _check_params(self) -> None:
        """Run each group's ``init`` on meta copies of its params (no memory, no numbers), so a rule's
        ``ValueError`` about the params -- Muon's "only supports 2D parameters", SparseAdam's "requires dense
        parameter tensors" -- comes at construction, where torch raises it. Only ``ValueError`` counts: an
        init that cannot run on meta tensors is simply checked at the first step instead."""
        for i, group in enumerate(self.param_groups):
            try:
                opt, _ = self._group_optimizer(i, group)
                self._init_optimizer(opt).init(
                    {
                        n: p if p.is_sparse else p.detach().to("meta")
                        for n, p in zip(group["param_names"], group["params"])
                    }
                )
            except ValueError:
                raise
            except Exception:  # noqa: BLE001 -- not a verdict on the params; the first step will tell
                pass

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.optimizer.build is None:
            extra = sorted(k for k in param_group if k not in ("params", "param_names"))
            if extra:
                raise TypeError(
                    f"param group sets {extra}, but this optimizer has no hyperparameters to "
                    "override (it was not built by a configurable factory)"
                )
        elif "lr" in param_group and "lr" not in (self.optimizer.hyperparams or {}):
            # torch keeps any key in a group; a learning rate nothing reads would silently train at another one
            raise TypeError(
                f"param group sets ['lr'], but this optimizer has no hyperparameter 'lr' "
                f"(its settings: {sorted(self.optimizer.hyperparams)})"
            )
        if self._built:  # a group added later, after construction
            if not isinstance(param_group["params"], (torch.nn.Module, Mapping, Tensor)):
                param_group = {**param_group, "params": list(param_group["params"])}
            if _given_names(param_group["params"]) != self._named_input:
                raise ValueError(
                    "all optimizer param groups should be with/without names. cannot add param "
                    f"group {'without' if self._named_input else 'with'} names to the optimizer"
                )
            start = sum(len(g["params"]) for g in self.param_groups)
            param_group = {**param_group, "params": _named_list(param_group["params"], start)}
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading (by position, cast to each param), then the state is matched against diyopt's
        layout again at the next step: a state dict saved by the torch.optim class loads too.

        The loaded tensors are copies: torch's loading keeps the given tensors where dtype and device
        already match, and the kernel engine updates state in place, which would otherwise change the
        caller's state dict (or another live optimizer's state) too."""
        super().load_state_dict(state_dict)
        self._eval_mode = any("train_param" in entry for entry in self.state.values())  # saved in eval mode
        for entry in self.state.values():
            for k, v in entry.items():
                if isinstance(v, Tensor):
                    entry[k] = v.clone()
        self._layouts.clear()
        self._compiled_steps.clear()

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every group; returns ``closure()``'s loss when a closure is given."""
        if self.optimizer.extra_args or self._eval_mode:  # the contract's edges: engines/_extended.py
            return step_extended(self, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            self._step_group(i, group)
        return loss

    # ------------------------------------------------------------ one group

    def train(self, mode: bool = True) -> TorchOptimizer:
        """Put the training params back after :meth:`eval`, bitwise (schedulefree's ``optimizer.train()``);
        nothing to do for an optimizer whose evaluation params are its params."""
        swap_params(self, to_eval=not mode)
        return self

    def eval(self) -> TorchOptimizer:
        """Put the evaluation params (``Optimizer.eval_params``: schedule-free's average, the EMA, lookahead's
        slow weights) into the params, keeping the training params in the state (``state_dict()`` carries
        them); ``step()`` refuses until :meth:`train`. Call it before evaluating or saving, as with
        schedulefree."""
        return self.train(False)

    def _step_group(self, i: int, group: dict, extra: dict | None = None) -> None:
        names, params, grads = [], [], []
        for name, p in zip(group["param_names"], group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse and not self.optimizer.sparse_grads:
                raise RuntimeError(f"{_label(self.optimizer)} does not support sparse gradients")
            names.append(name)
            params.append(p)
            grads.append(p.grad)
        if not params:
            return
        opt, structure = self._group_optimizer(i, group)
        layout = self._layout(i, opt, structure, names, params)
        if self.compiled:
            self._compiled_step(i, group, opt, layout, names, params, grads)
            return
        if not extra and opt.kernel is not None and self._kernel_step(opt, layout, params, grads):
            return
        if (
            not extra
            and routing(opt) is not None
            and self._partition_step(i, opt, layout, structure, names, params, grads)
        ):
            return
        if (
            not extra
            and isinstance(opt.build, elementwise)
            and self._rule_step(i, opt, layout, structure, names, params, grads)
        ):
            return
        leaves = layout.read(self.state, params, i)
        state = pytree.tree_unflatten(leaves, layout.spec)
        updates, new_state = opt.update(dict(zip(names, grads)), state, dict(zip(names, params)), **(extra or {}))
        if self.on_nonfinite == "raise":  # the guard: nothing non-finite is written (diyopt.fit's check)
            _guard(updates, names, params, _step_of(self.state, params))
        new_leaves, spec = pytree.tree_flatten(new_state)
        if spec != layout.spec:  # the rule changed its state's shape (e.g. () at init, (m,) after)
            layout = self._layouts[(i, tuple(names), structure)] = _Layout.of(new_state, names)
        layout.write(self.state, params, i, new_leaves)
        if self.optimizer.sparse_grads:  # the updates may be sparse: no foreach kernel takes those
            for n, p in zip(names, params):
                p.add_(updates[n].to(p.dtype))
            return
        torch._foreach_add_(params, [updates[n].to(p.dtype) for n, p in zip(names, params)])

    def _group_optimizer(self, i: int, group: dict) -> tuple[Optimizer, tuple]:
        """The diyopt optimizer with this group's hyperparameters (rebuilt only when they changed)."""
        values = tuple(group[k] for k in self._hyper_keys)
        if self.compiled and isinstance(group.get("lr"), (int, float)):
            # the compiled step takes the lr as a tensor input: a scheduler changing it rebuilds nothing
            values = tuple(None if k == "lr" else v for k, v in zip(self._hyper_keys, values))
        cached = self._group_opts.get(i)
        if cached is not None and _same(cached[0], values):
            return cached[1], cached[2]
        own = self.optimizer.hyperparams or {}
        changes = {k: v for k, v in zip(self._hyper_keys, values) if not (v is None and k == "lr")}
        if all(_same((own[k],), (v,)) for k, v in changes.items()):
            opt = self.optimizer
        else:
            opt = self.optimizer.replace_hyperparams(**changes)
        structure = _structure_key(values)
        self._group_opts[i] = (values, opt, structure)
        return opt, structure

    def _layout(self, i: int, opt: Optimizer, structure: tuple, names: list, params: list) -> _Layout:
        """Where each leaf of the state tree lives; fills in the state of params seen the first time."""
        key = (i, tuple(names), structure)
        layout = self._layouts.get(key)
        gkey = f"group{i}"
        missing = (
            layout is None
            or (layout.names and any(not self.state[p] for p in params))
            or (layout.has_global and gkey not in self.state)
        )
        if missing:
            fresh = self._init_optimizer(opt).init(dict(zip(names, params)))
            if layout is None:
                layout = self._layouts[key] = _Layout.of(fresh, names)
            layout.fill_missing(self.state, params, i, pytree.tree_leaves(fresh))
        return layout

    def _init_optimizer(self, opt: Optimizer) -> Optimizer:
        """The optimizer whose ``init`` builds a group's state: torch builds some state from the
        constructor's values whatever the group says (``_FROM_CONSTRUCTOR``)."""
        own = self.optimizer.hyperparams or {}
        fixed = {k: own[k] for k in _FROM_CONSTRUCTOR if k in own and not _same((own[k],), (opt.hyperparams[k],))}
        return opt.replace_hyperparams(**fixed) if fixed else opt

    # ------------------------------------------------------------ the kernel engine

    def _kernel_step(
        self, opt: Optimizer, layout: _Layout, params: list, grads: list, states: list | None = None, checked=False
    ) -> bool:
        """Run ``opt.kernel`` (torch's fused in-place step) on the group; False: not applicable, so the
        pure ``update`` runs instead (the reference engine, which this one is tested against).

        Applicable when the state is exactly the kernel's (same leaf names as the pure rule's layout, so
        checkpoints move between engines) and every param, grad and state tensor is dense, of one floating
        dtype and device. The divergence guard checks the *gradients* before anything is written (one
        reduction, a sum, as the pure path's over the updates): a non-finite gradient hands the step to the pure
        path, which raises its usual ``DivergedError`` with nothing written. For Adam and SGD a non-finite
        gradient always gives a non-finite update (Adagrad too); what this check does not see before
        writing is a finite gradient whose update still overflows, or a non-finite state loaded from a
        checkpoint.

        ``states``: each param's state as the kernel names it (default ``self.state[p]``; a partition's rule
        gets views of its own entries, see :meth:`_partition_step`); ``checked``: the gradients were found
        finite already.
        """
        spec = _KERNELS.get(opt.kernel)
        if spec is None or torch.compiler.is_compiling():  # traced by torch.compile: the pure rule traces
            return False
        if layout.has_global or layout.names != set(spec[0](opt.hyperparams)):
            return False
        p0 = params[0]
        dtype, device = p0.dtype, p0.device
        if not p0.is_floating_point() or p0.is_complex():
            return False
        # dtypes every step (a plain loop: ~0.3 us a tensor); sparse grads never get here (_step_group)
        if not (all(p.dtype is dtype for p in params) and all(g.dtype is dtype for g in grads)):
            return False
        if states is None:
            states = [self.state[p] for p in params]
        # devices and the state's dtypes are checked once per set of params and state tensors (ids: a
        # load, or a step of the pure path, puts new tensors in), not every step: with many params that
        # loop is a visible cost (BENCHMARKS.md, "Design measurements")
        ids = tuple(id(v) for s in states for v in s.values()) + tuple(map(id, params))
        if layout.kernel_checked != ids:
            loose = opt.kernel in _SCALARS_ANY_DTYPE
            if any(t.device != device for t in (*params, *grads)) or any(
                not isinstance(v, Tensor)
                or v.device != device
                or v.is_sparse
                or not (v.dtype is dtype or (loose and v.dim() == 0 and v.is_floating_point()))
                for s in states
                for v in s.values()
            ):
                return False
            layout.kernel_checked = ids
        if not checked and self.on_nonfinite == "raise" and not _all_finite(grads, layout):
            return False  # the pure path raises, naming the parameter, before writing
        # last tensor first: the guard's check has just read the gradients in order, and the last ones are
        # still in cache (the order of an elementwise step's tensors changes no number)
        return spec[1](opt.hyperparams, params[::-1], grads[::-1], states[::-1])

    # ------------------------------------------------------------ a partition, rule by rule

    def _partition_step(self, i, opt, layout, structure, names, params, grads) -> bool:
        """Run a :func:`~diyopt.transforms.partition` rule by rule, each on its own params: a rule with a
        kernel (``adamw``'s ``torch._fused_adamw_``, ``muon``'s ``torch.optim._muon.muon``) through
        :meth:`_kernel_step`, any other (a user's rule, a kernel that declines) through its pure ``update``;
        False: not applicable (nothing written), the pure partition runs.

        The state stays where the pure partition keeps it (``self.state[p]["adamw.exp_avg"]``: the label,
        then the rule's own name): the kernel gets each param's entries renamed to the rule's own names
        (views of the same tensors, which it updates in place), the pure rule reads and writes them through
        a layout of its own subtree. So a checkpoint moves between this engine and the pure one.

        The guard: every gradient of the group is checked first (one sum each); a non-finite one hands the
        step to the pure partition, which raises with nothing written. Then the rules without a kernel
        compute their updates, each checked before anything is written, and only then do the kernels run.
        (A kernel that declines a state at run time -- a step counter not 0-dim -- has its rule's pure
        update computed after the other kernels ran; a non-finite update there raises with those written.)
        Applicable only when at least one rule with params has a kernel: otherwise the pure partition is
        this very computation.
        """
        rt = routing(opt)
        if torch.compiler.is_compiling() or layout.has_global or self.optimizer.sparse_grads:
            return False
        groups = rt.route(dict(zip(names, grads)))
        if not any(rt.rules[label].kernel in _KERNELS for label, ns in groups.items() if ns):
            return False
        parts = _parts(layout, names, groups)
        if parts is None:
            return False
        guard = self.on_nonfinite == "raise"
        if guard and not _all_finite(grads, layout):
            return False  # the pure partition raises, naming the parameter, before writing
        kernels = [lab for lab, part in parts.items() if rt.rules[lab].kernel in _KERNELS and not part.store.has_global]
        results = [
            self._part_update(i, rt.rules[lab], parts[lab], params, grads, guard) for lab in parts if lab not in kernels
        ]
        for label in kernels:
            part, rule = parts[label], rt.rules[label]
            ps, gs = [params[j] for j in part.index], [grads[j] for j in part.index]
            own, store = part.own.by_param(len(ps)), part.store.by_param(len(ps))
            states = [{o: self.state[p][s] for (_, o), (_, s) in zip(own[j], store[j])} for j, p in enumerate(ps)]
            if not self._kernel_step(rule, part.own, ps, gs, states=states, checked=True):
                results.append(self._part_update(i, rule, part, params, grads, guard))
        relayout = {}
        for label, part, ps, updates, new_state in results:
            new_leaves, spec = pytree.tree_flatten(new_state)
            if spec == part.store.spec:
                part.store.write(self.state, ps, i, new_leaves)
            else:  # the rule changed its state's shape: the whole partition's layout is redone below
                relayout[label] = new_state
            torch._foreach_add_(ps, [updates[n].to(p.dtype) for n, p in zip(part.names, ps)])
        if relayout:
            state = pytree.tree_unflatten(layout.read(self.state, params, i), layout.spec)
            state.update(relayout)
            layout = self._layouts[(i, tuple(names), structure)] = _Layout.of(state, names)
            layout.write(self.state, params, i, pytree.tree_leaves(state))
        return True

    def _part_update(self, i, rule, part, params, grads, guard) -> tuple:
        """One partition rule's pure ``update`` on its params, checked by the guard, nothing written."""
        ps, gs = [params[j] for j in part.index], [grads[j] for j in part.index]
        state = pytree.tree_unflatten(part.store.read(self.state, ps, i), part.store.spec)
        updates, new_state = rule.update(dict(zip(part.names, gs)), state, dict(zip(part.names, ps)))
        if guard:
            _guard(updates, part.names, ps, _step_of(self.state, ps + params))  # muon keeps no step: adamw's
        return part.label, part, ps, updates, new_state

    # ------------------------------------------------------------ a user's elementwise rule, tensor by tensor

    def _rule_step(self, i, opt, layout, structure, names, params, grads) -> bool:
        """Run an :class:`~diyopt.core.contract.elementwise` rule (a user's own) one tensor at a time, writing
        each tensor's new state and parameter before the next is computed; False: not applicable (nothing
        written), the pure path runs.

        The result is the pure ``update``'s -- the same rule on the same tensor -- but only one tensor's
        temporaries are alive at a time, and each tensor's old state is freed as its new one is bound in
        (the rule returns new tensors; they replace the old ones under the same names), so the step holds
        little beyond params, grads and state, where the whole-group update holds every new state and
        update at once (3.2x ``Adam(foreach=True)``'s peak for ``examples/my_adam.py``, 10M params).

        A tensor larger than ``_kernels.RULE_CHUNK_BYTES`` runs piece by piece (:meth:`_rule_pieces`), its
        state written in place, so the rule's temporaries are a piece's size and stay in cache.

        The guard: the gradients are checked first (one sum each; a non-finite one hands the step to the
        pure path, which raises with nothing written), then each tensor's update before it is written. A
        non-finite update from finite gradients (the rule divides by zero) raises ``DivergedError`` naming
        that tensor, with the tensors before it in the group already stepped, and the message says so. An
        exception raised by the rule itself comes from the tensor that raised it, likewise (a rule that
        fails on every tensor, e.g. one that uses an undeclared state, fails on the first, before writing).
        """
        if torch.compiler.is_compiling() or layout.has_global or self.optimizer.sparse_grads:
            return False
        guard = self.on_nonfinite == "raise"
        if guard and not _all_finite(grads, layout):
            return False
        owned = layout.by_param(len(params))
        specs = layout.cache.get("specs")
        if specs is None:  # each tensor's state structure (a layout's is fixed: a change makes a new layout)
            tree = pytree.tree_unflatten(layout.read(self.state, params, i), layout.spec)
            specs = layout.cache["specs"] = [pytree.tree_structure(tree[n]) for n in names]

        def old(j: int) -> Any:  # tensor j's state tree, from the store
            return pytree.tree_unflatten([self.state[params[j]][key] for _, key in owned[j]], specs[j])

        new_state, relayout = {}, False
        per = (_kernels.RULE_CHUNK_BYTES or 0) // params[0].element_size() if opt.flattenable else 0
        packed = self._rule_packs(opt, layout, specs, names, params, grads, per) if per else set()
        for j, (n, p, g) in enumerate(zip(names, params, grads)):
            if j in packed:  # run with others in one call, written in place
                continue
            state = old(j)
            done = self._rule_pieces(opt, n, p, g, state, owned[j], per, guard, names[:j]) if per else None
            if done is not None:
                new_state[n] = done
                continue
            updates, one = opt.update({n: g}, {n: state}, {n: p})
            u, s = updates[n], one[n]
            if guard and not math.isfinite(float(u.sum())):
                _guard(updates, [n], [p], self.state[p].get("step"), stepped=names[:j])
            leaves, spec = pytree.tree_flatten(s)
            if spec != specs[j]:  # the rule changed this tensor's state's shape
                relayout = True
            else:
                for (_, key), leaf in zip(owned[j], leaves):
                    self.state[p][key] = leaf
            new_state[n] = s
            del state  # the old state's tensors go as soon as the store lets go of them
            p.add_(u.to(p.dtype))
        if relayout:
            new_state = {n: new_state[n] if n in new_state else old(j) for j, n in enumerate(names)}
            layout = self._layouts[(i, tuple(names), structure)] = _Layout.of(new_state, names)
            layout.write(self.state, params, i, pytree.tree_leaves(new_state))
        return True

    def _rule_packs(self, opt, layout, specs, names, params, grads, per) -> set:
        """The small tensors of :meth:`_rule_step`, packed into chunks of at most ``per`` elements
        (``_kernels._plan``) and each pack run through the rule in one call on the concatenation of its
        tensors (the rule is elementwise: ``flattenable``); returns the indices of the tensors stepped. One
        call instead of one per tensor: the rule's ops and its scalar math (bias corrections) once per pack
        -- for 64 tensors of 1000 elements, 10x the time of ``Adam(foreach=True)``'s step when run one
        by one (``benchmarks/to_torch_step.py``). The new state is copied back into each tensor's state in
        place, the update added to each param.

        A pack runs only if its tensors' states have one structure, their leaves one dtype each, each leaf
        0-dim or of its param's shape, and each 0-dim leaf (a step count) one value across the pack, checked
        (one read); and only if the pack's update is finite when the guard is on. Otherwise nothing of it
        is written and its tensors run one by one, as before (the guard then names the tensor)."""
        key = ("packs", per, tuple(p.numel() for p in params))
        packs = layout.cache.get(key)
        if packs is None:  # the tensors the plan packs whose states have one structure (fixed for a layout)
            plan = _kernels._plan(key[2], params[0].element_size(), per * params[0].element_size())
            packs = layout.cache[key] = []
            for chunk in plan:
                js = [j for j, a, b, _ in chunk if a == 0 and b == params[j].numel()]
                if len(js) > 1 and all(specs[j] == specs[js[0]] for j in js):
                    packs.append((js, specs[js[0]]))
        done: set = set()
        for js, spec in packs:
            if self._rule_pack(opt, js, spec, names, params, grads, layout.by_param(len(params))):
                done.update(js)
        return done

    def _rule_pack(self, opt, js, spec, names, params, grads, owned) -> bool:
        """One pack of :meth:`_rule_packs`; False: nothing written."""
        ps, gs = [params[j] for j in js], [grads[j] for j in js]
        columns = list(zip(*([self.state[params[j]][name] for _, name in owned[j]] for j in js)))
        dtype = ps[0].dtype
        for x in (*ps, *gs):
            if x.dtype is not dtype or not x.is_contiguous():
                return False
        scalar = []
        for col in columns:
            if not all(isinstance(x, Tensor) and x.dtype is col[0].dtype for x in col):
                return False
            scalar.append(all(x.dim() == 0 for x in col))
            if not scalar[-1] and not all(x.shape == p.shape and x.is_contiguous() for x, p in zip(col, ps)):
                return False
        equal = [torch.stack(col).eq(col[0]).all() for s, col in zip(scalar, columns) if s]
        if equal and not bool(torch.stack(equal).all()):  # a step count differs (a param that joined late)
            return False
        sizes = [p.numel() for p in ps]
        flat = [col[0] if s else torch.cat([_flat(x) for x in col]) for s, col in zip(scalar, columns)]
        n = names[js[0]]
        g, p = torch.cat([_flat(x) for x in gs]), torch.cat([_flat(x) for x in ps])
        updates, one = opt.update({n: g}, {n: pytree.tree_unflatten(flat, spec)}, {n: p})
        u, new = updates[n], _same_form(one[n], spec, flat, updates[n], p)
        if new is None:
            return False
        if self.on_nonfinite == "raise" and not math.isfinite(float(u.sum())):
            return False  # one by one: the guard names the tensor
        for s, col, x in zip(scalar, columns, new):
            if s:
                torch._foreach_copy_(list(col), [x] * len(col))
            else:
                torch._foreach_copy_([_flat(c) for c in col], list(x.split(sizes)))
        torch._foreach_add_([_flat(x) for x in ps], list(u.to(dtype).split(sizes)))
        return True

    def _rule_pieces(self, opt, n, p, g, old, owned, per, guard, before) -> Any:
        """One tensor of :meth:`_rule_step` larger than a chunk (``per`` elements), run piece by piece over
        contiguous flat slices (``_kernels.cuts``): the rule, elementwise (``flattenable``), gives each
        slice what it gives the whole tensor, and its temporaries stay the size of a piece, in cache. Each
        piece's new state is copied into the state tensors' slice (in place) and its update added to the
        param's slice; a 0-dim state leaf (a step count) is per tensor: every piece computes from the old
        one and the last piece's value is bound in. Returns the tensor's new state; None (nothing written):
        the tensor fits one chunk, a state leaf is neither 0-dim nor the param's shape, a tensor is not
        contiguous, or the rule's state for the first piece is not the old state's structure, shapes and
        dtypes (its state changes shape): the tensor then runs whole.

        The guard checks each piece's update before that piece is written: a non-finite one raises with
        the pieces before it written, and the message names them (``'w[:500000]'``)."""
        if p.numel() <= per:
            return None
        leaves, spec = pytree.tree_flatten(old)
        flat = [p, g, *leaves]
        if not all(
            isinstance(x, Tensor) and (x.dim() == 0 or (x.shape == p.shape and x.is_contiguous())) for x in flat
        ):
            return None
        for k, (a, b) in enumerate(_kernels.cuts(p.numel(), per)):
            views = [x.view(-1)[a:b] if x.dim() else x for x in flat]
            updates, one = opt.update({n: views[1]}, {n: pytree.tree_unflatten(views[2:], spec)}, {n: views[0]})
            u = updates[n]
            new = _same_form(one[n], spec, views[2:], u, views[0]) if k == 0 else pytree.tree_leaves(one[n])
            if new is None:
                return None
            if guard and not math.isfinite(float(u.sum())):
                stepped = [*before, f"{n}[:{a}]"] if a else before
                _guard({n: u}, [n], [views[0]], self.state[p].get("step"), stepped=stepped)
            for x, v in zip(new, views[2:]):
                if v.dim():
                    v.copy_(x)
            views[0].add_(u.to(p.dtype))
        leaves = [x if not leaf.dim() else leaf for leaf, x in zip(leaves, new)]  # the last piece's 0-dim ones
        for (_, key), leaf in zip(owned, leaves):
            self.state[p][key] = leaf
        return pytree.tree_unflatten(leaves, spec)

    # ------------------------------------------------------------ the compiled engine

    def _compiled_step(self, i, group, opt, layout, names, params, grads) -> None:
        lr = group.get("lr")
        tensor_lr = isinstance(lr, (int, float))
        if tensor_lr:
            t = self._lr_tensors.get(i)
            if t is None:
                t = self._lr_tensors[i] = torch.tensor(float(lr), dtype=params[0].dtype, device=params[0].device)
            t.fill_(float(lr))
        leaves = layout.read(self.state, params, i)
        # 0-dim tensors go in as 1-element views: torch.compile (2.13, CPU) drops in-place writes to 0-dim inputs
        scalars = tuple(isinstance(x, Tensor) and x.dim() == 0 for x in leaves)
        key = (i, tuple(names), id(opt), scalars)
        fn = self._compiled_steps.get(key)
        if fn is None:
            step = _make_group_step(opt, names, layout.spec, tensor_lr, scalars)
            # hoisting_backend: Inductor, with the scalar math (bias corrections) done once per step
            fn = self._compiled_steps[key] = torch.compile(step, backend=hoisting_backend())
        fn(params, grads, [x.view(1) if s else x for x, s in zip(leaves, scalars)], self._lr_tensors.get(i))


def _same_form(new_state: Any, spec, old_leaves: list, update: Tensor, param: Tensor) -> list | None:
    """``new_state``'s leaves when it has the old state's structure, leaf shapes and dtypes and ``update`` the
    param's shape -- what lets a pack or a piece be written in place; None: the rule changed its state's form."""
    leaves, new_spec = pytree.tree_flatten(new_state)
    if new_spec != spec or update.shape != param.shape:
        return None
    if any(x.shape != v.shape or x.dtype != v.dtype for x, v in zip(leaves, old_leaves)):
        return None
    return leaves


def _flat(x: Tensor) -> Tensor:
    """``x`` as a flat view (``x`` itself when 1-d: a view op costs ~1-7 us, and most packed tensors are)."""
    return x if x.dim() == 1 else x.view(-1)


def _step_of(state: Mapping, params: list) -> Any:
    """The step count the guard reports: a param's ``step``, or under a partition its rule's prefixed one
    (``adamw.step``; muon keeps none) -- the first param of the group that has either; None otherwise."""
    for p in params:
        entry = state.get(p, {})
        if isinstance(entry.get("step"), Tensor):
            return entry["step"]
        for key, v in entry.items():
            if isinstance(key, str) and key.endswith(".step") and isinstance(v, Tensor) and v.numel() == 1:
                return v
    return None


def _guard(updates: Mapping[str, Tensor], names: list, params: list, step: Any, stepped: list | None = None) -> None:
    """Raise ``DivergedError`` if an update is not finite, before anything is written.

    The per-step cost is one reduction over the updates and one sync, with no new tensors (a finite
    update on finite params that overflows them shows up as a non-finite gradient on the next step).
    Inside ``torch.compile`` the check is left out: a data-dependent branch would break the graph.
    """
    import math

    from diyopt.core.checks import nonfinite_event
    from diyopt.errors import DivergedError

    if torch.compiler.is_compiling():
        return
    if math.isfinite(float(sum(updates[n].sum() for n in names))):
        return
    at = int(step) if isinstance(step, Tensor) and step.numel() == 1 else -1
    new = {n: p + updates[n] for n, p in zip(names, params)}
    event = nonfinite_event(at, torch.zeros(()), {}, {n: updates[n] for n in names}, new)
    if event is not None:
        error = DivergedError(event)
        if stepped:  # _rule_step: the tensors before this one are written already
            event["stepped"] = list(stepped)
            error.args = (
                f"{error} (from finite gradients; the {len(stepped)} tensor(s) before it in its group "
                f"were already stepped: {', '.join(map(repr, stepped[:3]))}{', ...' if len(stepped) > 3 else ''})",
            )
        raise error


# Optimizer.kernel -> (the state leaf names the kernel keeps, the kernel): see TorchOptimizer._kernel_step
_KERNELS = dict(KERNELS)
_SCALARS_ANY_DTYPE = SCALARS_ANY_DTYPE

# The guard's split: a tensor this small is checked within one torch._foreach_norm call over all of them
# (one op instead of one sum each: the op's overhead, not memory, is their cost); larger ones by a sum each,
# which runs at memory speed (_foreach_norm is ~1.3x slower per byte on CPU).
_SMALL = 1 << 16


def _all_finite(grads: list, layout: _Layout) -> bool:
    """Whether every gradient is finite: one reduction over each, one read. A sum (or a 2-norm) is nan or
    inf when an element is; a finite sum that overflows says no too, and the pure path then decides."""
    import math

    small = layout.small_grads
    if small is None or len(small) != len(grads):
        small = layout.small_grads = [g.numel() < _SMALL for g in grads]
    parts = [g.sum() for g, s in zip(grads, small) if not s]
    tiny = [g for g, s in zip(grads, small) if s]
    if tiny:
        parts += torch._foreach_norm(tiny, 2)
    return math.isfinite(float(torch.stack(parts).sum()))


# Hyperparameters torch reads from the constructor, not the group, when it builds the state:
# torch.optim.Adagrad fills ``sum`` from its ``initial_accumulator_value`` default in ``__init__``.
_FROM_CONSTRUCTOR = ("initial_accumulator_value",)


def _make_group_step(opt: Optimizer, names: list, spec, tensor_lr: bool, scalars: tuple):
    """The whole step of one group as one function of tensors, writing state and params in place.

    With ``tensor_lr`` the optimizer is rebuilt inside the traced function with the lr tensor input, so
    the lr reaches every place the factory uses it (``scale_by_lr`` negates it when built).
    """

    def group_step(params: list, grads: list, leaves: list, lr: Tensor | None) -> None:
        o = opt.replace_hyperparams(lr=lr) if tensor_lr else opt
        state = pytree.tree_unflatten([x.view(()) if s else x for x, s in zip(leaves, scalars)], spec)
        updates, new_state = o.update(dict(zip(names, grads)), state, dict(zip(names, params)))
        for old, new in zip(leaves, pytree.tree_leaves(new_state)):
            if isinstance(old, Tensor):
                old.copy_(new.reshape(old.shape))
        for n, p in zip(names, params):
            p.add_(updates[n].to(p.dtype))

    return group_step


# ---------------------------------------------------------------- the state tree <-> self.state


class _Part(NamedTuple):
    """One partition rule's share of a group: its label, param names and their indices in the group, its
    subtree's layout under the rule's own leaf names (``own``: what its kernel calls them) and the same
    leaves under the names the partition stores them by (``store``: ``"adamw.exp_avg"``)."""

    label: str
    names: list
    index: list
    own: _Layout
    store: _Layout


def _parts(layout: _Layout, names: list, groups: dict) -> dict | None:
    """Each labelled rule's :class:`_Part` of a partition's layout (cached on it per routing), or None when
    the state is not the partition's ``{label: rule's state}`` as routed."""
    key = tuple((label, tuple(ns)) for label, ns in groups.items())
    if layout.parts is not None and layout.parts[0] == key:
        return layout.parts[1]
    # the state tree with each leaf's position in the layout as its value: which leaves are whose
    tree = pytree.tree_unflatten(list(range(len(layout.slots))), layout.spec)
    if not isinstance(tree, dict) or list(tree) != list(groups):
        return None
    index = {n: j for j, n in enumerate(names)}
    out = {}
    for label, ns in groups.items():
        if not ns:
            continue
        own = _Layout.of(tree[label], ns)
        slots = []
        for (j, _), k in zip(own.slots, pytree.tree_leaves(tree[label])):
            owner, stored = layout.slots[k]
            if (j is None) != (owner is None) or (j is not None and owner != index[ns[j]]):
                return None
            slots.append((j, stored))
        out[label] = _Part(label, list(ns), [index[n] for n in ns], own, _Layout(own.spec, slots))
    layout.parts = (key, out)
    return out


class _Layout:
    """The state tree's spec and, per leaf, ``(param index or None, readable name)``."""

    def __init__(self, spec, slots: list[tuple[int | None, str]]):
        self.spec = spec
        self.slots = slots
        self.kernel_checked: tuple | None = None  # TorchOptimizer._kernel_step's cache of checked state
        self.names = {name for _, name in slots}
        self.small_grads: list | None = None  # _all_finite's split of the group's tensors by size
        self.parts: tuple | None = None  # _parts' cache: (the routing, {label: _Part})
        self.cache: dict = {}  # TorchOptimizer._rule_packs' packs per chunk size and tensor sizes
        self._by_param: list | None = None
        self.has_global = any(j is None for j, _ in slots)

    @classmethod
    def of(cls, tree: Any, names: list[str]) -> _Layout:
        index = {n: j for j, n in enumerate(names)}
        paths, spec = pytree.tree_flatten_with_path(tree)
        raw = []
        for path, _ in paths:
            owner, parts = None, []
            for k in path:
                if owner is None and isinstance(k, pytree.MappingKey) and k.key in index:
                    owner = index[k.key]
                    continue
                parts.append(k)
            raw.append((owner, parts))
        slots = []
        for owner, parts in raw:
            short = ".".join(
                str(k.name if isinstance(k, pytree.GetAttrKey) else k.key)
                for k in parts
                if not isinstance(k, pytree.SequenceKey)
            )
            clash = sum(1 for o, p in raw if o == owner and _short(p) == short) > 1
            full = ".".join(_part(k) for k in parts) or "value"
            slots.append((owner, full if clash or not short else short))
        return cls(spec, slots)

    def by_param(self, count: int) -> list[list[tuple[int, str]]]:
        """Per param index (``count`` params), its ``(leaf index, name)`` slots in order (a dict keyed by
        param name flattens each param's leaves together, in this order)."""
        if self._by_param is None or len(self._by_param) != count:
            out: dict[int, list] = {}
            for k, (j, name) in enumerate(self.slots):
                out.setdefault(j, []).append((k, name))
            self._by_param = [out.get(j, []) for j in range(count)]
        return self._by_param

    def read(self, store, params: list, i: int) -> list:
        gkey = f"group{i}"
        return [store[gkey][name] if j is None else store[params[j]][name] for j, name in self.slots]

    def write(self, store, params: list, i: int, leaves: list) -> None:
        gkey = f"group{i}"
        for (j, name), leaf in zip(self.slots, leaves):
            if j is None:
                store.setdefault(gkey, {})[name] = leaf
            else:
                store[params[j]][name] = leaf

    def fill_missing(self, store, params: list, i: int, leaves: list) -> None:
        """Put in each leaf the state lacks; one it has in another dtype (a torch.optim state dict keeps
        ``step`` in float32, or as an int) is cast to the dtype diyopt's init gives it."""
        gkey = f"group{i}"
        for (j, name), leaf in zip(self.slots, leaves):
            target = store.setdefault(gkey, {}) if j is None else store[params[j]]
            have = target.get(name)
            if have is None:
                target[name] = leaf
            elif isinstance(leaf, Tensor) and not (isinstance(have, Tensor) and have.dtype == leaf.dtype):
                target[name] = torch.as_tensor(have).to(dtype=leaf.dtype, device=leaf.device)


def _part(k) -> str:
    if isinstance(k, pytree.GetAttrKey):
        return k.name
    if isinstance(k, pytree.MappingKey):
        return str(k.key)
    return str(getattr(k, "idx", k))


def _short(parts) -> str:
    return ".".join(_part(k) for k in parts if not isinstance(k, pytree.SequenceKey))


# ---------------------------------------------------------------- params and groups


def _named_groups(params: Any) -> tuple[list[dict], bool]:
    """torch's param-group list, every group with ``(name, tensor)`` pairs so the names reach diyopt, and
    whether the caller gave the names (a module, a dict, ``(name, tensor)`` pairs) or diyopt made them up.

    torch's rules and words: a bare tensor is not an iterable of params (``TypeError``); params within a
    group, and groups within an optimizer, are either all named or all unnamed.
    """
    if isinstance(params, torch.nn.Module):
        return [{"params": list(params.named_parameters())}], True
    if isinstance(params, Tensor):
        raise TypeError(
            "params argument given to the optimizer should be an iterable of Tensors or dicts, "
            f"but got {torch.typename(params)}"
        )
    if isinstance(params, Mapping):
        return [{"params": [(str(k), v) for k, v in params.items()]}], True
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if not all(isinstance(g, Mapping) for g in items):
        return [{"params": _named_list(items, 0)}], _given_names(items)
    groups, start, named = [], 0, None
    for g in items:
        if "params" not in g:
            raise ValueError("each param group must have a 'params' entry")
        listed_params = g["params"]
        if not isinstance(listed_params, (torch.nn.Module, Mapping, Tensor)):
            listed_params = list(listed_params)  # a generator (model.parameters()) is read once
        group_named = _given_names(listed_params)
        if named is not None and group_named != named:
            raise ValueError(
                "all optimizer param groups should be with/without names. cannot add param group "
                f"{'with' if group_named else 'without'} names to the optimizer"
            )
        named = group_named
        listed = _named_list(listed_params, start)
        start += len(listed)
        groups.append({**g, "params": listed})
    return groups, bool(named)


def _given_names(params: Any) -> bool:
    """Whether a group's params come with names; a mix is torch's ``ValueError``."""
    if isinstance(params, (torch.nn.Module, Mapping)):
        return True
    if isinstance(params, Tensor):
        return False
    params = list(params)
    named = [isinstance(p, tuple) for p in params]
    if any(named) and not all(named):
        raise ValueError("all optimizer params should be with/without names. Some param names are missing")
    return bool(params) and all(named)


def _named_list(params: Any, start: int) -> list[tuple[str, Tensor]]:
    if isinstance(params, torch.nn.Module):
        return list(params.named_parameters())
    if isinstance(params, Tensor):
        params = [params]
    if isinstance(params, Mapping):
        return [(str(k), v) for k, v in params.items()]
    return [(str(p[0]), p[1]) if isinstance(p, tuple) else (str(start + j), p) for j, p in enumerate(params)]


def _label(optimizer: Optimizer) -> str:
    build = optimizer.build
    return getattr(build, "__name__", None) or type(optimizer).__name__


def _same(a: tuple, b: tuple) -> bool:
    """Hyperparameter values equal (tensors by identity: an in-place change is seen through the closure)."""
    for x, y in zip(a, b):
        if x is y:
            continue
        if isinstance(x, Tensor) or isinstance(y, Tensor) or x != y:
            return False
    return True


def _structure_key(values: tuple) -> tuple:
    """What may change the state's shape: flags and which numbers are zero (``nonzero`` builds a term)."""
    out = []
    for v in values:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            out.append(v)
        elif isinstance(v, (int, float)):
            out.append(v != 0)
        elif isinstance(v, tuple):
            out.append(_structure_key(v))
        else:
            out.append(type(v).__name__)
    return tuple(out)
