"""Tables: a comparison's rows as CSV (full precision) and as GitHub Markdown (4 significant digits)."""

from __future__ import annotations

import math
from typing import Any

from diyopt._util.format import NOT_REACHED


def comparison_csv(rows: list[dict[str, Any]]) -> str:
    """A comparison's table as CSV: full precision, "not reached" for a tolerance most seeds never met."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(v, k) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """A comparison's table as GitHub Markdown, sorted by rank, numbers to 4 significant digits; a
    tolerance no seed (or fewer than half of them) reached is "not reached"."""
    rows = sorted(rows, key=lambda r: r["rank"])
    head = [
        "rank",
        "optimizer",
        "final loss (median)",
        "min",
        "max",
        "loss − f* (median)",
        "distance to optimum",
        "reached tol",
        "steps to tol",
        "seconds to tol",
        "seconds",
        "diverged",
    ]
    keys = [
        "rank",
        "optimizer",
        "final_loss",
        "final_loss_min",
        "final_loss_max",
        "final_gap",
        "distance",
        "reached",
        "steps_to_tol",
        "seconds_to_tol",
        "seconds",
        "diverged",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_md_value(row[k], k) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _csv_value(v: Any, key: str = "") -> Any:
    if isinstance(v, float) and key.endswith("_to_tol") and v == math.inf:
        return NOT_REACHED
    return repr(v) if isinstance(v, float) else v


def _md_value(v: Any, key: str = "") -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return NOT_REACHED if key.endswith("_to_tol") and v > 0 else ("inf" if v > 0 else "-inf")
        return f"{v:.4g}"
    return str(v)
