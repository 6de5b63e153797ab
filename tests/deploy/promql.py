"""Metric names a PromQL expression reads, and the names a /metrics page exports."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.deploy.compose import DEPLOY

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# an identifier not preceded by a name character, `$` or `.`, and not a function call
_NAME = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on"}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([^,)]+)")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    """Names of the series ``expr`` selects (label names, functions and keywords left out)."""
    label_values = _LABEL_VALUES.match(expr)
    if label_values:
        expr = label_values.group(1)
    for pattern in (_STRING, _MATCHERS, _RANGES, _GROUPING):
        expr = pattern.sub(" ", expr)
    return {m for m in _NAME.findall(expr) if m.lower() not in _KEYWORDS}


def exported_names(exposition: str) -> set[str]:
    """Every series name a scrape of ``exposition`` (Prometheus text format) can yield.

    A labelled metric no request touched yet has no samples, only its `# TYPE` line; a
    histogram's series are its `_bucket`, `_sum` and `_count`.
    """
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            names.update(name + suffix for suffix in _SUFFIXES.get(kind.strip(), ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every query of the Grafana dashboard: panels and variables."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "berth.json").read_text())
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"${v['name']}", v["query"]["query"])
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    return queries


def alert_rules() -> list[dict[str, Any]]:
    """Every recording and alerting rule of deploy/prometheus/rules."""
    return [
        rule
        for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
