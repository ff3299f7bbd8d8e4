"""How tables print a value: one format for every table diyopt writes."""

from __future__ import annotations

from typing import Any

NOT_REACHED = "not reached"  # what a table prints where a run never met the tolerance (a cost that is inf)


def format_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, tuple):
        return "/".join(repr(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)
