"""Render deploy/k8s's kustomizations, with kubectl or kustomize when present and by hand always.

The hand renderer knows the few kustomize features berth's manifests use (resources,
components of resources, namespace, images, strategic-merge patches) and refuses any
other, so validating its output means something on a machine without kubectl; where
kubectl or kustomize exists, a test checks both renderings agree.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.compose import DEPLOY

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
_SUPPORTED = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches"}
# the optional components an overlay may turn on (off in every overlay as shipped)
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())
# lists Kubernetes' strategic merge joins by `name` (other lists are replaced)
_MERGED_BY_NAME = {"containers", "initContainers", "env", "volumes", "volumeMounts"}
Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> Doc:
    spec: Doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(spec) - _SUPPORTED
    assert not unsupported, f"{directory}: the test renderer does not know {unsupported}"
    return spec


def _builtin(doc: Doc) -> bool:
    """Kubernetes' own kinds merge strategically; custom resources by JSON merge."""
    group = doc["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def _merge(target: Doc, patch: Doc, strategic: bool) -> None:
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value, strategic)
        elif strategic and key in _MERGED_BY_NAME and isinstance(current, list):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item, strategic)
                else:
                    current.append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _pod_containers(doc: Doc) -> list[Doc]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _set_image(container: Doc, images: list[Doc]) -> None:
    name, _, tag = container["image"].partition(":")
    for image in images:
        if image["name"] == name:
            name = image.get("newName", name)
            tag = image.get("newTag", tag)
    container["image"] = f"{name}:{tag}" if tag else name


def render(directory: Path) -> list[Doc]:
    """The resources `kubectl kustomize directory` would print, in file order."""
    spec = kustomization(directory)
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        docs += render(path) if path.is_dir() else load(path)
    for entry in spec.get("components", []):
        component = kustomization(directory / entry)
        assert set(component) <= {"apiVersion", "kind", "resources"}, f"{entry}: resources only"
        docs += render(directory / entry)
    for entry in spec.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only file patches are supported"
        for patch in load(directory / entry["path"]):
            targets = [
                d
                for d in docs
                if (d["kind"], d["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            ]
            assert len(targets) == 1, f"{entry['path']} patches {len(targets)} resources"
            _merge(targets[0], patch, _builtin(patch))
    for doc in docs:
        for container in _pod_containers(doc):
            _set_image(container, spec.get("images", []))
        if "namespace" in spec:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def render_with_tool(directory: Path) -> list[Doc] | None:
    """kubectl's (or kustomize's) rendering, or None when neither is installed."""
    if kubectl := shutil.which("kubectl"):
        argv = [kubectl, "kustomize", str(directory)]
    elif kustomize := shutil.which("kustomize"):
        argv = [kustomize, "build", str(directory)]
    else:
        return None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def files_used(directory: Path) -> tuple[set[Path], set[Path]]:
    """(resource files, patch files) a kustomization reads, its bases' included."""
    resources: set[Path] = set()
    patches: set[Path] = set()
    spec = kustomization(directory)
    for entry in spec.get("resources", []) + spec.get("components", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            more, more_patches = files_used(path)
            resources |= more
            patches |= more_patches
        else:
            resources.add(path)
    patches |= {(directory / p["path"]).resolve() for p in spec.get("patches", [])}
    return resources, patches


def with_components(overlay: str, components: list[str], into: Path) -> Path:
    """A kustomization (written in ``into``) of ``overlay`` with ``components`` turned on,
    as a platform team's own overlay would do."""
    # kustomize takes relative paths only
    spec = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, into)],
        "components": [os.path.relpath(K8S / "components" / c, into) for c in components],
    }
    (into / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return into
