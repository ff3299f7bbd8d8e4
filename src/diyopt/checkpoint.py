"""Checkpoints: save a fit mid-run and resume it bit for bit; safe loading; atomic writes.

A checkpoint is one file written by ``torch.save`` and read by ``torch.load(weights_only=True)``, so it
holds only tensors and plain Python containers -- never code:

    {"format": "diyopt-checkpoint", "version": 1,
     "step": k,                              # updates taken so far
     "params": {name: Tensor},              # by NAME, whatever layout the loop used
     "state_leaves": [Tensor, ...],          # the optimizer state's leaves ...
     "state_structure": "TreeSpec(...)",     # ... and its shape, rebuilt from optimizer.init as template
     "losses": Tensor,                       # the loss history so far, one per step
     "rng": {"torch": ..., "numpy": ..., "python": ...},
     "fingerprint": {"lr": "0.01", ...}}     # the settings; resuming with others is refused

Writes are atomic: temp file in the same folder, flush, fsync, ``os.replace``, fsync the folder. A kill
at any instant leaves either the previous checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils import _pytree as pytree

FORMAT = "diyopt-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unsafe, torn, from other settings); one line, names the file."""


# ---------------------------------------------------------------- atomic file and folder writes


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)  # make the rename itself durable


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yield a temp folder next to ``out``; on success it replaces ``out``, on error it is removed.

    The temp folder is made on entry, so an output location that cannot be written fails *before* any
    work is done, and a failure later leaves ``out`` as it was.
    """
    out = Path(out)
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"cannot write to {out}: {parent} is not a folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot write to {out}: it exists and is not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise OSError(f"cannot write to {out}: {e.strerror or e}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    _fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- RNG states as tensors


def capture_rng() -> dict:
    """The torch, numpy and Python RNG states, as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: Mapping) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ---------------------------------------------------------------- settings fingerprint


def describe(value: Any) -> str:
    """A short, stable text for a setting: numbers by repr, tensors by their values, functions by name."""
    if isinstance(value, Tensor):
        return describe(value.tolist()) if value.numel() <= 16 else f"tensor{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return "/".join(describe(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if callable(value):
        return getattr(value, "__qualname__", None) or type(value).__name__
    return str(value)


def fingerprint(optimizer: Any, steps: int, params: Mapping[str, Tensor], **settings: Any) -> dict[str, str]:
    """The settings that must match for a resume to continue the same run."""
    build = getattr(optimizer, "build", None)
    fp = {"optimizer": getattr(build, "__name__", None) or type(optimizer).__name__}
    fp.update({k: describe(v) for k, v in (getattr(optimizer, "hyperparams", None) or {}).items()})
    fp["steps"] = str(steps)
    fp["params"] = ", ".join(f"{k}:{tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}"
                             for k, v in params.items())
    fp.update({k: describe(v) for k, v in settings.items() if v is not None})
    return fp


def check_fingerprint(saved: Mapping[str, str], now: Mapping[str, str], path: str | Path) -> None:
    """Refuse to resume a run whose settings changed: ``checkpoint was made with lr=0.01, now lr=0.1``."""
    diffs = [f"{k}={saved.get(k, '(unset)')}, now {k}={now.get(k, '(unset)')}"
             for k in list(saved) + [k for k in now if k not in saved] if saved.get(k) != now.get(k)]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: checkpoint was made with " + "; ".join(diffs)
                              + " (use the same settings, or a new checkpoint file)")


# ---------------------------------------------------------------- save and load


def save(path: str | Path, *, params: Mapping[str, Tensor], state: Any, step: int, losses: Tensor,
         fingerprint: Mapping[str, str], extra: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint atomically. ``state`` is any pytree of tensors (NamedTuples, tuples, dicts)."""
    leaves, spec = pytree.tree_flatten(state)
    payload = {
        "format": FORMAT, "version": VERSION, "step": int(step),
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "state_leaves": [x.detach().cpu() if isinstance(x, Tensor) else x for x in leaves],
        "state_structure": str(spec),
        "losses": losses.detach().cpu(),
        "rng": capture_rng(),
        "fingerprint": dict(fingerprint),
        "extra": dict(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


def load(path: str | Path) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: a file that would run code is refused."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n|$)", str(e))
        reason = found.group(1).strip() if found else " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: refused to load, not a plain-data checkpoint: torch.load("
                              f"weights_only=True) found {reason}") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a diyopt checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported "
                              f"(this diyopt reads version {VERSION})")
    return payload


def restore_state(payload: Mapping, template: Any, path: str | Path = "checkpoint") -> Any:
    """Rebuild the optimizer state from the saved leaves, with ``template = optimizer.init(params)``
    giving the structure (NamedTuple classes included), device and dtype."""
    t_leaves, spec = pytree.tree_flatten(template)
    leaves = payload["state_leaves"]
    if str(spec) != payload["state_structure"] or len(leaves) != len(t_leaves):
        raise CheckpointError(f"{path}: the saved optimizer state does not fit this optimizer "
                              f"({len(leaves)} saved tensors, {len(t_leaves)} expected)")
    out = []
    for i, (saved, t) in enumerate(zip(leaves, t_leaves)):
        if isinstance(t, Tensor):
            if not isinstance(saved, Tensor) or saved.shape != t.shape:
                raise CheckpointError(f"{path}: optimizer state tensor {i} has shape "
                                      f"{tuple(getattr(saved, 'shape', ()))}, expected {tuple(t.shape)}")
            saved = saved.to(device=t.device, dtype=t.dtype)
        out.append(saved)
    return pytree.tree_unflatten(out, spec)


def restore_params(payload: Mapping, template: Mapping[str, Tensor], path: str | Path = "checkpoint") -> dict:
    """The saved params by name, checked against ``template`` (names, shapes) and cast to its dtype/device."""
    saved = payload["params"]
    if list(saved) != list(template):
        raise CheckpointError(f"{path}: saved params {list(saved)} differ from {list(template)}")
    out = {}
    for k, t in template.items():
        if saved[k].shape != t.shape:
            raise CheckpointError(f"{path}: param {k!r} has shape {tuple(saved[k].shape)}, expected {tuple(t.shape)}")
        out[k] = saved[k].to(device=t.device, dtype=t.dtype)
    return out
