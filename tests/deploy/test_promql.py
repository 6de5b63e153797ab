"""The PromQL name extraction the metric-name tests rely on."""

from __future__ import annotations

import pytest

from tests.deploy.promql import exported_names, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (le) (rate(a_seconds_bucket[$__rate_interval])))",
            {"a_seconds_bucket"},
        ),
        ('sum by (model) (rate(b_total{model=~"$model", x!="y"}[5m]))', {"b_total"}),
        ("sum(rate(c_sum[1m])) / sum(rate(c_count[1m])) > 0.5", {"c_sum", "c_count"}),
        ("max without (instance) (d) and on (job) e offset 5m", {"d", "e"}),
        ("ns:recorded:p95 > 5e3 unless bool f", {"ns:recorded:p95", "f"}),
        ("label_values(g_length{job='api'}, model)", {"g_length"}),
        ("h", {"h"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exported_names_include_series_of_untouched_metrics() -> None:
    exposition = "\n".join(
        [
            "# HELP r_total h",
            "# TYPE r_total counter",
            "# TYPE s_seconds histogram",
            's_seconds_bucket{le="+Inf"} 0.0',
            "g 1.0",
        ]
    )
    assert exported_names(exposition) == {
        "r_total",
        "s_seconds",
        "s_seconds_bucket",
        "s_seconds_sum",
        "s_seconds_count",
        "g",
    }
