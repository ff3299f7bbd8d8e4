"""Checkpoints: save a fit mid-run and resume it bit for bit; safe loading; atomic writes.

A checkpoint is one file written by ``torch.save`` and read by ``torch.load(weights_only=True)``, so it
holds only tensors and plain Python containers -- never code:

    {"format": "diyopt-checkpoint", "version": 1,
     "step": k,                              # updates taken so far
     "params": {name: Tensor},              # by NAME, whatever layout the loop used; the evaluation
                                             # params where the optimizer has them (schedule-free, EMA):
     "params_are": "eval", "train_params": {name: Tensor},  # ... then also these, to resume training
     "state_leaves": [Tensor, ...],          # the optimizer state's leaves ...
     "state_structure": "TreeSpec(...)",     # ... and its shape, rebuilt from optimizer.init as template
     "losses": Tensor,                       # the loss history so far, one per step -- or
     "losses_file": {"name", "count", "dtype"},  # ... how many values of PATH.losses belong to it
     "rng": {"torch": ..., "numpy": ..., "python": ...},
     "fingerprint": {"lr": "0.01", ...}}     # the settings; resuming with others is refused

Writes are atomic: temp file in the same folder, flush, fsync, ``os.replace``, fsync the folder. A kill
at any instant leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils import _pytree as pytree

# One helper writes every output (temp in the same folder, fsync, rename, umask honoured, no temp left).
from diyopt._util.files import atomic_write, fsync_dir
from diyopt.errors import CheckpointError

FORMAT = "diyopt-checkpoint"
VERSION = 2  # 2: the loss history may live beside the file (LossFile); 1 is still read


# ---------------------------------------------------------------- atomic file and folder writes


# ---------------------------------------------------------------- RNG states as tensors


def capture_rng() -> dict:
    """The torch, numpy and Python RNG states, as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
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


def describe(value: Any, _depth: int = 0) -> str:
    """A short, stable text for a setting: numbers by repr, tensors by their values, functions by name
    and the values they close over -- so ``cosine_decay(1e-2, 4000)`` and ``cosine_decay(1e-2, 6000)``
    differ. Long texts end in a hash of the whole, so they stay short and still tell settings apart."""
    if isinstance(value, Tensor):
        text = describe(value.tolist(), _depth + 1) if value.numel() <= 16 else f"tensor{tuple(value.shape)}"
    elif isinstance(value, (tuple, list)):
        text = "/".join(describe(v, _depth + 1) for v in value[:64]) + ("/..." if len(value) > 64 else "")
    elif isinstance(value, float):
        text = repr(value)
    elif callable(value):
        text = getattr(value, "__qualname__", None) or type(value).__name__
        code, cells = getattr(value, "__code__", None), getattr(value, "__closure__", None)
        if code is not None and cells and _depth < 4:
            parts = []
            for name, cell in zip(code.co_freevars, cells):
                try:
                    parts.append(f"{name}={describe(cell.cell_contents, _depth + 1)}")
                except ValueError:  # an empty cell
                    continue
            text += f"({', '.join(sorted(parts))})"
    else:
        text = str(value)
    if len(text) > 240:
        import hashlib

        text = f"{text[:160]}...#{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    return text


def fingerprint(optimizer: Any, steps: int | None, params: Mapping[str, Tensor], **settings: Any) -> dict[str, str]:
    """The settings that must match for a resume to continue the same run.

    The step budget is not one of them: ``--resume --steps 6000`` extends a finished 4,000-step run. A
    schedule that depends on the total (``cosine_decay(lr, decay_steps)``) is part of the optimizer's
    hyperparameters, so a resume that changes it is refused, naming it. ``steps`` is accepted for
    backward compatibility and ignored.
    """
    build = getattr(optimizer, "build", None)
    fp = {"optimizer": getattr(build, "__name__", None) or type(optimizer).__name__}
    fp.update({k: describe(v) for k, v in (getattr(optimizer, "hyperparams", None) or {}).items()})
    fp["params"] = ", ".join(f"{k}:{tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}" for k, v in params.items())
    fp.update({k: describe(v) for k, v in settings.items() if v is not None})
    return fp


def check_fingerprint(saved: Mapping[str, str], now: Mapping[str, str], path: str | Path) -> None:
    """Refuse to resume a run whose settings changed: ``checkpoint was made with lr=0.01, now lr=0.1``."""
    saved = {k: v for k, v in saved.items() if k != "steps"}  # older checkpoints recorded the budget

    def short(v: Any) -> str:
        return v if isinstance(v, str) and len(v) <= 300 else f"{str(v)[:300]}..."

    diffs = [
        f"{k}={short(saved.get(k, '(unset)'))}, now {k}={short(now.get(k, '(unset)'))}"
        for k in list(saved) + [k for k in now if k not in saved]
        if saved.get(k) != now.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: checkpoint was made with "
            + "; ".join(diffs[:8])
            + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            + " (use the same settings, or a new checkpoint file)"
        )


# ---------------------------------------------------------------- save and load


def save(
    path: str | Path,
    *,
    params: Mapping[str, Tensor],
    state: Any,
    step: int,
    losses: Tensor | LossFile,
    fingerprint: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
    train_params: Mapping[str, Tensor] | None = None,
) -> None:
    """Write a checkpoint atomically. ``state`` is any pytree of tensors (NamedTuples, tuples, dicts).

    ``train_params``, for an optimizer whose evaluation params differ from its training params: then
    ``params`` are the evaluation params (what a user loads to evaluate), the file says so
    (``"params_are": "eval"``) and holds the training params beside them, which a resume continues from.

    ``losses`` is the history as one tensor (stored inside the file), or a :class:`LossFile` the caller
    has appended the new losses to: then the file records only how many of its values belong to this
    checkpoint, and a save costs O(1) in the run's length (``fit`` does this).
    """
    leaves, spec = pytree.tree_flatten(state)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "state_leaves": [x.detach().cpu() if isinstance(x, Tensor) else x for x in leaves],
        "state_structure": str(spec),
        "rng": capture_rng(),
        "fingerprint": dict(fingerprint),
        "extra": dict(extra or {}),
    }
    if train_params is not None:
        payload["params_are"] = "eval"
        payload["train_params"] = {k: v.detach().cpu() for k, v in train_params.items()}
    if isinstance(losses, LossFile):
        payload["losses_file"] = {"name": losses.path.name, "count": losses.count, "dtype": losses.dtype_name}
    else:
        payload["losses"] = losses.detach().cpu()
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


class LossFile:
    """The loss history beside a checkpoint (``PATH.losses``): raw values, appended at each save.

    Crash safety: new values are written at the offset the last checkpoint ends at and fsynced *before*
    the checkpoint that counts them is renamed into place; a kill in between leaves values past the
    count, which :func:`load` ignores and the next save overwrites. Bitwise exact: the raw bytes.
    """

    def __init__(self, checkpoint: str | Path, count: int = 0, dtype: torch.dtype | None = None):
        self.path = Path(f"{checkpoint}.losses")
        self.count = count
        self.dtype = dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def append(self, values: Tensor) -> None:
        """Write ``values`` after the first ``count`` ones (dropping anything past them) and fsync."""
        values = values.detach().reshape(-1).cpu().contiguous()
        if self.dtype is None:
            self.dtype = values.dtype
        values = values.to(self.dtype)
        size = values.element_size()
        new = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            os.pwrite(fd, values.view(torch.uint8).numpy().tobytes(), self.count * size)
            os.ftruncate(fd, (self.count + len(values)) * size)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)
        self.count += len(values)


_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_ENTRIES = 100_000  # the most containers and values a checkpoint's plain-data parts may hold
MAX_DEPTH = 16


def load(path: str | Path) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: a file that would run code is refused,
    and so is one whose contents do not have a checkpoint's types and sizes (see :func:`validate`)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n|$)", str(e))
        reason = found.group(1).strip() if found else " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"{path}: refused to load, not a plain-data checkpoint: torch.load(weights_only=True) found {reason}"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, MemoryError, RecursionError) as e:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a diyopt checkpoint")
    if payload.get("version") not in (1, VERSION):
        version = payload.get("version")
        raise CheckpointError(
            f"{path}: checkpoint version {version if isinstance(version, int) else '?'} "
            f"is not supported (this diyopt reads versions 1 and {VERSION})"
        )
    validate(payload, path)
    if "losses_file" in payload:
        payload["losses"] = _read_losses(path, payload)
    return payload


def validate(payload: dict, path: str | Path = "checkpoint") -> None:
    """Check a loaded checkpoint's schema: every field has its type, and the plain-data parts are bounded
    (at most ``MAX_ENTRIES`` values, ``MAX_DEPTH`` deep), so nothing unbounded is ever walked or formatted
    into a message (a 19 KB "billion laughs" list would expand to gigabytes)."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a valid diyopt checkpoint: {what}")

    def kind(v: Any) -> str:
        return type(v).__name__

    for key in ("step", "params", "state_leaves", "state_structure", "rng", "fingerprint"):
        if key not in payload:
            raise bad(f"the field {key!r} is missing")
    if "losses" not in payload and "losses_file" not in payload:
        raise bad("the field 'losses' is missing")
    step = payload["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' must be a count, got a {kind(step)}")
    for key in ("params", "train_params") if "train_params" in payload else ("params",):
        params = payload[key]
        if not isinstance(params, dict) or not params and step:
            raise bad(f"'{key}' must map names to tensors, got a {kind(params)}")
        for k, v in params.items():
            if not isinstance(k, str) or not isinstance(v, Tensor):
                raise bad(f"'{key}' must map names to tensors, got {kind(k)} -> {kind(v)}")
    leaves = payload["state_leaves"]
    if not isinstance(leaves, list) or len(leaves) > MAX_ENTRIES:
        raise bad(f"'state_leaves' must be a list of tensors, got a {kind(leaves)}")
    for i, v in enumerate(leaves):
        if not isinstance(v, (Tensor, int, float, bool, type(None))) and not (isinstance(v, str) and len(v) < 1000):
            raise bad(f"optimizer state value {i} is a {kind(v)}, expected a tensor or a number")
    if not isinstance(payload["state_structure"], str) or len(payload["state_structure"]) > 10 * MAX_ENTRIES:
        raise bad("'state_structure' must be a short text")
    fp = payload["fingerprint"]
    if not isinstance(fp, dict) or len(fp) > 1000:
        raise bad(f"'fingerprint' must map setting names to texts, got a {kind(fp)}")
    for k, v in fp.items():
        if not isinstance(k, str) or not isinstance(v, str) or len(k) > 200 or len(v) > 100_000:
            raise bad(f"'fingerprint' must map setting names to short texts, got {kind(k)} -> {kind(v)}")
    if "losses" in payload:
        losses = payload["losses"]
        if not isinstance(losses, Tensor) or losses.dim() != 1 or not losses.is_floating_point():
            raise bad(f"'losses' must be a 1-D float tensor, got a {kind(losses)}")
        if len(losses) != step:
            raise bad(f"'losses' holds {len(losses)} values for step {step}")
    else:
        info = payload["losses_file"]
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("name"), str)
            or "/" in info["name"]
            or info.get("count") != step
            or info.get("dtype") not in _DTYPES
        ):
            raise bad("'losses_file' must name the history file, its dtype, and count one value per step")
    rng = payload["rng"]
    try:
        ok = (
            isinstance(rng, dict)
            and isinstance(rng["torch"], Tensor)
            and isinstance(rng["numpy"], dict)
            and isinstance(rng["numpy"]["keys"], Tensor)
            and isinstance(rng["numpy"]["kind"], str)
            and all(isinstance(rng["numpy"][k], (int, float)) for k in ("pos", "has_gauss", "gauss"))
            and isinstance(rng["python"], dict)
            and isinstance(rng["python"]["internal"], Tensor)
            and isinstance(rng["python"]["version"], int)
            and isinstance(rng["python"]["gauss_next"], (float, type(None)))
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise bad("'rng' does not hold the torch, numpy and Python generator states")
    _bounded(payload.get("extra", {}), bad)


def _bounded(obj: Any, bad) -> None:
    """Walk plain data without expanding shared references more than ``MAX_ENTRIES`` times in all."""
    stack, seen = [(obj, 0)], 0
    while stack:
        v, depth = stack.pop()
        seen += 1
        if seen > MAX_ENTRIES or depth > MAX_DEPTH:
            raise bad(f"'extra' is nested deeper than {MAX_DEPTH} or holds more than {MAX_ENTRIES} values")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for kv in v.items() for x in kv)
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str) and len(v) > 100_000:
            raise bad("'extra' holds a text longer than 100,000 characters")


def _read_losses(path: Path, payload: dict) -> Tensor:
    info = payload["losses_file"]
    dtype = _DTYPES[info["dtype"]]
    file = LossFile(path).path  # beside the checkpoint, named after it (as sqlite's -wal file is)
    size = torch.empty((), dtype=dtype).element_size()
    try:
        with open(file, "rb") as f:
            data = f.read(info["count"] * size)
    except OSError as e:
        raise CheckpointError(f"{path}: its loss history {file} cannot be read ({e.strerror or e})") from None
    if len(data) != info["count"] * size:
        raise CheckpointError(
            f"{path}: its loss history {file} holds {len(data) // size} values, expected {info['count']}"
        )
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).clone()
        if data
        else torch.empty(0, dtype=dtype)
    )


def restore_state(payload: Mapping, template: Any, path: str | Path = "checkpoint") -> Any:
    """Rebuild the optimizer state from the saved leaves, with ``template = optimizer.init(params)``
    giving the structure (NamedTuple classes included), device and dtype."""
    t_leaves, spec = pytree.tree_flatten(template)
    leaves = payload["state_leaves"]
    if str(spec) != payload["state_structure"] or len(leaves) != len(t_leaves):
        raise CheckpointError(
            f"{path}: the saved optimizer state does not fit this optimizer "
            f"({len(leaves)} saved tensors, {len(t_leaves)} expected)"
        )
    out = []
    for i, (saved, t) in enumerate(zip(leaves, t_leaves)):
        if isinstance(t, Tensor):
            if not isinstance(saved, Tensor) or saved.shape != t.shape:
                raise CheckpointError(
                    f"{path}: optimizer state tensor {i} has shape "
                    f"{tuple(getattr(saved, 'shape', ()))}, expected {tuple(t.shape)}"
                )
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
