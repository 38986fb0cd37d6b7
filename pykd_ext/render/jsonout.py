"""The JSON report: ``Report.as_dict()`` serialised deterministically (same report, same bytes).

The layout is made for people and line tools as well as parsers: objects are spread over lines down
to the second level and lists down to the third, so every record (an MDL, an IRP, a suspect, a bug
check parameter) is one line. Each record is written by the json module's C encoder: a report of
thousands of MDLs and IRPs renders several times faster than with ``indent``, which only the pure
Python encoder supports.
"""
from __future__ import annotations

import json
from typing import Any, List

from ..collector import collector_paused
from ..report import Report

INDENT = "  "
# Deepest level whose objects, and whose lists, are spread one member per line (the report is level 0).
SPREAD_OBJECTS_TO = 1
SPREAD_LISTS_TO = 2

_record_encoder = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def render_json(report: Report) -> str:
    parts: List[str] = []
    with collector_paused():
        _write(report.as_dict(), 0, parts)
    parts.append("\n")
    return "".join(parts)


def _write(value: Any, depth: int, parts: List[str]) -> None:
    spread = ((isinstance(value, dict) and depth <= SPREAD_OBJECTS_TO)
              or (isinstance(value, list) and depth <= SPREAD_LISTS_TO))
    if not spread or not value:
        parts.append(_record_encoder.encode(value))
        return
    inner = "\n" + INDENT * (depth + 1)
    is_object = isinstance(value, dict)
    parts.append("{" if is_object else "[")
    for position, member in enumerate(value.items() if is_object else value):
        parts.append(inner if position == 0 else "," + inner)
        if is_object:
            key, member = member
            parts.append(_record_encoder.encode(key) + ": ")
        _write(member, depth + 1, parts)
    parts.append("\n" + INDENT * depth + ("}" if is_object else "]"))
