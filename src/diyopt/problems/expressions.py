"""TODO docstring."""

from __future__ import annotations

import ast

import torch

FUNCTIONS = {
    "exp": torch.exp,
    "log": torch.log,
    "sin": torch.sin,
    "cos": torch.cos,
    "arctan": torch.atan,
    "sqrt": torch.sqrt,
}


def compile_expression(expr: str, source: str):
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ValueError(f"{source}: cannot parse model expression {expr!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES):
            raise ValueError(f"{source}: unsupported {type(node).__name__} in model expression {expr!r}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ValueError(f"{source}: unsupported function call in model expression {expr!r}")
    return compile(tree, source, "eval")


def names_in(code) -> set[str]:
    return set(code.co_names)


ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)
