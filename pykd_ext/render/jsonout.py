"""The JSON report: ``Report.as_dict()`` serialised deterministically (same report, same bytes)."""
from __future__ import annotations

import json

from ..report import Report


def render_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n"
