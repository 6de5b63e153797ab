"""deploy/compose.yaml: valid for Compose, and every service wired to the others as berth
needs (the services' processes themselves run in test_compose_stack.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from berth.api.settings import ApiSettings
from berth.plumbing.celeryconf import celery_settings
from berth.plumbing.redisconn import parse_sentinel_url
from berth.workers.settings import WorkerSettings
from tests.deploy import roles
from tests.deploy.compose import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    berth_services,
    env_example,
    healthcheck_argv,
    run_compose,
    service,
    unescape,
)

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--profile", "cpu"],
        ["--profile", "gpu"],
        ["--env-file", str(ENV_EXAMPLE), "--profile", "cpu", "--profile", "gpu"],
        ["--profile", "ha", "--profile", "cpu"],
    ],
    ids=["default", "cpu", "gpu", "env-example", "ha"],
)
def test_compose_config_is_valid(args: list[str]) -> None:
    done = run_compose(*args, "config", "-q")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr


def test_env_example_documents_every_variable_with_its_default() -> None:
    documented = env_example()
    used = re.findall(r"\$\{(\w+)(?::?([-?])([^}]*))?\}", COMPOSE_FILE.read_text())
    for name, kind, default in used:
        assert name in documented, f"{name} is not in .env.example"
        if kind == "?":  # required: the example leaves it for the operator to fill
            assert documented[name] == "", f"{name} is required, yet .env.example sets it"
        else:
            assert default == documented[name], f"{name}: compose default {default!r}"
    assert set(documented) == {name for name, _, _ in used}, "unused variables in .env.example"


def test_compose_refuses_to_start_without_api_keys() -> None:
    for env_file in ([], ["--env-file", str(ENV_EXAMPLE)]):
        done = run_compose(*env_file, "config", "-q", env={})
        assert done.returncode != 0
        assert "set API_KEYS in deploy/.env" in done.stderr


def test_api_port_is_published_on_this_host_only() -> None:
    (port,) = service("api")["ports"]
    assert port.startswith("127.0.0.1:"), port


def _duration_s(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", value))


def test_berth_services_get_what_they_read() -> None:
    services = berth_services()
    by_role: dict[str, list[str]] = {}
    ids = []
    for name, spec in services.items():
        role = roles.role_of(spec["command"])
        by_role.setdefault(role, []).append(name)
        env = {k: str(v) for k, v in spec["environment"].items()}
        roles.settings_from(role, env)
        roles.check_health_command(role, healthcheck_argv(spec), env)
        if role in roles.ID_VARIABLE:
            ids.append(env[roles.ID_VARIABLE[role]])
        if role == "api":
            timeout_s = ApiSettings.model_fields["request_timeout_s"].default
            assert _duration_s(spec["stop_grace_period"]) > timeout_s, name
        if role == "worker":
            # the drain and the hand-back end before the container is killed
            drain_s = float(
                env.get("BERTH_DRAIN_S", WorkerSettings.model_fields["drain_s"].default)
            )
            assert _duration_s(spec["stop_grace_period"]) >= drain_s + 15, name
    assert len(ids) == len(set(ids)), f"two processes share an id: {ids}"
    assert len(by_role["scheduler"]) >= 2
    assert {"api", "worker"} <= set(by_role)


def test_everything_uses_the_one_password_protected_valkey() -> None:
    valkey = service("valkey")
    argv = valkey["command"]
    password = argv[argv.index("--requirepass") + 1]
    # the healthcheck's valkey-cli authenticates with the same password
    assert valkey["environment"]["VALKEY_PASSWORD"] == password
    urls = {name: spec["environment"]["REDIS_URL"] for name, spec in berth_services().items()}
    urls["flower"] = service("flower")["environment"]["REDIS_URL"]
    assert len(set(urls.values())) == 1, "berth's processes and Flower must share one Redis"
    target = parse_sentinel_url(urls["api"])
    assert target.password == password
    # every client asks the sentinels; sentinel-1 runs in every profile, the others in `ha`
    hosts = [host for host, _ in target.sentinels]
    assert hosts == ["sentinel-1", "sentinel-2", "sentinel-3"]
    assert "profiles" not in service("sentinel-1")
    for name in hosts:
        sentinel = service(name)
        conf = sentinel["command"][0]
        assert f"sentinel monitor {target.master} valkey 6379 2" in conf, name
        assert f"sentinel auth-pass {target.master} $VALKEY_PASSWORD" in conf, name
        assert sentinel["environment"]["VALKEY_PASSWORD"] == password
        assert sentinel["environment"]["SENTINEL_NAME"] == name


def test_the_ha_profile_adds_a_replica_and_a_quorum() -> None:
    done = run_compose("--profile", "ha", "config")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    replica = unescape(services["valkey-replica"]["command"])
    assert replica[replica.index("--replicaof") + 1 :] == ["valkey", "6379"]
    assert {"sentinel-2", "sentinel-3"} <= set(services)
    assert services["sentinel-2"]["profiles"] == services["valkey-replica"]["profiles"] == ["ha"]
    # no override file: the same roles, the same URL as without the profile
    for name, spec in berth_services().items():
        if name in services:
            assert services[name]["environment"]["REDIS_URL"] == spec["environment"]["REDIS_URL"]


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:pw@sentinel-1:26379,sentinel-2,sentinel-3:26380/berth-primary/2",
        "redis+sentinel://:pw@s1:1/m?sentinel_password=other",
        "rediss+sentinel://:pw@s1:1,s2:2/m/0?ssl_ca_certs=/ca.crt&ssl_certfile=/c.crt"
        "&ssl_keyfile=/c.key&ssl_check_hostname=true",
        "redis://:pw@valkey:6379/0",
    ],
)
def test_flower_takes_the_broker_berth_takes(url: str) -> None:
    """deploy/flower/flowerconf.py (Flower's image has no berth) gives Celery what berth's
    own celery_settings gives it for the same REDIS_URL; compose's URL among them."""
    mine = celery_settings(url)
    flowers = _flowerconf(url)
    assert flowers["broker_url"] == mine["broker_url"]
    assert flowers.get("broker_use_ssl") == mine.get("broker_use_ssl")
    options = flowers.get("broker_transport_options", {})
    assert options.get("master_name") == mine["broker_transport_options"].get("master_name")
    theirs = {k: v for k, v in mine["broker_transport_options"].get("sentinel_kwargs", {}).items()}
    assert options.get("sentinel_kwargs", {}) == {
        k: v for k, v in theirs.items() if k == "password" or k.startswith("ssl")
    }
    compose = service("flower")
    assert compose["command"][:3] == ["celery", "--config", "flowerconf"]
    assert (
        _flowerconf(compose["environment"]["REDIS_URL"])["broker_url"]
        == (celery_settings(compose["environment"]["REDIS_URL"])["broker_url"])
    )


def _flowerconf(url: str) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("flowerconf", DEPLOY / "flower" / "flowerconf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", url)
        spec.loader.exec_module(module)
    return {k: v for k, v in vars(module).items() if k.startswith("broker")}


def test_workers_come_from_profiles_one_gpu_each() -> None:
    workers = {
        name: spec
        for name, spec in berth_services().items()
        if roles.role_of(spec["command"]) == "worker"
    }
    assert {tuple(spec.get("profiles", [])) for spec in workers.values()} == {("cpu",), ("gpu",)}
    devices: list[str] = []
    for spec in workers.values():
        if spec["profiles"] == ["gpu"]:
            (reservation,) = spec["deploy"]["resources"]["reservations"]["devices"]
            assert reservation["capabilities"] == ["gpu"]
            assert len(reservation["device_ids"]) == int(
                spec["environment"]["BERTH_TENSOR_PARALLEL_SIZE"]
            )
            devices += reservation["device_ids"]
    assert len(devices) == len(set(devices)) >= 2, devices


def test_workers_have_room_in_dev_shm_for_vllm() -> None:
    # vLLM's engine process allocates shared memory (160 MB for the tiny model); Docker's
    # default /dev/shm of 64 MB stops it at start (found running the cpu profile for real)
    units = {"mb": 1, "gb": 1024}
    for name, spec in berth_services().items():
        if roles.role_of(spec["command"]) == "worker":
            size = re.fullmatch(r"(\d+)([mg]b)", str(spec.get("shm_size", "")).lower())
            assert size is not None, f"{name} sets no shm_size"
            assert int(size.group(1)) * units[size.group(2)] >= 1024, name


def _targets() -> dict[str, list[str]]:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }


def test_prometheus_scrapes_every_berth_process_where_it_listens() -> None:
    expected = set()
    for name, spec in berth_services().items():
        env = spec["environment"]
        port = env.get("BERTH_METRICS_PORT") or env.get("BERTH_PORT")
        assert port, f"{name} serves no metrics"
        expected.add(f"{name}:{port}")
    scraped = {t for targets in _targets().values() for t in targets}
    assert scraped == expected


def _mounts(name: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("/"):
            mounts[target] = Path(source)
    return mounts


def test_prometheus_loads_the_rule_files() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    mounts = _mounts("prometheus")
    assert mounts["/etc/prometheus"] == PROMETHEUS
    for pattern in config["rule_files"]:
        local = pattern.replace("/etc/prometheus", str(PROMETHEUS))
        assert list(Path("/").glob(local.lstrip("/"))), f"{pattern} matches no rule file"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "berth.json").read_text())
    return data


def test_grafana_provisions_the_datasource_and_dashboard_the_panels_use() -> None:
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == GRAFANA / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "berth.yaml").read_text())[
        "providers"
    ]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).exists()
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    # Prometheus listens on its default port
    assert not any("listen-address" in arg for arg in service("prometheus")["command"])
    assert source["url"] == "http://prometheus:9090"
    assert source["type"] == "prometheus" and source["isDefault"] is True
    # the dashboard asks for a Prometheus data source (this one, being the default)
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uses = [p["datasource"] for p in dashboard["panels"] if p["type"] != "row"]
    uses += [t["datasource"] for p in dashboard["panels"] for t in p.get("targets", [])]
    uses += [v["datasource"] for v in variables.values() if v["type"] == "query"]
    assert uses and all(u == {"type": "prometheus", "uid": "${datasource}"} for u in uses)


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        pos = panel["gridPos"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        assert pos["x"] + pos["w"] <= 24
        taken |= cells
