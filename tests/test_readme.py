"""Every code block of README.md runs as written (issue 10, bug 6): a README that drifts fails ``make test``.

Each fenced block is one test, run in a fresh process in a temporary folder:

- ``python`` blocks run with ``python -c``. A block whose first line is ``# NAME.py`` is a file the README
  asks the reader to save: it is written into the folder before any block runs, so other blocks and
  commands can use it (``from my_rules import my_rule``, ``diyopt check my_rules.py:my_rule``).
- ``bash`` (and unlabelled) blocks run line by line: a line that starts with ``diyopt`` runs as
  ``python -m diyopt.cli ...`` and must exit 0, with ``--steps`` capped at 50 and ``--seeds`` at 2 so the
  suite stays fast (the command is otherwise as written). ``make``, ``source``, ``pip`` and ``torchrun``
  lines are set-up this test cannot repeat inside ``make test``, and are skipped. Any other line fails,
  so a new kind of command is handled here on purpose rather than skipped by accident.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import diyopt

README = Path(__file__).parents[1] / "README.md"
SKIPPED = ("make", "source", "pip", "torchrun")
CAPS = {"--steps": 50, "--seeds": 2}


def blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line number, language, code)`` of every fenced block (```lang ... ```)."""
    out = []
    for m in re.finditer(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", text, flags=re.S | re.M):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1) or "bash", m.group(2)))
    return out


BLOCKS = blocks(README.read_text(encoding="utf-8"))
FILES = {
    m.group(1): code
    for _, lang, code in BLOCKS
    if lang == "python" and (m := re.match(r"#\s*([\w.-]+\.py)\s*\n", code))
}


def env() -> dict:
    src = str(Path(diyopt.__file__).parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore",
    }


@pytest.fixture
def folder(tmp_path):
    for name, code in FILES.items():
        (tmp_path / name).write_text(code)
    return tmp_path


def _needs_nist(code: str) -> bool:
    return "nist" in code.lower() and not (diyopt.nist.nist_dir() / "Misra1a.dat").exists()


def capped(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a in CAPS and out[i + 1].isdigit():
            out[i + 1] = str(min(int(out[i + 1]), CAPS[a]))
    return out


def test_readme_has_blocks_of_both_kinds():
    langs = [lang for _, lang, _ in BLOCKS]
    assert langs.count("python") >= 4 and langs.count("bash") >= 3
    assert "my_rules.py" in FILES  # the rule file the CLI examples load


@pytest.mark.parametrize("line, lang, code", BLOCKS, ids=[f"README.md:{n}-{lang}" for n, lang, _ in BLOCKS])
def test_readme_block_runs(folder, line, lang, code):
    if _needs_nist(code):
        pytest.skip(f"no NIST files in {diyopt.nist.nist_dir()}")
    where = f"README.md:{line}"
    if lang == "text":  # a drawing, not code: tests/test_layout.py checks the layout drawing against the folders
        return
    if lang == "python":
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=folder, env=env(), capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{where}: python block failed:\n{proc.stderr[-3000:]}"
        return
    assert lang in ("bash", "sh", "console"), f"{where}: a {lang!r} block: teach tests/test_readme.py to run it"
    ran = 0
    for command in filter(None, (c.strip() for c in code.splitlines())):
        argv = shlex.split(command, comments=True)
        if not argv or argv[0] in SKIPPED:
            continue
        assert argv[0] == "diyopt", f"{where}: cannot run {command!r}; teach tests/test_readme.py about it"
        proc = subprocess.run(
            [sys.executable, "-m", "diyopt.cli", *capped(argv[1:])],
            cwd=folder,
            env=env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{where}: {command!r} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        ran += 1
    if lang == "bash" and "diyopt" in code:
        assert ran, f"{where}: no command ran"
