"""``diyopt list``: every optimizer, loss, problem, schedule and transform by name."""

from __future__ import annotations

from collections.abc import Callable


def _optimizer_names() -> list[str]:
    from diyopt import optim

    return optim.names()


def _loss_names() -> list[str]:
    from diyopt.problems import losses

    return losses.names()


def _problem_lines() -> list[str]:
    """One line per problem: ``NAME  ARG=DEFAULT,...  description`` (the spec syntax ``--problem`` takes),
    then one per NIST StRD file found (``diyopt.nist.nist_dir``)."""
    import inspect

    from diyopt import problems
    from diyopt.problems import strd as nist

    def args(name: str) -> str:
        items = [k if v is inspect.Parameter.empty else f"{k}={_show(v)}" for k, v in problems.arguments(name).items()]
        return ",".join(items) or "-"

    rows = [(n, args(n), problems.describe(n)) for n in problems.names()]
    rows += [
        (f"nist:{f.stem}", "-", f"NIST StRD {f.stem}: " + nist.FORMULAS.get(f.stem, "linear regression"))
        for f in sorted(nist.nist_dir().glob("*.dat"))
    ]
    w1, w2 = max(len(r[0]) for r in rows), min(max(len(r[1]) for r in rows), 44)
    return [f"{n:<{w1}}  {a:<{w2}}  {d}" for n, a, d in rows]


def _show(v) -> str:
    """A default as the spec syntax writes it: tuples joined by ``/``, booleans lower case."""
    if isinstance(v, tuple):
        return "/".join(_show(x) for x in v)
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    return str(v)


def _function_lines(module) -> list[str]:
    """``name(arguments)  first sentence of the docstring`` for each public factory of ``module``."""
    import inspect
    import re

    rows = []
    for name in sorted(n for n in module.__all__ if n[0].islower()):
        f = getattr(module, name)
        try:
            signature = inspect.signature(f)
        except (TypeError, ValueError):  # a builtin or an object without one: the name alone
            rows.append((name, " ".join((f.__doc__ or "").split()[:12])))
            continue
        params = [p for p in signature.parameters.values() if p.name not in ("grad", "state", "param")]
        args = ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in params)
        # the first sentence of the first paragraph, before cleaning: a sentence ends at ". " before a
        # capital, a role (:math:) or markup, not at "sec. 7"
        doc = " ".join(inspect.cleandoc(f.__doc__ or "").split("\n\n")[0].split())
        doc = re.split(r"\.\s+(?=[A-Z:`\\])", doc, maxsplit=1)[0].rstrip(".")
        doc = re.sub(r":\w+:`~?([^`]*)`", r"\1", doc).replace("``", "")
        doc = re.sub(r"\\(?:text|operatorname)\{([^}]*)\}", r"\1", doc).replace("\\_", "_")
        doc = re.sub(r"\\(\w+)", r"\1", doc)  # TeX commands as their names: \gamma -> gamma
        rows.append((f"{name}({args})", doc))
    width = min(max(len(r[0]) for r in rows), 48)
    return [f"{sig:<{width}}  {doc}" for sig, doc in rows]


def _schedule_lines() -> list[str]:
    from diyopt import schedules

    return _function_lines(schedules)


def _transform_lines() -> list[str]:
    from diyopt import transforms

    return _function_lines(transforms)


# What ``diyopt list KIND`` can list: ``kind -> function returning its lines``.
LISTABLE: dict[str, Callable[[], list[str]]] = {
    "optimizers": _optimizer_names,
    "losses": _loss_names,
    "problems": _problem_lines,
    "schedules": _schedule_lines,
    "transforms": _transform_lines,
}


def add(sub) -> None:
    p = sub.add_parser(
        "list",
        help="list the built-in optimizers, losses, problems, schedules, transforms",
        description="Print the built-in names of one kind, one per line; without KIND, every "
        "kind under a heading. Problems show their arguments (the --problem spec syntax: "
        "NAME:key=value,...) and a one-line description; schedules and transforms their "
        "arguments and what they do.",
    )
    p.add_argument(
        "kind",
        metavar="KIND",
        nargs="?",
        choices=sorted(LISTABLE),
        help=f"what to list: {', '.join(sorted(LISTABLE))} (default: all)",
    )

    def run(args) -> int:
        if args.kind is not None:
            print("\n".join(LISTABLE[args.kind]()))
            return 0
        for i, (kind, lines) in enumerate(LISTABLE.items()):
            print(("\n" if i else "") + f"{kind}:")
            print("\n".join("  " + line for line in lines()))
        return 0

    p.set_defaults(run=run)
