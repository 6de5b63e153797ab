"""Every metric the Grafana dashboard and the Prometheus rules query is one the running
processes export, scraped where Prometheus scrapes them (prometheus.yml's targets)."""

from __future__ import annotations

import urllib.request

import pytest
import yaml

from tests.deploy.compose import DEPLOY
from tests.deploy.conftest import ComposeStack
from tests.deploy.promql import (
    alert_rules,
    dashboard_queries,
    exported_names,
    metric_names,
    not_berths,
)

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.fixture(scope="module")
def exported(compose_stack: ComposeStack) -> set[str]:
    """The names every scrape target that runs here exports, each job scraped at least once."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    names: set[str] = set()
    for job in config["scrape_configs"]:
        scraped = 0
        for target in (t for sc in job["static_configs"] for t in sc["targets"]):
            name, _, port = target.partition(":")
            svc = compose_stack.services.get(name)
            if svc is None:
                continue  # a GPU worker: not started here
            url = f"http://127.0.0.1:{svc.port(int(port))}{job.get('metrics_path', '/metrics')}"
            with urllib.request.urlopen(url, timeout=10) as answer:
                names |= exported_names(answer.read().decode())
            scraped += 1
        assert scraped, f"no target of job {job['job_name']} runs here"
    return names


def test_dashboard_queries_only_exported_metrics(exported: set[str]) -> None:
    queries = dashboard_queries()
    assert len(queries) > 10
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported"


def test_rules_query_only_exported_or_recorded_metrics(exported: set[str]) -> None:
    rules = alert_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        names = metric_names(rule["expr"])
        where = rule.get("alert") or rule.get("record")
        assert names, f"{where}: no metric found"
        # Prometheus's `up` and redis_exporter's series come from no berth process
        unknown = names - exported - recorded - not_berths(names)
        assert not unknown, f"{where}: {sorted(unknown)}"
