"""A ``torch.compile`` backend that computes an update's scalar work once, before the element loops.

Why: an optimizer step is full of 0-dim arithmetic on the step count and hyperparameters, e.g. Adam's
bias corrections ``1 - b1 ** t``. Inductor inlines such cheap pointwise values into every kernel that
reads them, so on CPU each tensor's element loop recomputes two ``pow`` calls per vector of elements --
a user's Adam compiled that way ran at 2.5x ``torch.optim.Adam(fused=True)`` (BENCHMARKS.md, B3).
``torch.optim``'s fused kernels compute these scalars once per tensor; this backend does the same for any
rule, without the user changing a line:

1. Dynamo captures the step as one FX graph, as usual (guards, recompiles: unchanged).
2. The *prelude* is every node that produces a one-element tensor (or a Python number) from one-element
   inputs only, up to the graph's first in-place write (so no prelude node reads a value the step has
   already overwritten).
3. ``torch.fx.passes.split_module`` cuts the graph in two: the prelude, and the rest, which now receives
   the scalars as inputs -- a load per kernel instead of a computation per element.
4. Each part is compiled by Inductor on its first call.

The result is the same computation in the same order, so it equals the unsplit graph up to rounding.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.split_module import split_module

from diyopt.engines._inductor import inductor_settings

_IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.setitem}


def hoisting_backend(options: dict | None = None) -> Callable:
    """``torch.compile(fn, backend=hoisting_backend())``: Inductor, with the scalar prelude split off.

    ``options`` are Inductor options (as ``torch.compile(..., options=...)``), given to both parts.
    Inductor's input size/stride asserts are off by default: Dynamo's guards already check the graph's
    inputs, the prelude's outputs are made here, and with hundreds of inputs (an optimizer's params,
    grads and state) the asserts cost more than the step's math (BENCHMARKS.md, "Design measurements").
    """
    options = {"size_asserts": False, **(options or {})}

    def backend(gm: GraphModule, example_inputs: list) -> Callable:
        from torch._inductor import compile as inductor_compile  # Inductor loads on first use only

        prelude = scalar_prelude(gm)
        if not prelude:
            with inductor_settings():
                return inductor_compile(gm, example_inputs, options=options)
        prelude |= _pack_boundary(gm, prelude)
        split = split_module(gm, None, lambda node: 0 if node in prelude else 1)
        for name, part in list(split.named_children()):
            delattr(split, name)
            setattr(split, name, _CompileOnFirstCall(part, options))
        return split

    return backend


def scalar_prelude(gm: GraphModule) -> set[Node]:
    """The computing nodes of ``gm`` whose value is a scalar computed from scalars only (see the module doc)."""
    scalar: set[Node] = set()
    prelude: set[Node] = set()
    for node in gm.graph.nodes:
        value = node.meta.get("example_value")
        if node.op == "placeholder":
            if _is_scalar(value):
                scalar.add(node)
        elif node.op in ("call_function", "call_method"):
            if _writes_in_place(node):
                break  # a later read could see the written value: keep the rest in order, unsplit
            if _is_scalar(value) and all(arg in scalar for arg in node.all_input_nodes):
                scalar.add(node)
                prelude.add(node)
    return prelude


def _pack_boundary(gm: GraphModule, prelude: set[Node]) -> set[Node]:
    """Hand the prelude's results to the rest as one tensor per dtype, not one tensor each.

    An optimizer's prelude makes a few scalars per parameter tensor -- hundreds in all; passed one by
    one, each is an allocation and an argument of both compiled parts (BENCHMARKS.md, "Design
    measurements"). Packed, the rest reads ``packed[j]``: the same value, a load. Returns the packing nodes
    (they belong to the prelude); the unpacking nodes stay with the rest.
    """
    graph = gm.graph
    groups: dict[tuple, list[Node]] = {}
    for node in graph.nodes:  # graph order
        value = node.meta.get("example_value")
        if node in prelude and isinstance(value, torch.Tensor) and any(u not in prelude for u in node.users):
            groups.setdefault((value.dtype, value.device), []).append(node)
    # The prelude reads only scalars that nothing before it writes: move it ahead of everything else, so
    # the packed values exist before their first reader.
    anchor = next(n for n in graph.nodes if n.op != "placeholder" and n not in prelude)
    for node in [n for n in graph.nodes if n in prelude and n.op != "placeholder"]:
        anchor.prepend(node)
    added: set[Node] = set()
    with graph.inserting_before(anchor):
        for members in groups.values():
            if len(members) < 2:
                continue
            examples = [m.meta["example_value"] for m in members]
            flat = [_node(graph, torch.reshape, (m, (1,)), e.reshape(1)) for m, e in zip(members, examples)]
            packed = _node(graph, torch.cat, (flat,), torch.cat([f.meta["example_value"] for f in flat]))
            added |= {*flat, packed}
            for j, (m, e) in enumerate(zip(members, examples)):
                outside = [u for u in m.users if u not in prelude and u not in added]
                value = _node(graph, operator.getitem, (packed, j), packed.meta["example_value"][j])
                value = _node(graph, torch.reshape, (value, tuple(e.shape)), e)
                for user in outside:
                    user.replace_input_with(m, value)
    graph.lint()
    gm.recompile()
    return added


def _node(graph: torch.fx.Graph, fn: Callable, args: tuple, example: Any) -> Node:
    """``graph.call_function(fn, args)`` with Dynamo's ``example_value`` meta, as the graph's own nodes have.

    The AOTAutograd cache refuses a graph with a method call on a node that has no example value (it
    cannot tell it is a tensor), and a public torch function (not ``Tensor.reshape``) is one it accepts.
    """
    node = graph.call_function(fn, args)
    node.meta["example_value"] = example
    return node


class _CompileOnFirstCall:
    """One part of the split graph, compiled by Inductor with the inputs of its first call."""

    def __init__(self, part: GraphModule, options: dict | None):
        self.part, self.options, self.compiled = part, options, None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            from torch._inductor import compile as inductor_compile

            with _tracing_for_the_caches(), inductor_settings():
                self.compiled = inductor_compile(self.part, list(args), options=self.options)
        return self.compiled(*args)


def _tracing_for_the_caches():
    """A tracing context with a shape environment, for compiling a part outside Dynamo's own.

    Why: Inductor's FX graph cache and the AOTAutograd cache keep a graph only with the guards of its
    shape environment, which they take from the tracing context; a part compiled at its first call (after
    Dynamo's compile returned) had none, so every process lowered and code-generated the 80-tensor step
    again (the second process's first step took 103 s of the first's 130 s, load ~7). The parts' shapes
    are static (Dynamo's guards already fixed them), so the environment holds no symbols.
    """
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return tracing(TracingContext(FakeTensorMode(shape_env=ShapeEnv())))


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, bool)) and not isinstance(value, torch.SymInt)


def _writes_in_place(node: Node) -> bool:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return target in _IN_PLACE_OPERATORS or (name.endswith("_") and not name.startswith("_"))
