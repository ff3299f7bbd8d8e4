"""One self-contained HTML page from a ``diyopt compare`` output folder: ``diyopt report DIR``.

The page embeds every figure as a base64 PNG, renders each ``table.csv`` as an HTML table, and shows the
settings and versions from ``settings.json``; it needs no other file and no network. A folder written by
:func:`diyopt.analysis.save_all` (one sub-folder per problem, performance profiles on top) gives one
section per problem after the profiles.

When every figure has loaded, the page's script sets ``data-figures="ok"`` on ``<body>`` (``"missing"``
if one failed) and prefixes the title with ``[figures ok]`` -- what the browser test reads.

Rendering uses jinja2 (a dependency of torch itself, and of the ``[report]`` extra) with autoescaping on.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from pathlib import Path
from typing import Any

# Figures in the order a reader wants them; any other PNG follows, alphabetically.
_FIGURE_ORDER = [
    "matrix.png",
    "profile_attempts.png",
    "profile_steps_to_target.png",
    "profile_seconds_to_target.png",
    "performance_profile_steps.png",
    "performance_profile_seconds.png",
    "loss_vs_step.png",
    "loss_vs_time.png",
    "paths.png",
]
_CAPTIONS = {
    # a `diyopt bench` folder (results.csv, manifest.json)
    "matrix.png": "Tasks × optimizers: the fraction of studies that solved the task; text: median attempts.",
    "profile_attempts.png": "Performance profile, cost = attempts (trials to the first success); "
    "ρ(τ): the fraction of tasks within τ times the best optimizer's cost.",
    "profile_steps_to_target.png": "Performance profile, cost = steps to the target.",
    "profile_seconds_to_target.png": "Performance profile, cost = seconds to the target (AlgoPerf's time-to-result).",
    "performance_profile_steps.png": "Dolan–Moré performance profile, cost = steps to reach the tolerance: "
    "ρ(τ) is the fraction of instances solved within τ times the best cost.",
    "performance_profile_seconds.png": "The same profile with cost = wall-clock seconds to the tolerance.",
    "loss_vs_step.png": "Loss against step: the median over seeds, the band spans min to max.",
    "loss_vs_time.png": "Loss against wall-clock time (median over seeds).",
    "paths.png": "Optimizer paths over loss contours; seed 0 bold, known minimizers as stars.",
}
_COLUMNS = [
    ("rank", "rank"),
    ("optimizer", "optimizer"),
    ("final_loss", "final loss (median)"),
    ("final_loss_min", "min"),
    ("final_loss_max", "max"),
    ("final_gap", "loss − f* (median)"),
    ("distance", "distance to optimum"),
    ("reached", "reached tol"),
    ("steps_to_tol", "steps to tol"),
    ("seconds_to_tol", "seconds to tol"),
    ("seconds", "seconds"),
]


def write_report(directory: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write the HTML report for ``directory`` to ``out`` (default ``directory/report.html``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such folder: {directory}")
    settings = _read_json(directory / "settings.json")
    # Sub-folders in the order the problems were given (save_all records it), others after, by name.
    order = {name: i for i, name in enumerate(settings.get("folders") or [])}
    subdirs = sorted(
        (p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: (order.get(p.name, len(order)), p.name),
    )
    sections = [s for s in [_section(directory, top=True)] if s is not None]
    sections += [s for d in subdirs if (s := _section(d, top=False)) is not None]
    if not sections:
        raise ValueError(
            f"{directory} holds no diyopt comparison (no settings.json, table.csv or figures); "
            "run `diyopt compare ... --out DIR` first"
        )
    if title is None and sections[0].get("bench"):
        c = sections[0]["settings"]
        title = f"diyopt bench: {c.get('suite')} suite, {len(c.get('optimizers', []))} optimizers"
    elif title is None:
        problems = settings.get("problems") or [settings.get("problem", directory.name)]
        title = f"diyopt comparison: {', '.join(map(str, problems))}"
    page = _render(
        title=title,
        sections=sections,
        versions=settings.get("versions")
        or next((s["settings"].get("versions") for s in sections if s["settings"].get("versions")), {}),
    )
    out = Path(out) if out is not None else directory / "report.html"
    if out.is_dir():  # --out an existing folder: the page goes inside it
        out = out / "report.html"
    if out.exists() and not _written_by_diyopt(out):
        raise FileExistsError(
            f"{out} exists and is not a report diyopt wrote; choose another --out, or move the file away first"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    from diyopt._util.files import atomic_write

    return atomic_write(out, page)  # temp in the same folder, fsync, rename; the umask applies


def _written_by_diyopt(path: Path) -> bool:
    """Whether ``path`` is a page this module wrote (its generator tag, or an earlier version's title)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return '<meta name="generator" content="diyopt">' in head or "<title>diyopt comparison" in head


def _section(folder: Path, top: bool) -> dict | None:
    settings = _read_json(folder / "settings.json")
    figures = sorted(
        folder.glob("*.png"),
        key=lambda p: (_FIGURE_ORDER.index(p.name) if p.name in _FIGURE_ORDER else len(_FIGURE_ORDER), p.name),
    )
    table = _read_table(folder / "table.csv")
    bench = not settings and table is None and (folder / "results.csv").is_file()
    if bench:  # a `diyopt bench` folder: its results and the manifest's settings and versions
        manifest = _read_json(folder / "manifest.json")
        settings = {**(manifest.get("config") or {}), "versions": manifest.get("versions") or {}}
        table = _read_table(folder / "results.csv", keep_order=True)
    if not settings and not figures and table is None:
        return None
    name = settings.get("problem") or ("Across problems" if top and settings.get("problems") else folder.name)
    if bench:
        name = "Results"
    shown = {k: v for k, v in settings.items() if k not in ("versions",)}
    return {
        "id": "s-results" if bench else "s-" + "".join(c if c.isalnum() else "-" for c in str(folder.name)),
        "title": str(name),
        "summary": (
            f"{len(settings.get('optimizers', []))} optimizers × {len(settings.get('tasks', []))} tasks, "
            f"{settings.get('trials')} trials × {len(settings.get('seeds', []))} studies each; a task is "
            "solved when more than half of the studies solve it. Intervals: bootstrap 95% over studies."
            if bench
            else _summary(settings)
        ),
        "figures": [
            {
                "name": p.name,
                "caption": _CAPTIONS.get(p.name, p.stem.replace("_", " ")),
                "data": base64.b64encode(p.read_bytes()).decode("ascii"),
            }
            for p in figures
        ],
        "table": table,
        "settings": settings,
        "settings_json": json.dumps(shown, indent=2, default=str) if shown else "",
        "bench": bench,
    }


def _summary(settings: dict) -> str:
    if "seeds" not in settings:
        return ""
    f_star = settings.get("f_star")
    f_star = float(f_star) if isinstance(f_star, (int, float)) else math.nan  # null: not finite (strict JSON)
    return (
        f"{len(settings.get('optimizers', {}))} optimizers × {settings['seeds']} seeds × "
        f"{settings.get('steps')} steps; tolerance: gap to f* = {f_star:.6g} "
        f"({settings.get('f_star_source', '')}) cut by {settings.get('tol')}."
    )


def _read_json(path: Path) -> dict:
    """A ``settings.json`` as written by ``diyopt compare``: a JSON object, else one line naming the file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {' '.join(str(e).split())[:200]}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} does not hold diyopt settings: expected a JSON object, got a "
            f"{type(data).__name__ if not isinstance(data, list) else 'JSON array'}"
        )
    for key, kind in (
        ("problems", list),
        ("folders", list),
        ("versions", dict),
        ("optimizers", (dict, list)),
        ("problem", str),
    ):
        if key in data and not isinstance(data[key], kind):
            raise ValueError(f"{path} does not hold diyopt settings: {key!r} is a {type(data[key]).__name__}")
    return data


def _read_table(path: Path, keep_order: bool = False) -> dict | None:
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    known = [(k, h) for k, h in _COLUMNS if k in rows[0]]
    extra = [(k, k.replace("_", " ")) for k in rows[0] if k not in dict(_COLUMNS)]
    columns = [(k, k.replace("_", " ")) for k in rows[0]] if keep_order else known + extra
    if "rank" in rows[0]:
        rows.sort(key=lambda r: _number(r["rank"]))
    # every row of rank 1 is a winner and is bolded (ties share rank 1), not just the first row
    return {
        "head": [h for _, h in columns],
        "rows": [[_cell(k, r[k]) for k, _ in columns] for r in rows],
        "winners": [_number(r.get("rank", "")) == 1 for r in rows],
    }


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _cell(key: str, text: str) -> str:
    try:
        v = float(text)
    except ValueError:
        return text
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "not reached" if v > 0 and key.endswith("_to_tol") else ("inf" if v > 0 else "−inf")
    if key == "rank" or (v.is_integer() and abs(v) < 1e15 and key.startswith("steps")):
        return str(int(v))
    return f"{v:.4g}"


def _render(**context: Any) -> str:
    try:
        import jinja2
    except ImportError:
        raise ImportError("diyopt report needs jinja2: pip install 'diyopt[report]'") from None
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(**context)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="diyopt">
<title>{{ title }}</title>
<style>
  :root { --fg: #1f2328; --muted: #57606a; --line: #d0d7de; --accent: #0969da; --bg-soft: #f6f8fa; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 16px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
         background: #ffffff; }
  header { padding: 28px 40px 16px; border-bottom: 1px solid var(--line); background: var(--bg-soft); }
  header h1 { margin: 0 0 4px; font-size: 28px; }
  header p { margin: 0; color: var(--muted); }
  nav { margin-top: 10px; font-size: 14px; }
  nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
  main { max-width: 1120px; margin: 0 auto; padding: 8px 40px 40px; }
  section { margin-top: 28px; }
  h2 { font-size: 22px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
  .summary { color: var(--muted); }
  .figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 18px; }
  figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
  figure img { width: 100%; height: auto; display: block; }
  figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
  table { border-collapse: collapse; margin: 14px 0; font-size: 14px; font-variant-numeric: tabular-nums; }
  th, td { border: 1px solid var(--line); padding: 5px 10px; text-align: right; }
  th { background: var(--bg-soft); }
  td:nth-child(2), th:nth-child(2) { text-align: left; }
  table.results tbody tr.winner td { font-weight: 600; }
  details { margin: 10px 0; }
  pre { background: var(--bg-soft); padding: 12px; border-radius: 6px; overflow-x: auto; font-size: 13px; }
  footer { color: var(--muted); font-size: 13px; border-top: 1px solid var(--line); padding: 16px 40px; }
</style>
</head>
<body data-figures="pending">
<header>
  <h1>{{ title }}</h1>
  <p>Written by diyopt {{ versions.get('diyopt', '') }}. Every figure and table is embedded in this file.</p>
  {% if sections|length > 1 %}
  <nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
  {% endif %}
</header>
<main>
{% for s in sections %}
<section id="{{ s.id }}">
  <h2>{{ s.title }}</h2>
  {% if s.summary %}<p class="summary">{{ s.summary }}</p>{% endif %}
  {% if s.table %}
  <table class="results">
    <thead><tr>{% for h in s.table.head %}<th>{{ h }}</th>{% endfor %}</tr></thead>
    <tbody>
    {% for row in s.table.rows %}
      <tr{% if s.table.winners[loop.index0] %} class="winner"{% endif %}>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
    {% endfor %}
    </tbody>
  </table>
  {% endif %}
  {% if s.figures %}
  <div class="figures">
  {% for f in s.figures %}
    <figure>
      <img alt="{{ f.name }}" src="data:image/png;base64,{{ f.data }}">
      <figcaption>{{ f.caption }}</figcaption>
    </figure>
  {% endfor %}
  </div>
  {% endif %}
  {% if s.settings_json %}
  <details><summary>Settings</summary><pre>{{ s.settings_json }}</pre></details>
  {% endif %}
</section>
{% endfor %}
{% if versions %}
<section id="versions">
  <h2>Versions</h2>
  <table>
    {% for k, v in versions.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
  </table>
</section>
{% endif %}
</main>
<footer>diyopt report · figures are PNG, embedded as base64 · no network needed</footer>
<script>
  // Tell a reader (and the browser test) whether every embedded figure decoded.
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.every(function (img) { return img.complete && img.naturalWidth > 0; });
    document.body.setAttribute("data-figures", ok ? "ok" : "missing");
    document.body.setAttribute("data-figure-count", String(imgs.length));
    document.title = (ok ? "[figures ok] " : "[figures missing] ") + document.title;
  });
</script>
</body>
</html>
"""
