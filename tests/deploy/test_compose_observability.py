"""The `observability` profile: Jaeger beside the stack, Grafana's data source for it, and
the override file that turns tracing on for every berth service."""

from __future__ import annotations

import yaml

from tests.deploy.compose import DEPLOY, run_compose

OVERRIDE = DEPLOY / "compose.observability.yaml"


def _config(*args: str) -> dict:  # type: ignore[type-arg]
    done = run_compose(*args, "config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)  # type: ignore[no-any-return]


def test_the_profile_is_valid_and_runs_jaeger() -> None:
    done = run_compose("--profile", "observability", "config", "-q")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    jaeger = _config("--profile", "observability")["services"]["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    # the UI and OTLP on this host only
    ports = {str(p).removesuffix("/tcp") for p in jaeger["ports"]}
    assert {"127.0.0.1:16686:16686", "127.0.0.1:4317:4317", "127.0.0.1:4318:4318"} == ports


def test_without_the_override_nothing_is_traced() -> None:
    services = _config("--profile", "observability", "--profile", "cpu")["services"]
    for name, spec in services.items():
        assert not any(key.startswith("OTEL_") for key in spec.get("environment") or {}), name


def test_the_override_points_every_berth_service_at_jaeger() -> None:
    args = ("-f", str(OVERRIDE), "--profile", "observability", "--profile", "cpu")
    services = _config(*args, "--profile", "gpu")["services"]
    berth = [n for n, s in services.items() if (s.get("command") or [""])[0] == "berth"]
    assert {"api", "scheduler-1", "scheduler-2", "worker-cpu", "worker-gpu-0"} <= set(berth)
    for name in berth:
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317", name
        assert env["REDIS_URL"], name  # merged into the service's own environment
        if name.startswith("worker"):
            assert env["BERTH_VLLM_OTLP_TRACES_ENDPOINT"] == "http://jaeger:4317"


def test_grafana_has_a_jaeger_data_source() -> None:
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/jaeger.yaml").read_text())
    (jaeger,) = sources["datasources"]
    assert jaeger["type"] == "jaeger" and jaeger["url"] == "http://jaeger:16686"
