"""Metric names a PromQL expression reads, the names a /metrics page exports, and the
names defined outside berth (Prometheus's own, vLLM's, redis_exporter's)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
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
# Prometheus's own series of every target
PROMETHEUS_OWN = {"up"}
# what the rules read of redis_exporter (oliver006/redis_exporter; not installed here, so
# named: its gauges of INFO memory's used_memory and maxmemory)
REDIS_EXPORTER = {"redis_memory_used_bytes", "redis_memory_max_bytes"}
VLLM_PREFIX = "vllm:"
# vLLM's metrics are prometheus_client ones, declared in this module with a literal name
_VLLM_METRIC = re.compile(r"_(gauge|counter|histogram)_cls\(\s*name=\"(vllm:\w+)\"")


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


def vllm_defined() -> set[str]:
    """The series names the installed vLLM's Prometheus logger defines (read from its source,
    without importing vLLM): counters as ``_total``, histograms as their three series."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    source = Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py"
    names = set()
    for kind, name in _VLLM_METRIC.findall(source.read_text()):
        if kind == "counter":
            names.add(name + "_total")
        else:
            names.add(name)
            names.update(name + suffix for suffix in _SUFFIXES.get(kind, ()))
    return names


def not_berths(names: set[str]) -> set[str]:
    """The names of ``names`` that berth's processes do not export themselves."""
    return {n for n in names if n in PROMETHEUS_OWN | REDIS_EXPORTER or n.startswith("redis_")}


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
