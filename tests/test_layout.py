"""The house's rules (README, "Layout"): one-way imports, no cycles, no public name shadowing a module,
no folder reaching into another folder's private names, every public name importable."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import diyopt

SRC = Path(diyopt.__file__).parent


def _packages():
    yield diyopt
    for info in pkgutil.walk_packages(diyopt.__path__, "diyopt."):
        if info.ispkg:
            yield importlib.import_module(info.name)


@pytest.mark.parametrize("package", list(_packages()), ids=lambda p: p.__name__)
def test_no_public_name_shadows_a_module(package):
    """``import diyopt.X.y as m`` gives the module y, never a function of the same name."""
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("__"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        attr = package.__dict__.get(info.name, module)
        assert attr is module, f"{package.__name__}.{info.name} is {attr!r}, not the module of that name"


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def test_no_private_names_imported_across_folders():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        importer = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("diyopt."):
                if _folder(node.module + ".x") == _folder(importer + ".x") and _folder(importer + ".x"):
                    continue  # inside one folder, its private parts are its own
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    bad.append(f"{importer}:{node.lineno} imports {private} from {node.module}")
    assert not bad, "\n".join(bad)


def test_every_public_name_is_importable():
    for name in diyopt.__all__:
        assert getattr(diyopt, name) is not None, name
    assert sorted(diyopt.__all__) == sorted(set(diyopt.__all__))


def test_import_contracts_are_kept():
    """import-linter's contracts (pyproject.toml): the layers, private modules, no cycles between siblings."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed: `make test` installs import-linter with the test extra")
    proc = subprocess.run(
        [exe, "--no-cache"],
        capture_output=True,
        text=True,
        cwd=SRC.parent.parent,
        timeout=300,
        env={"PYTHONPATH": str(SRC.parent), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def test_import_diyopt_does_not_load_matplotlib():
    """``import diyopt`` stays light: figures load on first use (matplotlib costs half a second)."""
    code = "import sys, diyopt; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_the_readme_draws_every_folder_and_only_real_ones():
    """The README's layout drawing names each folder and top-level module of src/diyopt, and nothing else."""
    import re

    readme = (SRC.parent.parent / "README.md").read_text()
    drawing = readme.split("## Layout", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    drawn = set(re.findall(r"\b([a-z_]+(?:/|\.py))", drawing)) - {"src/", "diyopt/"}
    real = {p.name + "/" for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    real |= {p.name for p in SRC.glob("*.py") if p.name != "__main__.py"}
    nested = {p.parent.name + "/" for p in SRC.glob("*/*/__init__.py")}  # may be drawn inside their folder
    assert real <= drawn, f"not drawn: {sorted(real - drawn)}"
    assert drawn <= real | nested, f"drawn but not in src/diyopt: {sorted(drawn - real - nested)}"
