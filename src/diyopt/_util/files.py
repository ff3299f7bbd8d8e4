"""Writing outputs safely: one helper for every file and folder diyopt writes.

The rules, from the tools people trust with their data (git, rsync, databases):

- **Never delete what diyopt did not write.** An output folder gets a small manifest
  (``.diyopt-output.json``) listing the files diyopt put there. Writing into an existing folder replaces
  only those files (and removes the ones of an earlier run that this run no longer writes); a user's own
  files beside them are left alone. A file diyopt would write that already exists and is not in the
  manifest is refused, before any work, with a message saying how to proceed.
- **Complete or not at all.** Every file is written to a temp file in its own folder, flushed, fsynced
  and renamed into place (then the folder is fsynced); a folder's files are first written to a temp
  staging folder, so a failure or a kill at any instant leaves the old outputs or the new ones.
- **Nothing left behind.** Temp names carry the writer's process id (``.NAME.diyopt-PID-XXXX.tmp``); on
  error the temp is removed, and the next command writing the same output removes the temps of writers
  that are no longer running (a SIGKILL leaves no chance to clean up).
- **The umask is honoured** like every other tool: ``mkstemp``/``mkdtemp`` create 0600/0700, so the
  modes are set to ``0666 & ~umask`` / ``0777 & ~umask`` (an existing file keeps its mode).
- **Strict JSON.** :func:`dumps` writes non-finite numbers as ``null`` with the reason beside them
  (``"final_loss": null, "final_loss_nonfinite": "inf"``), which every JSON parser reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from diyopt.errors import Busy

MANIFEST = ".diyopt-output.json"
_TMP = re.compile(r"^\.(?P<name>.*)\.diyopt-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")


# ---------------------------------------------------------------- modes and temp names


def umask() -> int:
    """The process's umask, read without changing it (Linux ``/proc``); else by setting and restoring."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _prefix(name: str) -> str:
    return f".{name}.diyopt-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temp files and folders that killed diyopt processes left in ``folder`` (for the output
    ``name`` only, when given). A temp whose writer still runs is left alone. Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.match(entry.name)
        if not m or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


_swept: set[tuple[str, str]] = set()


def _sweep_once(folder: Path, name: str) -> None:
    """:func:`sweep_temps` once per output per process (a checkpoint saved every step lists no folder)."""
    key = (os.path.abspath(folder), name)
    if key not in _swept:
        sweep_temps(folder, name)
        _swept.add(key)


def fsync_dir(folder: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- one file


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix, and
    no temp file. A new file gets ``0666 & ~umask``; an existing one keeps its mode."""
    path = Path(path)
    folder = path.parent
    if isinstance(data, str):
        data = data.encode("utf-8")
    _sweep_once(folder, path.name)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path.name), suffix=".tmp", dir=folder)
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)  # make the rename itself durable
    return path


def dumps(obj: Any) -> str:
    """Strict JSON text (``allow_nan=False``) of ``obj`` after :func:`strict`, indented, one trailing newline."""
    return json.dumps(strict(obj), indent=2, allow_nan=False, default=str) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, dumps(obj))


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None``; in a dict, the key ``K`` of such a value
    (or of a list holding some) gets ``K_nonfinite`` beside it: ``"inf"``, or ``{"index": "nan", ...}``."""
    if isinstance(obj, dict):
        out: dict = {}
        for k, v in obj.items():
            value, note = _strict(v)
            out[k] = value
            if note is not None:
                out[f"{k}_nonfinite"] = note
        return out
    return _strict(obj)[0]


def _strict(v: Any) -> tuple[Any, Any]:
    if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
        return v, None
    if isinstance(v, float) or type(v).__name__.startswith("float"):  # numpy floats too
        try:
            f = float(v)
        except (TypeError, ValueError):
            return v, None
        return (f, None) if math.isfinite(f) else (None, "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(v, dict):
        return strict(v), None
    if isinstance(v, (list, tuple)):
        items, notes = [], {}
        for i, x in enumerate(v):
            value, note = _strict(x)
            items.append(value)
            if note is not None:
                if isinstance(note, dict):
                    notes.update({f"{i}.{j}": n for j, n in note.items()})
                else:
                    notes[str(i)] = note
        return items, (notes or None)
    return v, None


# ---------------------------------------------------------------- a folder of outputs


def owned_files(folder: str | os.PathLike) -> set[str]:
    """The files (relative paths) diyopt's manifest in ``folder`` says it wrote; empty without one."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        files = manifest.get("files", []) if isinstance(manifest, dict) else []
        # Only plain relative paths inside the folder: a crafted manifest must not point diyopt elsewhere.
        return {
            f
            for f in files
            if isinstance(f, str) and f and not os.path.isabs(f) and ".." not in Path(f).parts and f != MANIFEST
        }
    except (OSError, ValueError):
        return set()


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike, *, names: Iterable[str] = (), kind: str = "output", flag: str = "--out"
) -> Iterator[Path]:
    """``with output_folder(out) as tmp: write files into tmp`` -- then they are published into ``out``.

    ``out`` may be new (the staging folder is renamed into place: atomic), an earlier diyopt output, or
    any folder (``.``, a project folder): diyopt's files are moved in one by one, each atomically, and
    the manifest is written last; other files are never touched. ``names`` are the files the command
    will write: a clash with a file diyopt did not write is refused here, before any work. The staging
    folder is made on entry, so an unwritable location also fails before any work. On error it is removed
    and ``out`` is as it was.
    """
    out = Path(out)
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"cannot write to {out}: {parent} is not a folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot write to {out}: it exists and is not a folder")
    exists = out.is_dir()
    if exists:
        _refuse_clashes(out, names, owned_files(out), flag)
    sweep_temps(parent if str(parent) else ".", out.name)  # staging folders of killed runs, beside ...
    try:
        if exists:
            sweep_temps(out)  # ... and inside the output
            tmp = Path(tempfile.mkdtemp(prefix=_prefix("staging"), suffix=".tmp", dir=out))
        else:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=_prefix(out.name), suffix=".tmp", dir=parent))
        os.chmod(tmp, 0o777 & ~umask())
    except OSError as e:
        raise OSError(f"cannot write to {out}: {e.strerror or e}") from None
    try:
        yield tmp
        _publish(tmp, out, kind, flag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_clashes(out: Path, names: Iterable[str], own: set[str], flag: str) -> None:
    clash = [n for n in names if (out / n).exists() and n not in own]
    if clash:
        raise FileExistsError(
            f"{out} already holds {', '.join(sorted(clash))}, which diyopt did not write; "
            f"move them away or choose another {flag}"
        )


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _publish(tmp: Path, out: Path, kind: str, flag: str) -> None:
    new = [f for f in _files(tmp) if f != MANIFEST]
    manifest = {"written_by": "diyopt", "kind": kind, "files": new}
    if not out.exists():
        (tmp / MANIFEST).write_text(dumps(manifest))
        try:
            os.replace(tmp, out)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            out.mkdir(exist_ok=True)  # made meanwhile by someone else: publish into it
        else:
            fsync_dir(out.parent)
            return
    own = owned_files(out)
    _refuse_clashes(out, new, own, flag)
    for rel in new:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, dest)
    for rel in sorted(own - set(new)):  # an earlier run's file this run does not write (ours alone)
        with contextlib.suppress(OSError):
            (out / rel).unlink()
    atomic_write(out / MANIFEST, dumps(manifest))
    shutil.rmtree(tmp, ignore_errors=True)


def write_folder(out: str | os.PathLike, write: Callable[[Path], Any], **options: Any) -> Path:
    """``write(tmp)`` inside :func:`output_folder`; returns ``out``."""
    with output_folder(out, **options) as tmp:
        write(tmp)
    return Path(out)


# ---------------------------------------------------------------- one run at a time on a checkpoint


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str = "checkpoint") -> Iterator[None]:
    """Hold an OS-level lock (``filelock``, ``flock`` on ``PATH.lock``) for the ``with`` body.

    A second holder is refused at once with the first one's process id. The lock file is made in the
    checkpoint's folder, so a missing or unwritable folder fails here, before the first step; it is
    removed on release.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {what} {path}: folder {folder} does not exist")
    lock_path = f"{path}.lock"

    held = {}

    def mark(fd: int) -> None:  # who holds it, for the refusal message of the next one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held["stat"] = os.fstat(fd)

    try:
        lock = FileLock(lock_path, timeout=0, on_acquired=mark)  # filelock >= 4.3
        marked = True
    except TypeError:  # an older filelock: mark through its descriptor once acquired
        lock, marked = FileLock(lock_path, timeout=0), False
    try:
        lock.acquire()
        if not marked and getattr(lock._context, "lock_file_fd", None) is not None:
            mark(lock._context.lock_file_fd)
    except Timeout:
        try:
            holder = Path(lock_path).read_text().split()[0]
            int(holder)
        except (OSError, IndexError, ValueError):
            holder = "unknown"
        raise Busy(
            f"{what} {path} is in use by another diyopt run (process {holder}); wait for it to "
            f"finish, or use another {what} file"
        ) from None
    except OSError as e:
        raise OSError(f"cannot write {what} {path}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK):
        lock.release()
        raise PermissionError(f"cannot write {what} {path}: folder {folder} is not writable")
    try:
        yield
    finally:
        # filelock keeps the file; remove it while still holding the lock (a waiter that opened it
        # meanwhile finds its inode unlinked and retries), so a finished run leaves nothing behind.
        with contextlib.suppress(OSError, KeyError):
            if os.path.samestat(os.stat(lock_path), held["stat"]):
                os.unlink(lock_path)
        lock.release()
