"""Problems with known answers: a starting point, a loss, and the solution where one is known.

``diyopt.problems.get("rosenbrock", dim=2)``, ``diyopt.problems.names()``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from diyopt.core.starts import perturbed
from diyopt.core.tree import Params, as_params
from diyopt.errors import unknown_name
from diyopt.problems._problem import Problem

PROBLEMS: dict[str, Callable[..., Problem]] = {}
_SUMMARIES: dict[str, str] = {}  # the one line ``diyopt list problems`` prints


def register(name: str, summary: str | None = None) -> Callable:
    """Decorator: register a problem factory under ``name``, with a one-line ``summary`` (default: the
    first sentence of its docstring)."""

    def deco(factory: Callable[..., Problem]) -> Callable[..., Problem]:
        PROBLEMS[name] = factory
        if summary:
            _SUMMARIES[name] = summary
        return factory

    return deco


def names() -> list[str]:
    return sorted(PROBLEMS)


def get(name: str, **kwargs: Any) -> Problem:
    """A problem by name or spec; ``kwargs`` go to its factory. Unknown names suggest the closest.

    ``name`` may carry arguments in the spec syntax of :func:`parse_spec`: ``get("rosenbrock:dim=4")``,
    ``get("nist:Misra1a")`` (the NIST StRD dataset Misra1a), ``get("csv:data.csv,model=poly:2")``;
    ``kwargs`` given here override the spec's."""
    name, spec_kwargs = parse_spec(name)
    kwargs = {**spec_kwargs, **_checked_kwargs(name, kwargs)}
    missing = _missing(name, kwargs)
    if missing:
        raise ValueError(
            f"problem {name!r} needs {', '.join(k + '=...' for k in missing)} (e.g. {name}:{missing[0]}=...)"
        )
    return PROBLEMS[name](**checked_arguments(name, PROBLEMS[name], kwargs))


# ---------------------------------------------------------------- the problem spec (CLI and Python)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME[:ARG][,key=value,...]"`` -> ``(NAME, kwargs)``: the one problem syntax of every subcommand.

    - ``NAME`` is a registered problem (``diyopt list problems``); unknown names suggest the closest.
    - After the first ``:`` come comma-separated ``key=value`` arguments of the problem's factory
      (``rosenbrock:dim=4``, ``quadratic:dim=10,cond=1e3``). The first one may omit its key: it is then
      the factory's first argument (``nist:Misra1a`` = ``nist:path_or_name=Misra1a``, ``csv:data.csv``).
    - A value is converted by the factory's annotation: ``int``, ``float``, ``bool``
      (``true``/``false``), ``str`` (kept as written: ``model=poly:2``, ``path=my data.csv``), tuples as
      ``A/B`` (``start=1/2``), dicts as ``k=v/k=v`` (``p0=a=1/k=0.5``). A piece without ``key=`` after the
      first continues the previous value, so a value may hold commas.
    - Unknown keys, missing required arguments and unconvertible values are errors naming the problem.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a problem spec is NAME[:key=value,...], got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in PROBLEMS:
        raise ValueError(unknown_name("problem", name, PROBLEMS))
    params = _signature(name)
    raw: dict[str, str] = {}
    last = positional = None
    for i, piece in enumerate(rest.split(",") if rest.strip() else []):
        key, eq, value = piece.partition("=")
        if eq and key.strip().isidentifier():
            last = key.strip()
            if last in raw:
                raise ValueError(f"problem {name!r}: argument {last!r} given twice in {spec!r}")
            raw[last] = value.strip()
        elif i == 0:  # a leading positional value: the factory's first argument
            if not params:
                raise ValueError(f"problem {name!r} takes no arguments, got {piece!r} in {spec!r}")
            last = positional = next(iter(params))
            raw[last] = piece.strip()
        elif last is not None:
            raw[last] += "," + piece
        else:
            raise ValueError(f"problem arguments are key=value, got {piece!r} in {spec!r}")
    kwargs = {}
    for k, v in raw.items():
        try:
            kwargs[k] = _convert(name, k, v, params.get(k))
            if positional == k:  # a number's type is checked here, so the hint below can join the error
                checked_arguments(name, PROBLEMS[name], {k: kwargs[k]})
        except ValueError as e:
            if positional == k:  # the user may have meant a key: say how the value was read
                raise ValueError(f"{e} (arguments are key=value; a first value without key= is {k})") from None
            raise
    return name, _checked_kwargs(name, kwargs)


def arguments(name: str) -> dict[str, Any]:
    """``{argument: default}`` of a registered problem's factory (``inspect.Parameter.empty`` = required)."""
    return {k: p.default for k, p in _signature(name).items()}


def describe(name: str) -> str:
    """The one-line description ``diyopt list problems`` prints (the registered summary, else the first
    sentence of the factory's docstring)."""
    if name in _SUMMARIES:
        return _SUMMARIES[name]
    doc = " ".join((PROBLEMS[name].__doc__ or "").split())
    doc = re.sub(r":math:`([^`]*)`", r"\1", doc).replace("``", "")
    first = re.split(r"(?<=[.;])\s", doc, maxsplit=1)[0]
    return first.rstrip(".;")


def _signature(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(PROBLEMS[name]).parameters)


def _checked_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Unknown argument names and missing required ones are one-line errors that list what the problem takes."""
    params = _signature(name)
    for k in kwargs:
        if k not in params:
            if not params:
                raise ValueError(f"problem {name!r} takes no arguments, got {k!r}")
            raise ValueError(unknown_name(f"argument of problem {name!r}", k, params))
    return kwargs


def _missing(name: str, kwargs: dict[str, Any]) -> list[str]:
    return [k for k, p in _signature(name).items() if p.default is inspect.Parameter.empty and k not in kwargs]


def _convert(problem: str, key: str, text: str, param: inspect.Parameter | None) -> Any:
    """A spec value as the factory's annotation (a string under ``from __future__ import annotations``)
    says; without an annotation, a Python literal when it is one, else the text."""
    kind = str(param.annotation) if param is not None and param.annotation is not inspect.Parameter.empty else ""
    what = f"problem {problem!r}: {key}={text!r}"
    try:
        if kind.startswith("str"):
            return text
        if kind.startswith("bool"):
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if kind.startswith(("int", "float")):
            # A number as written (dim=1e10 is 10**10): checked_arguments then types it and checks the
            # size it asks for, and words what is not a number ("dim must be an integer, got 'two'").
            for number in (int, float):
                try:
                    return number(text)
                except ValueError:
                    pass
            return text
        if kind.startswith(("tuple", "list")):
            return tuple(float(v) for v in text.split("/"))
        if kind.startswith("dict"):
            pairs = [item.partition("=") for item in text.split("/")]
            if not all(eq and k.strip() for k, eq, _ in pairs):
                raise ValueError
            return {k.strip(): float(v) for k, _, v in pairs}
    except ValueError:
        expected = {
            "bool": "true or false",
            "int": "an integer",
            "float": "a number",
            "tuple": "numbers joined by /",
            "list": "numbers joined by /",
            "dict": "name=number pairs joined by /",
        }
        raise ValueError(
            f"{what}: expected {next((v for k, v in expected.items() if kind.startswith(k)), kind)}"
        ) from None
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ---------------------------------------------------------------- arguments checked before any work

#: Bytes a problem allocates for its arguments, roughly (float64 tensors and the loss's temporaries):
#: checked against the machine's memory *before* the factory allocates anything.
_BYTES: dict[str, Callable[[dict], float]] = {
    "rosenbrock": lambda a: 8.0 * 16 * a.get("dim", 2),
    "quadratic": lambda a: 8.0 * 4 * a.get("dim", 10) ** 2,
    "line": lambda a: 8.0 * 8 * a.get("n", 100),
    "polynomial": lambda a: 8.0 * 4 * a.get("n", 50) * (a.get("degree", 3) + 1),
    "logistic": lambda a: 8.0 * 4 * a.get("n", 200) * (a.get("dim", 2) + 1),
    "breast_cancer": lambda a: 8.0 * 4 * 600 * (a.get("hidden", 0) + 31) ** 2,
}


def checked_arguments(name: str, factory: Callable, kwargs: dict) -> dict:
    """``kwargs`` checked against the factory's signature: unknown names, the declared types (an ``int``
    argument takes ``4`` or ``4.0``, not ``'two'``; a ``float`` one a number, a ``bool`` one true/false)
    and sizes that would not fit in memory -- each as one line naming the argument."""
    import inspect

    params = inspect.signature(factory).parameters
    out = {}
    for key, value in kwargs.items():
        p = params.get(key)
        if p is None or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            known = [k for k, q in params.items() if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
            raise ValueError(unknown_name(f"argument of problem {name!r}:", key, known))
        kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        out[key] = _typed(name, key, value, kind)
    estimate = _BYTES.get(name)
    if estimate is not None:
        need = estimate(out)
        have = _memory_bytes()
        if need > have / 2:
            sizes = ", ".join(f"{k}={v}" for k, v in out.items() if isinstance(v, int) and not isinstance(v, bool))
            raise ValueError(
                f"problem {name!r} with {sizes} needs about {_gb(need)} of memory; this machine "
                f"has {_gb(have)} (at most half of it may go to one problem)"
            )
    return out


def _typed(name: str, key: str, value: Any, kind: str) -> Any:
    where = f"problem {name!r}: {key}"
    if kind == "int":
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    elif kind == "str" and not isinstance(value, str):
        value = str(value)
    return value


def _memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _gb(n: float) -> str:
    return f"{n / 2**30:,.0f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def as_problem(problem: Problem | str) -> Problem:
    """A Problem as is; a string is a problem spec (``"rosenbrock:dim=4"``, ``"nist:Misra1a"``), parsed by
    :func:`diyopt.problems.parse_spec` like every subcommand's ``--problem``."""
    if isinstance(problem, Problem):
        return problem
    if not isinstance(problem, str):
        raise TypeError(f"problem must be a Problem or a name, got {type(problem).__name__}")
    from diyopt import problems

    return problems.get(problem)


def start_point(problem: Problem, seed: int, perturb: float = 0.1) -> Params:
    """The start for ``seed``: ``params0`` for seed 0; a problem's own named starts next (a NIST problem's
    ``starts``: seed 1 = Start 2); then ``problem.info["sample_start"](seed)`` if the problem has a
    sampler, else ``params0 + perturb * (1 + |params0|) * z`` with ``z ~ N(0, 1)`` from a generator
    seeded with ``seed`` (:func:`diyopt.starts.perturbed`, the rule ``sweep`` uses too)."""
    p0 = as_params(problem.params0)
    if seed == 0:
        return p0
    named = list(getattr(problem, "starts", None) or {})  # NIST: Start 1 (= params0), Start 2
    if seed < len(named):
        return as_params(problem.starts[named[seed]])
    sampler = problem.info.get("sample_start")
    if sampler is not None:
        return as_params(sampler(seed))
    return perturbed(p0, seed, perturb)
