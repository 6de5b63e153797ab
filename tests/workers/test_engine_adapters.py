"""Adapter resolution: registered names, paths inside the root, and everything refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.protocol.errors import InvalidRequest
from berth.workers.engine.adapters import AdapterRegistry


def make_adapter(path: Path, weights: str = "adapter_model.safetensors") -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / weights).write_bytes(b"")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    make_adapter(root / "good")
    make_adapter(root / "team" / "nested")
    make_adapter(root / "pickled", weights="adapter_model.bin")
    (root / "empty").mkdir()
    make_adapter(tmp_path / "outside")
    os.symlink(tmp_path / "outside", root / "escape")
    return root


@pytest.fixture
def registry(root: Path, tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(
        {"named": str(root / "good"), "gone": str(tmp_path / "gone")}, root=str(root)
    )


def test_registered_name(registry: AdapterRegistry, root: Path) -> None:
    assert registry.resolve("named") == ("named", root / "good")
    assert registry.names == ["gone", "named"]
    assert "named" in registry and "good" not in registry


@pytest.mark.parametrize("raw", ["good", "./good", "team/nested", "team/../good"])
def test_paths_inside_the_root(registry: AdapterRegistry, root: Path, raw: str) -> None:
    if ".." in raw:
        with pytest.raises(InvalidRequest):
            registry.resolve(raw)
        return
    name, path = registry.resolve(raw)
    assert path == (root / raw).resolve()
    assert name == "path:" + os.path.relpath(path, root)


def test_absolute_path_inside_the_root_is_fine(registry: AdapterRegistry, root: Path) -> None:
    assert registry.resolve(str(root / "good"))[1] == root / "good"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("../outside", "'..'"),
        ("/etc", "outside"),
        ("escape", "outside"),  # a symlink out of the root
        ("pickled", "safetensors"),
        ("empty", "adapter_config.json"),
        ("missing", "does not exist"),
        ("", "empty"),
        (".", "inside the root"),
        ("gone", "does not exist"),  # registered, but its directory vanished
    ],
)
def test_refused(registry: AdapterRegistry, raw: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why) as err:
        registry.resolve(raw)
    assert err.value.param == "lora_path"


def test_without_a_root_only_names_resolve(root: Path) -> None:
    registry = AdapterRegistry({"named": str(root / "good")})
    assert registry.resolve("named")[0] == "named"
    with pytest.raises(InvalidRequest, match="registered adapters: named") as err:
        registry.resolve("good", param="model")
    assert err.value.param == "model"


def test_tiny_model_adapters_resolve(tiny_model) -> None:  # type: ignore[no-untyped-def]
    registry = AdapterRegistry(
        {k: str(v) for k, v in tiny_model.adapters.items()},
        root=str(tiny_model.path.parent / "adapters"),
    )
    for name, path in tiny_model.adapters.items():
        assert registry.resolve(name) == (name, path)
        assert registry.resolve(f"./{name}")[1] == path
