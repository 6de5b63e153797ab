"""Without a stack: every metric the dashboard and the rules query is defined by one of
berth's metric modules, by the installed vLLM (its vllm:* series, which each worker
serves), or is Prometheus's `up` or redis_exporter's (test_metric_names.py checks the
same against live scrapes), and the retired berth_api_requests_total is queried nowhere."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

import berth.api.metrics
import berth.scheduler.metrics
import berth.workers.metrics
from tests.deploy.promql import (
    REDIS_EXPORTER,
    VLLM_PREFIX,
    alert_rules,
    dashboard_queries,
    exported_names,
    metric_names,
    not_berths,
    vllm_defined,
)

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
    defined = _defined() | vllm_defined()
    assert "berth_api_http_requests_total" in defined
    assert "vllm:num_preemptions_total" in defined
    rules = alert_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    queries = dashboard_queries() + [
        (rule.get("alert") or rule["record"], rule["expr"]) for rule in rules
    ]
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown = names - defined - recorded - not_berths(names)
        assert not unknown, f"{where}: {sorted(unknown)}"
        assert not_berths(names) <= {"up"} | REDIS_EXPORTER, f"{where}: {sorted(names)}"
        assert "berth_api_requests_total" not in names, f"{where}: retired metric"


def test_the_5xx_alert_reads_the_counter_of_every_route() -> None:
    (rule,) = [r for r in alert_rules() if r.get("alert") == "BerthServerErrors"]
    assert metric_names(rule["expr"]) == {"berth_api_http_requests_total"}
    assert 'status="5xx"' in rule["expr"]


def test_dashboard_shows_the_engines_own_series() -> None:
    queried = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    assert {
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    } <= queried
    assert {n for n in queried if n.startswith(VLLM_PREFIX)} <= vllm_defined()


def test_latency_panels_are_by_model() -> None:
    for where, expr in dashboard_queries():
        if "_seconds_bucket" in expr and "berth_api_" in expr and "route" not in expr:
            assert "by (le, model)" in expr, where


def test_alerts_cover_a_dead_worker_and_a_full_valkey() -> None:
    alerts = {r["alert"]: r["expr"] for r in alert_rules() if "alert" in r}
    assert "up" in metric_names(alerts["BerthWorkerDown"])
    assert "vllm:num_requests_running" in metric_names(alerts["BerthModelWithoutWorker"])
    assert metric_names(alerts["BerthRedisMemoryHigh"]) == REDIS_EXPORTER
