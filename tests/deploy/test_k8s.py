"""deploy/k8s: every manifest is valid Kubernetes (KEDA's kinds against schemas checked in
beside this file), the overlays render (with and without the optional components), the
generated workers match models.yaml, and each berth process is given what it reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from berth.api.settings import ApiSettings
from berth.cli import parse
from berth.protocol import keys
from berth.protocol.catalog import parse_catalog
from berth.workers import tinymodel
from berth.workers.main import engine_config
from berth.workers.settings import WorkerSettings
from scripts import k8s_manifests
from tests.deploy import roles
from tests.deploy.kustomize import (
    COMPONENTS,
    K8S,
    OVERLAYS,
    Doc,
    files_used,
    load,
    render,
    render_with_tool,
    with_components,
)

# the oldest Kubernetes the manifests promise to work on (README), and the newest known
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
SCHEMAS = Path(__file__).parent / "schemas"
EXAMPLE_SECRET = K8S / "base" / "redis-secret.example.yaml"
# what a valueFrom gives a container, for checking the settings it ends up with
POD_NAME = "berth-pod-0"
# read by scripts/k8s_manifests.py to render each model's workers, not deployed themselves
TEMPLATES = {K8S / "base" / "worker.yaml", K8S / "base" / "worker-autoscaling.yaml"}
# the Prometheus Operator's kinds: no schema here, checked by what they select below
OPERATOR_GROUP = "monitoring.coreos.com"


def validate(doc: Doc) -> None:
    group, _, version = doc["apiVersion"].rpartition("/")
    if group.endswith("keda.sh"):
        schema = json.loads((SCHEMAS / f"{group}-{version}-{doc['kind'].lower()}.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)
        advanced = doc["spec"].get("advanced", {})
        behavior = advanced.get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            # KEDA hands this to the HPA it creates: it must be a valid HPA behavior
            validate(
                {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": doc["metadata"]["name"]},
                    "spec": {
                        "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                        "maxReplicas": 1,
                        "behavior": behavior,
                    },
                }
            )
        return
    if group == OPERATOR_GROUP:
        assert doc["kind"] in ("PodMonitor", "PrometheusRule") and version == "v1", doc["kind"]
        return
    for k8s in K8S_VERSIONS:
        kubernetes_validate.validate(doc, k8s, strict=True)


def _manifest_files() -> list[Path]:
    files = sorted(K8S.rglob("*.yaml"))
    # models.yaml is the renderer's input, not a manifest
    return [f for f in files if f.name not in ("kustomization.yaml", "models.yaml")]


def _patch_files() -> set[Path]:
    return set().union(*(files_used(K8S / "overlays" / o)[1] for o in OVERLAYS))


@pytest.mark.parametrize(
    "path", [f for f in _manifest_files() if f not in _patch_files()], ids=lambda p: p.name
)
def test_manifest_file_validates(path: Path) -> None:
    docs = load(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        validate(doc)


def test_every_manifest_is_deployed_or_an_example() -> None:
    used = set().union(*(set().union(*files_used(K8S / "overlays" / o)) for o in OVERLAYS))
    used |= set().union(*(set().union(*files_used(K8S / "components" / c)) for c in COMPONENTS))
    examples = {EXAMPLE_SECRET.resolve()} | {t.resolve() for t in TEMPLATES}
    unused = {f.resolve() for f in _manifest_files()} - used - examples
    assert not unused, f"manifests no overlay deploys: {sorted(map(str, unused))}"


def test_generated_manifests_are_current() -> None:
    for path, text in k8s_manifests.outputs().items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(K8S)} is stale: run python -m scripts.k8s_manifests"
        )


def test_every_overlay_renders_its_workers_from_models_yaml() -> None:
    for overlay in OVERLAYS:
        assert (K8S / "overlays" / overlay / "models.yaml").exists(), overlay
        resources = kustomization_resources(K8S / "overlays" / overlay)
        assert "workers.yaml" in resources, f"{overlay} does not deploy its workers.yaml"


def kustomization_resources(directory: Path) -> list[str]:
    resources: list[str] = load(directory / "kustomization.yaml")[0]["resources"]
    return resources


# each overlay, and the gpu overlay with every optional component turned on
RENDERINGS = [*OVERLAYS, "gpu+" + "+".join(COMPONENTS)]


def _kustomization_dir(rendering: str, tmp: Path) -> Path:
    overlay, *components = rendering.split("+")
    if not components:
        return K8S / "overlays" / overlay
    return with_components(overlay, components, tmp)


@pytest.fixture(scope="module", params=RENDERINGS)
def rendered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[Doc]]:
    directory = _kustomization_dir(request.param, tmp_path_factory.mktemp("kustomization"))
    return str(directory), render(directory)


def test_overlay_validates(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate resources"
    for doc in docs:
        assert doc["metadata"]["namespace"] == "berth"
        validate(doc)


def _canonical(value: Any) -> Any:
    """Lists of named items compared as sets: strategic merge may order them differently."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        if all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: i["name"])
        return items
    return value


def test_kubectl_renders_the_same(rendered: tuple[str, list[Doc]]) -> None:
    directory, docs = rendered
    theirs = render_with_tool(Path(directory))
    assert theirs is not None, "install kubectl or kustomize: this check compares against it"

    def by_name(ds: list[Doc]) -> dict[tuple[str, str], Any]:
        return {(d["kind"], d["metadata"]["name"]): _canonical(d) for d in ds}

    assert by_name(docs) == by_name(theirs)


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _example_secret() -> dict[str, str]:
    (secret,) = load(EXAMPLE_SECRET)
    data: dict[str, str] = secret["stringData"]
    return data


def _container_env(container: Doc) -> dict[str, str]:
    """The container's environment as its process sees it, secrets from the example Secret."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", var
            env[var["name"]] = POD_NAME
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if ref["name"] == "berth-redis":
                env[var["name"]] = _example_secret()[ref["key"]]
            elif (ref["name"], ref["key"]) == ("berth-api-keys", "api-keys"):
                # required: the operator's Secret (the pod does not start without it)
                assert not ref.get("optional"), "the API must not start without its keys"
                env[var["name"]] = "k8s-test:unused"
            else:
                assert ref.get("optional"), f"{var['name']}: Secret {ref['name']} is not optional"
        else:
            raise AssertionError(f"unexpected valueFrom {source}")
    return env


def _berth_pods(docs: list[Doc]) -> list[tuple[Doc, Doc, str]]:
    """(workload, container, role) of every berth container."""
    found = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container.get("command", [None])[0] == "berth":
                found.append((doc, container, roles.role_of(container["command"])))
    return found


def test_berth_processes_get_what_they_read(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    pods = _berth_pods(docs)
    assert sorted({role for _, _, role in pods}) == ["api", "scheduler", "worker"]
    request_timeout_s = ApiSettings.model_fields["request_timeout_s"].default
    for workload, container, role in pods:
        env = _container_env(container)
        settings = roles.settings_from(role, env)
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        liveness = container["livenessProbe"]["exec"]["command"]
        roles.check_health_command(role, liveness, env)
        if role in roles.ID_VARIABLE:
            # one record per pod: the id is the pod's name (downward API)
            assert env[roles.ID_VARIABLE[role]] == POD_NAME
            assert getattr(settings, f"{role}_id") == POD_NAME
            assert settings.metrics_port is not None  # type: ignore[attr-defined]
        if role == "worker":
            # not started, not ready, not restarted: all by the same local proof, which
            # the worker writes once its engine runs
            for probe in ("startupProbe", "readinessProbe"):
                roles.check_health_command(role, container[probe]["exec"]["command"], env)
            startup = container["startupProbe"]
            # a model's download and load: minutes
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
        if role == "api":
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert settings.host == "0.0.0.0"  # type: ignore[attr-defined]
        if role == "api":
            # running requests end (at most request_timeout_s) before the pod is killed
            assert pod["terminationGracePeriodSeconds"] > request_timeout_s
        if role == "worker":
            # its drain ends, and what it hands back is handed back, before the pod is
            # killed (docs/operations.md)
            assert isinstance(settings, WorkerSettings)
            assert pod["terminationGracePeriodSeconds"] >= settings.drain_s + 15


def _served_model(container: Doc) -> str:
    settings = roles.settings_from("worker", _container_env(container))
    assert isinstance(settings, WorkerSettings)
    if settings.model is None:
        # the generated tiny model, under its own name unless the pod names it
        return (settings.served_names() or [tinymodel.MODEL_NAME])[0]
    return engine_config(settings).name


def test_keda_scales_workers_on_their_models_queue(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled
    url = urlsplit(_example_secret()["url"])
    for obj in scaled:
        target = _find(docs, "Deployment", obj["spec"]["scaleTargetRef"]["name"])
        (container,) = target["spec"]["template"]["spec"]["containers"]
        assert roles.role_of(container["command"]) == "worker"
        model = _served_model(container)
        lanes = {keys.ingress_stream(model, lane) for lane in keys.LANES}
        # one trigger per priority lane: a backlog of jobs or batches adds workers too
        assert {t["metadata"]["stream"] for t in obj["spec"]["triggers"]} == lanes
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams"
            meta = trigger["metadata"]
            assert meta["stream"] in lanes
            if "consumerGroup" in meta:
                assert meta["consumerGroup"] == keys.SCHEDULER_GROUP
            # the Redis every berth pod uses, by its full name from KEDA's namespace
            host, _, port = meta["address"].rpartition(":")
            service = _find(docs, "Service", str(url.hostname))
            assert host == f"{url.hostname}.{service['metadata']['namespace']}.svc.cluster.local"
            assert int(port) == url.port == service["spec"]["ports"][0]["port"]
            assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")
            auth = _find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["name"] == "berth-redis" and ref["key"] in _example_secret()


def test_the_api_and_the_schedulers_read_a_catalog_of_every_served_model(
    rendered: tuple[str, list[Doc]],
) -> None:
    """Each model of the overlay is declared in the catalog the API and the schedulers
    mount, so one scaled to zero is listed and its requests wait for its first worker."""
    _, docs = rendered
    served = {
        _served_model(container) for _, container, role in _berth_pods(docs) if role == "worker"
    }
    configmap = _find(docs, "ConfigMap", k8s_manifests.CATALOG_CONFIGMAP)
    declared = parse_catalog(yaml.safe_load(configmap["data"][k8s_manifests.CATALOG_KEY]))
    assert {m.name for m in declared} == served
    for workload, container, role in _berth_pods(docs):
        if role not in ("api", "scheduler"):
            continue
        settings = roles.settings_from(role, _container_env(container))
        path = Path(str(getattr(settings, "models_file", None)))
        (mount,) = [m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"])]
        (volume,) = [
            v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
        ]
        assert volume["configMap"]["name"] == k8s_manifests.CATALOG_CONFIGMAP
        assert path.name == k8s_manifests.CATALOG_KEY


def test_a_model_scaled_to_zero_starts_on_its_first_queued_request(
    rendered: tuple[str, list[Doc]],
) -> None:
    """min 0: no pod until a stream holds an entry (KEDA's redis-streams scaler on stream
    length is active from one entry: no consumer group, which would count only entries a
    scheduler has read), then a cooldown before the last pod goes."""
    _, docs = rendered
    for obj in (d for d in docs if d["kind"] == "ScaledObject"):
        spec = obj["spec"]
        target = _find(docs, "Deployment", spec["scaleTargetRef"]["name"])
        assert target["spec"]["replicas"] == spec["minReplicaCount"]
        if spec["minReplicaCount"] == 0:
            assert spec["cooldownPeriod"] > 0
            for trigger in spec["triggers"]:
                assert "consumerGroup" not in trigger["metadata"]
                assert int(trigger["metadata"]["streamLength"]) >= 1


def test_the_scale_to_zero_overlay_scales_every_model_to_zero() -> None:
    docs = render(K8S / "overlays" / "scale-to-zero")
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert len(scaled) >= 2
    assert all(d["spec"]["minReplicaCount"] == 0 for d in scaled)


def test_every_workload_has_a_disruption_budget(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    budgets = [
        d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"
    ]
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert any(sel.items() <= labels.items() for sel in budgets), doc["metadata"]["name"]


def _workers(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    return [(w, c) for w, c, role in _berth_pods(docs) if role == "worker"]


def test_gpu_workers_ask_for_their_gpus() -> None:
    workers = _workers(render(K8S / "overlays" / "gpu"))
    assert workers
    for worker, container in workers:
        env = _container_env(container)
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert int(gpus) == int(env["BERTH_TENSOR_PARALLEL_SIZE"])
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert container["image"].startswith("berth-worker-gpu")
        assert "BERTH_MODEL" in env
        tolerations = worker["spec"]["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_each_model_of_models_yaml_has_its_workers() -> None:
    for overlay in OVERLAYS:
        entries = k8s_manifests.Models.model_validate(
            load(K8S / "overlays" / overlay / "models.yaml")[0]
        ).models
        served = {_served_model(c): w for w, c in _workers(render(K8S / "overlays" / overlay))}
        assert sorted(served) == sorted(e.name for e in entries), overlay
        for entry in entries:
            labels = served[entry.name]["spec"]["selector"]["matchLabels"]
            assert labels[k8s_manifests.MODEL_LABEL] == entry.name


def test_engine_args_are_flags_berth_worker_takes(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    for _, container in _workers(docs):
        args = container.get("args", [])
        if not args:
            continue
        # berth's flags, or vLLM's read by its own parser: a wrong one exits
        settings = parse(["worker", *args])
        assert isinstance(settings, WorkerSettings)


def test_engine_flags_spell_values_as_vllm_reads_them() -> None:
    flags = k8s_manifests.engine_flags(
        {"dtype": "bfloat16", "enforce-eager": True, "enable-chunked-prefill": False}
        | {"max-num-seqs": 128, "limit-mm-per-prompt": {"image": 2}}
    )
    assert flags == [
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--no-enable-chunked-prefill",
        "--max-num-seqs",
        "128",
        "--limit-mm-per-prompt",
        '{"image": 2}',
    ]


def test_every_pod_meets_the_restricted_pod_security_standard(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert workloads
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        where = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert not context.get("privileged"), where
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], where


def test_workers_spread_over_nodes_and_zones(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    for worker, _ in _workers(docs):
        template = worker["spec"]["template"]
        constraints = template["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints} == {
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
        }
        for constraint in constraints:
            # exactly this model's pods: spread one model's replicas, not all workers
            assert constraint["labelSelector"]["matchLabels"] == template["metadata"]["labels"]


def test_monitoring_scrapes_every_berth_pod_and_alerts_as_compose_does(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    if not monitors:
        return
    (monitor,) = monitors
    selector = monitor["spec"]["selector"]
    (components,) = [e["values"] for e in selector["matchExpressions"]]
    endpoints = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for workload, container, role in _berth_pods(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items(), role
        assert labels["app.kubernetes.io/component"] in components, role
        assert {p["name"] for p in container["ports"]} & endpoints, f"{role}: no port scraped"
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    files = sorted((K8S.parent / "prometheus" / "rules").glob("*.yml"))
    assert rule["spec"]["groups"] == [g for f in files for g in load(f)[0]["groups"]]


def test_redis_secret_example_is_consistent() -> None:
    secret = _example_secret()
    url = urlsplit(secret["url"])
    assert url.password == secret["password"]
    assert os.path.basename(url.path) == "0"
