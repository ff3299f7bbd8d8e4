"""The folder of a CLI fault test (tests/test_faults.py, tests/test_bad_input.py): the row's files written,
an earlier diyopt output planted beside them, and a snapshot to compare after the run: a refused run
writes nothing, removes nothing and leaves no temp file.

A row's ``files`` are ``{name: content}``: text, bytes, ``content(t) -> bytes`` (a file made by a real
diyopt run in ``t``), or a name ending in ``/`` for an empty folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from diyopt._util.files import MANIFEST


def write_files(t: Path, files: dict) -> None:
    for name, content in files.items():
        path = t / name
        if name.endswith("/"):
            path.mkdir()
            continue
        if callable(content):
            content = content(t)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def plant_output(out: Path, ours: dict[str, str], users: dict[str, str] | None = None) -> None:
    """An earlier diyopt output in ``out``: ``ours`` listed in diyopt's manifest, ``users`` beside them."""
    out.mkdir(exist_ok=True)
    for name, text in {**ours, **(users or {})}.items():
        (out / name).write_text(text)
    (out / MANIFEST).write_text(json.dumps({"written_by": "diyopt", "files": list(ours)}) + "\n")


def snapshot(t: Path) -> dict:
    """Every path below ``t`` and the bytes of each file (None for a folder)."""
    return {str(p.relative_to(t)): (p.read_bytes() if p.is_file() else None) for p in sorted(t.rglob("*"))}


def prepare(t: Path, files: dict) -> dict:
    """The row's files, and in ``t/out`` an earlier diyopt output with the user's notes beside it; the
    snapshot of it all."""
    write_files(t, files)
    plant_output(t / "out", {"table.md": "earlier results\n"}, users={"notes.txt": "the user's\n"})
    return snapshot(t)
