"""Without a stack: every metric the dashboard and the rules query is defined by one of
berth's metric modules (test_metric_names.py checks the same against live scrapes), and
the retired berth_api_requests_total is queried nowhere."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

import berth.api.metrics
import berth.scheduler.metrics
import berth.workers.metrics
from tests.deploy.promql import alert_rules, dashboard_queries, exported_names, metric_names

_MODULES = (berth.api.metrics, berth.scheduler.metrics, berth.workers.metrics)


def _defined() -> set[str]:
    """Names of the metrics berth's modules register (their `# TYPE` lines cover metrics
    with labels that no request touched yet)."""
    registry = CollectorRegistry()
    for module in _MODULES:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                registry.register(value)
    return exported_names(generate_latest(registry).decode())


def test_dashboard_and_rules_query_defined_metrics() -> None:
    defined = _defined()
    assert "berth_api_http_requests_total" in defined
    rules = alert_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    queries = dashboard_queries() + [
        (rule.get("alert") or rule["record"], rule["expr"]) for rule in rules
    ]
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= defined | recorded, f"{where}: {sorted(names - defined - recorded)}"
        assert "berth_api_requests_total" not in names, f"{where}: retired metric"


def test_the_5xx_alert_reads_the_counter_of_every_route() -> None:
    (rule,) = [r for r in alert_rules() if r.get("alert") == "BerthServerErrors"]
    assert metric_names(rule["expr"]) == {"berth_api_http_requests_total"}
    assert 'status="5xx"' in rule["expr"]
