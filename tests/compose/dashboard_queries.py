"""What a Grafana dashboard asks Prometheus for: its PromQL and the agoramesh metrics in it.

Shared by the static compose tests and live tests that scrape a real ``/metrics``
and check every metric the dashboard queries is exported. Import it from a test
in this directory as ``from dashboard_queries import dashboard_metric_names``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ("dashboard_exprs", "dashboard_metric_names", "metric_identifiers")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_AGORAMESH_NAME = re.compile(r"(?<![A-Za-z0-9_:])agoramesh_[a-z_]+(?![A-Za-z0-9_:])")
# Reserved for histograms (and summaries) by the Prometheus naming conventions.
_HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels when collapsed


def dashboard_exprs(path: Path) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and query variables."""
    board = json.loads(path.read_text())
    exprs = [target["expr"] for panel in _panels(board.get("panels", []))
             for target in panel.get("targets", []) if target.get("expr")]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if query:
            exprs.append(query)
    return exprs


def metric_identifiers(expr: str) -> set[str]:
    """The ``agoramesh_*`` identifiers in one PromQL expression, as written."""
    return set(_AGORAMESH_NAME.findall(_STRING.sub('""', expr)))


def dashboard_metric_names(path: Path) -> set[str]:
    """The agoramesh metric families the dashboard queries.

    Histogram series are named after their family: ``x_bucket``, ``x_sum`` and
    ``x_count`` all count as ``x``. Quoted label values are ignored.
    """
    return {_HISTOGRAM_SUFFIX.sub("", name)
            for expr in dashboard_exprs(path) for name in metric_identifiers(expr)}
