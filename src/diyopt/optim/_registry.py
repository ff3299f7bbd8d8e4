"""Optimizer specs: one string names an optimizer and its settings, for the CLI and config files.

The syntax::

    NAME[:KEY=VALUE,KEY=VALUE,...]            a built-in optimizer, e.g.  adam:lr=1e-2,betas=0.8/0.99
    FILE.py:ATTR[:KEY=VALUE,...]              a user's rule in a file,  e.g.  my_rules.py:signum:lr=0.1
    WRAPPER+BASE[:KEY=VALUE,...]              sam, lookahead or ema around either, e.g.  sam+adam:lr=3e-2,rho=1e-3

- ``NAME`` is one of ``diyopt.optim.names()``.
- ``FILE.py`` is a path (relative to the working directory, or absolute) to a Python file; ``ATTR`` is a name
  in it: an ``Optimizer`` (settings then go through ``replace_hyperparams``), an ``@diyopt.elementwise`` rule
  or a factory returning an ``Optimizer`` (called with the settings as keyword arguments).
- ``WRAPPER`` is one of :data:`WRAPPERS`; wrappers stack (``ema+sam+sgd``). A setting named in a wrapper's
  signature (``rho``, ``adaptive``, ``k``, ``alpha``, ``decay``) goes to the wrapper that takes it, the rest
  to ``BASE``; a wrapper's settings may also follow its own name (``lookahead:alpha=0.5+rmsprop:alpha=0.9``),
  which is how to give a setting both take (``alpha`` of lookahead and rmsprop/asgd): given only after the
  base it is an error naming both. A ``+`` splits only after a wrapper name, never inside a ``.py`` path.
- ``VALUE`` is an int (``10``), a float (``1e-2``, ``0.9``), ``true`` / ``false``, ``none``, or a tuple of
  those joined by ``/`` (``0.8/0.99``). Nothing else: a spec carries numbers and flags, not code.

Errors are one line: an unknown name suggests the closest, a malformed part is quoted, and a file that fails
to import is named with the line that failed.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from diyopt._util.interrupts import interrupt_in
from diyopt.core.contract import Optimizer
from diyopt.errors import unknown_name
from diyopt.optim._builtins import BUILTINS as TORCH_TWINS
from diyopt.optim._recent import RECENT
from diyopt.optim._schedule_free import schedule_free_adamw, schedule_free_sgd
from diyopt.optim._wrappers import ema, lookahead, sam

#: Every built-in optimizer by name: torch.optim's twins (optim/_builtins.py), the recent ones
#: (optim/_recent.py), the schedule-free pair. Wrappers of another optimizer (sam, lookahead, ema) are not
#: here: a spec names one optimizer.
BUILTINS = {**TORCH_TWINS, **RECENT, "schedule_free_adamw": schedule_free_adamw, "schedule_free_sgd": schedule_free_sgd}

#: The wrappers a spec may put around its optimizer: ``sam+adam:lr=3e-2,rho=1e-3``, ``ema+sam+sgd``.
WRAPPERS = {"sam": sam, "lookahead": lookahead, "ema": ema}


def parse(spec: str, whole: str | None = None) -> tuple[str, str | None, dict[str, Any]]:
    """Split a spec into ``(target, attr, kwargs)``: ``target`` is a built-in name or a ``.py`` path,
    ``attr`` the name inside the file (None for built-ins).

    >>> parse("adam:lr=1e-2,betas=0.8/0.99,amsgrad=true")
    ('adam', None, {'lr': 0.01, 'betas': (0.8, 0.99), 'amsgrad': True})
    >>> parse("rules/my.py:signum:lr=0.1")
    ('rules/my.py', 'signum', {'lr': 0.1})
    """
    if not isinstance(spec, str):
        raise TypeError(f"an optimizer spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    shown = spec if whole is None else whole  # errors quote the whole spec the user typed
    if not text:
        raise ValueError("empty optimizer spec; expected NAME[:key=value,...] or FILE.py:NAME[:key=value,...]")
    at = text.find(".py:")
    if at >= 0 or text.endswith(".py"):
        if at < 0:
            raise ValueError(f"spec {shown!r} names a file but no object in it; write FILE.py:NAME")
        target, rest = text[: at + 3], text[at + 4 :]
        attr, _, settings = rest.partition(":")
        if not attr.isidentifier():
            raise ValueError(f"bad object name {attr!r} in spec {shown!r}: expected a Python identifier after FILE.py:")
    else:
        target, _, settings = text.partition(":")
        attr = None
        if not target.isidentifier():
            raise ValueError(f"bad optimizer name {target!r} in spec {shown!r}")
    return target, attr, parse_settings(settings, shown)


def parse_settings(text: str, spec: str | None = None) -> dict[str, Any]:
    """``"lr=1e-2,betas=0.8/0.99"`` -> ``{"lr": 0.01, "betas": (0.8, 0.99)}``."""
    where = f" in spec {spec!r}" if spec is not None else ""
    out: dict[str, Any] = {}
    if not text.strip():
        return out
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier() or not value.strip():
            raise ValueError(f"bad setting {part!r}{where}: expected key=value")
        if key in out:
            raise ValueError(f"setting {key!r} given twice{where}")
        out[key] = _value(value.strip(), key, where)
    return out


def _value(text: str, key: str, where: str) -> Any:
    if "/" in text:
        return tuple(_value(v.strip(), key, where) for v in text.split("/"))
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise ValueError(f"bad value {text!r} for {key!r}{where}: expected a number, true/false, none or a/b")


def get(spec: str) -> Optimizer:
    """An optimizer from a spec: ``get("adam:lr=1e-2,betas=0.8/0.99")``, ``get("my_rules.py:signum:lr=0.1")``.

    Syntax: ``NAME[:key=value,...]`` or ``FILE.py:NAME[:key=value,...]``, either behind wrappers
    (``sam+adam:lr=3e-2,rho=1e-3``, or with each part's own settings ``lookahead:alpha=0.5+rmsprop:alpha=0.9``);
    values are numbers, ``true`` / ``false``, ``none``, or tuples joined by ``/`` (see the module docstring).
    A setting that both a wrapper and the part inside it take, given only after the base, is an error.
    """
    whole = spec
    parts, spec = _split_wrappers(spec)
    target, attr, kwargs = parse(spec, whole)
    wrappers = [w for w, _ in parts]
    own = [parse_settings(settings, whole) for _, settings in parts]
    for w, settings in zip(wrappers, own):
        known = _known_settings(WRAPPERS[w])
        for k in settings:
            if k == "base" or k not in known:
                raise ValueError(
                    unknown_name(f"setting for {w}:", k, [n for n in known if n != "base"]) + f" (in spec {whole!r})"
                )
    base_known, loaded = None, None  # looked up only when a wrapper takes a setting given after the base
    for k in list(kwargs):
        owners = [
            i for i, w in enumerate(wrappers) if k != "base" and k in _known_settings(WRAPPERS[w]) and k not in own[i]
        ]
        if not owners:
            continue
        if base_known is None:
            base_known, loaded = _base_settings(target, attr)
        base_label = target if attr is None else f"{target}:{attr}"
        if len(owners) > 1 or k in base_known:
            names = [wrappers[i] for i in owners] + ([base_label] if k in base_known else [])
            first = wrappers[owners[0]]
            raise ValueError(
                f"setting {k!r} in spec {whole!r} is taken by both {' and '.join(names)}: put a wrapper's own "
                f"settings after its name (e.g. {first}:{k}=...+...), the ones after the base go to the base"
            )
        own[owners[0]][k] = kwargs.pop(k)
    opt = _base(target, attr, kwargs, whole, loaded)
    for w, settings in zip(reversed(wrappers), reversed(own)):
        opt = WRAPPERS[w](opt, **settings)
    return opt


def _base_settings(target: str, attr: str | None) -> tuple[list[str], Any]:
    """The settings the base of a spec takes by name (none known for a factory taking ``**kwargs``), and the
    object loaded from a user's file (None for a built-in), so the file runs once."""
    if attr is None:
        factory = BUILTINS.get(target)
        return ((_known_settings(factory) or []) if factory is not None else []), None
    obj = getattr_from_file(target, attr)
    if isinstance(obj, Optimizer):
        return list(obj.hyperparams or {}), obj
    return ((_known_settings(obj) or []) if callable(obj) else []), obj


# A "+" that joins a wrapper to what it wraps; not the "+" of an exponent such as 1e+2.
_JOIN = re.compile(r"(?<![0-9.][eE])\+")


def _split_wrappers(spec: str) -> tuple[list[tuple[str, str]], str]:
    """``"ema+sam:rho=0.1+adam:lr=1e-2"`` -> ``([("ema", ""), ("sam", "rho=0.1")], "adam:lr=1e-2")``.

    A part is split off only when it is a known wrapper name (with its own settings after ``:``), and a
    spec naming an existing ``.py`` file is never split: a folder called ``c++`` is a folder.
    """
    if not isinstance(spec, str):
        return [], spec
    text = spec.strip()
    at = text.find(".py:")
    if (at >= 0 and os.path.isfile(text[: at + 3])) or os.path.isfile(text):
        return [], spec
    parts: list[tuple[str, str]] = []
    while True:
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*([:+])", text)
        if m is None or m.group(1) not in WRAPPERS:
            break
        if m.group(2) == "+":
            parts.append((m.group(1), ""))
            text = text[m.end() :]
            continue
        join = _JOIN.search(text, m.end())
        if join is None:  # "sam:rho=0.1" with no base: _base says what to write
            break
        parts.append((m.group(1), text[m.end() : join.start()]))
        text = text[join.end() :]
    if not parts:
        head, plus, _ = text.partition("+")
        if plus and head.strip().isidentifier() and ".py" not in text:
            raise ValueError(unknown_name("wrapper", head.strip(), WRAPPERS) + f" (in spec {spec!r}: WRAPPER+BASE)")
        return [], spec
    return parts, text


def _base(target: str, attr: str | None, kwargs: dict, whole: str | None = None, obj: Any = None) -> Optimizer:
    if attr is None:
        if target in WRAPPERS:
            raise ValueError(
                f"{target} wraps another optimizer: write {target}+BASE[:settings], e.g. "
                f"{target}+adam:lr=1e-2 (the settings go to {target} or to BASE by name)"
            )
        if target not in BUILTINS:
            raise ValueError(unknown_name("optimizer", target, BUILTINS))
        return _build(BUILTINS[target], kwargs, target, whole)
    if obj is None:
        obj = getattr_from_file(target, attr)
    if isinstance(obj, Optimizer):
        return obj.replace_hyperparams(**kwargs) if kwargs else obj
    if callable(obj):
        return _build(obj, kwargs, f"{target}:{attr}", whole)
    raise TypeError(
        f"{target}:{attr} is a {type(obj).__name__}; expected an Optimizer, an elementwise rule "
        "or a function returning an Optimizer"
    )


def _build(factory: Any, kwargs: dict, label: str, whole: str | None = None) -> Optimizer:
    known = _known_settings(factory)
    if known is not None:
        for k in kwargs:
            if k not in known:
                where = f" (in spec {whole!r})" if whole is not None else ""
                raise ValueError(unknown_name(f"setting for {label}:", k, known) + where)
    for k, v in kwargs.items():  # lr=true is not lr=1.0: a flag only where the default is a flag
        default = _default_of(factory, k)
        if isinstance(v, bool) and isinstance(default, (int, float)) and not isinstance(default, bool):
            where = f"spec {whole!r}" if whole is not None else label
            raise ValueError(f"bad value {str(v).lower()!r} for {k!r} in {where}: expected a number")
    opt = factory(**kwargs)
    if not isinstance(opt, Optimizer):
        raise TypeError(f"{label} returned a {type(opt).__name__}, not a diyopt Optimizer")
    return opt


def _default_of(factory: Any, key: str) -> Any:
    defaults = getattr(factory, "defaults", None)  # an elementwise rule
    if isinstance(defaults, dict):
        return defaults.get(key)
    try:
        p = inspect.signature(factory).parameters.get(key)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is p.empty else p.default


def _known_settings(factory: Any) -> list[str] | None:
    """The keyword arguments a factory takes, or None when it takes ``**kwargs`` (anything goes)."""
    defaults = getattr(factory, "defaults", None)  # an elementwise rule
    if isinstance(defaults, dict):
        return list(defaults)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# ---------------------------------------------------------------- a user's file


def load_file(path: str):
    """Import a Python file by path; a failure is one ``ImportError`` line naming the file and line."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"no such file: {path}")
    name = "diyopt_user_" + os.path.splitext(os.path.basename(full))[0].replace("-", "_").replace(".", "_")
    module_spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise ImportError(f"cannot import {path}, line {e.lineno}: SyntaxError: {e.msg}") from None
    except (Exception, SystemExit) as e:  # SystemExit: sys.exit() at import must not end diyopt with 0
        sys.modules.pop(name, None)
        if interrupt_in(e) is not None:  # Ctrl-C inside an extension the file imports (pybind11's wrap)
            raise KeyboardInterrupt(f"interrupted while importing {path}") from None
        frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == full]
        line = f", line {frames[-1].lineno}" if frames else ""
        if isinstance(e, SystemExit):
            raise ImportError(
                f"cannot import {path}{line}: it calls sys.exit({e.code!r}) at import; a rule or "
                "loss file should only define things"
            ) from None
        message = " ".join(str(e).split())[:500]
        raise ImportError(f"cannot import {path}{line}: {type(e).__name__}: {message}") from None
    except KeyboardInterrupt:
        sys.modules.pop(name, None)
        raise KeyboardInterrupt(f"interrupted while importing {path}") from None
    USER_FILES[full] = path
    return module


#: The users' files loaded so far (absolute path -> the path as given): an error raised inside one is
#: reported on the command line as that file and line (see diyopt.cli.user_code_line).
USER_FILES: dict[str, str] = {}


def getattr_from_file(path: str, attr: str) -> Any:
    module = load_file(path)
    if not hasattr(module, attr):
        public = [n for n in vars(module) if not n.startswith("_")]
        raise ValueError(unknown_name(f"name in {path}:", attr, public))
    return getattr(module, attr)


def split_specs(text: str) -> list[str]:
    """Split the CLI's ``--optimizers`` list on commas; a piece that starts with ``name=`` continues the
    previous spec's settings: ``"sgd,adam:lr=1e-2,betas=0.8/0.99,my.py:rule"`` ->
    ``["sgd", "adam:lr=1e-2,betas=0.8/0.99", "my.py:rule"]``."""
    import re

    specs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if specs and re.match(r"^[A-Za-z_]\w*\s*=", piece):
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    if not specs:
        raise ValueError(f"no optimizer in {text!r}")
    return specs


def names() -> list[str]:
    """The names of the built-in optimizers, sorted."""
    return sorted(BUILTINS)


def resolve_optimizers(optimizers: Mapping[str, Any] | Sequence[Any]) -> dict[str, tuple[Any, dict, str | None]]:
    """``{label: (Optimizer or torch.optim class, torch kwargs, spec string or None)}`` from what
    :func:`compare` accepts."""
    if isinstance(optimizers, str):
        optimizers = split_specs(optimizers)
    if isinstance(optimizers, Mapping):
        items = list(optimizers.items())
    else:
        items = [(_label(o), o) for o in optimizers]
    if not items:
        raise ValueError("optimizers is empty: give at least one")
    out: dict[str, tuple[Any, dict, str | None]] = {}
    for label, o in items:
        if label in out:
            raise ValueError(f"optimizer label {label!r} appears twice; give a dict with distinct labels")
        out[str(label)] = (*_resolve_one(o), o if isinstance(o, str) else None)
    return out


_KINDS = "a diyopt Optimizer, a spec string, a torch.optim.Optimizer class or a (class, kwargs) pair"


def _resolve_one(o: Any) -> tuple[Any, dict]:
    if isinstance(o, str):
        return get(o), {}
    if isinstance(o, Optimizer):
        return o, {}
    if isinstance(o, type) and issubclass(o, torch.optim.Optimizer):
        return o, {}
    if (
        isinstance(o, tuple)
        and len(o) == 2
        and isinstance(o[0], type)
        and issubclass(o[0], torch.optim.Optimizer)
        and isinstance(o[1], Mapping)
    ):
        return o[0], dict(o[1])
    raise TypeError(f"an optimizer must be {_KINDS}, got {type(o).__name__}")


def _label(o: Any) -> str:
    if isinstance(o, str):
        return o
    if isinstance(o, Optimizer) and o.build is not None:
        return getattr(o.build, "__name__", "optimizer")
    if isinstance(o, type):
        return o.__name__
    if isinstance(o, tuple) and o and isinstance(o[0], type):
        return o[0].__name__
    if isinstance(o, Optimizer):
        raise TypeError("cannot name an optimizer built without a factory; pass a dict {label: optimizer}")
    raise TypeError(f"an optimizer must be {_KINDS}, got {type(o).__name__}")


def describe(opt: Any, kwargs: dict, spec: str | None) -> dict:
    """What settings.json records of an optimizer: the spec it came from, its factory, its settings."""
    if isinstance(opt, Optimizer):
        name = getattr(opt.build, "__name__", None) if opt.build is not None else None
        hyper = opt.hyperparams or {}
    else:
        name, hyper = f"{opt.__module__}.{opt.__qualname__}", kwargs
    return {"spec": spec, "optimizer": name or "custom", "hyperparams": {k: _jsonable(v) for k, v in hyper.items()}}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return repr(v)
