"""Resolve a request's LoRA adapter to a directory the engine may load.

A request names an adapter either by a registered name or by ``lora_path``, a
path inside the server's adapter root. Anything else — an unknown name, a path
outside the root (absolute or by ``..``), a symlink out of it, a directory
without a safetensors adapter — is refused before vLLM sees it: vLLM would load
whatever path it is given, including pickled ``.bin`` weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from berth.protocol.errors import InvalidRequest

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterRegistry:
    """Registered adapters by name, plus an optional root for ``lora_path``."""

    def __init__(self, adapters: dict[str, str] | None = None, root: str | None = None):
        self._configured = {name: Path(path) for name, path in (adapters or {}).items()}
        self._named = dict(self._configured)
        self._root = Path(root).resolve() if root else None

    def set_registered(self, adapters: dict[str, str]) -> None:
        """Adapters registered at run time; configured names keep their configured path."""
        self._named = {name: Path(path) for name, path in adapters.items()} | self._configured

    @property
    def names(self) -> list[str]:
        return sorted(self._named)

    def __contains__(self, name: object) -> bool:
        return name in self._named

    def resolve(self, name_or_path: str, *, param: str = "lora_path") -> tuple[str, Path]:
        """The adapter's name and directory; raises InvalidRequest naming ``param``."""
        if not name_or_path:
            raise InvalidRequest("the adapter name must not be empty", param=param)
        if name_or_path in self._named:
            path = self._named[name_or_path]
            _check_adapter_dir(path, name_or_path, param)
            return name_or_path, path
        if self._root is None:
            raise InvalidRequest(
                f"unknown LoRA adapter {name_or_path!r}; registered adapters: "
                f"{', '.join(self.names) or 'none'}",
                param=param,
            )
        return self._resolve_under_root(name_or_path, self._root, param)

    def _resolve_under_root(self, raw: str, root: Path, param: str) -> tuple[str, Path]:
        if "\x00" in raw:
            raise InvalidRequest("the adapter path contains a NUL byte", param=param)
        candidate = Path(raw)
        if ".." in candidate.parts:
            raise InvalidRequest(
                f"adapter path {raw!r} must not contain '..'; name a directory inside the "
                "adapter root",
                param=param,
            )
        joined = candidate if candidate.is_absolute() else root / candidate
        # resolve() follows symlinks, so a link pointing out of the root is caught too
        path = joined.resolve()
        if path != root and root not in path.parents:
            raise InvalidRequest(
                f"adapter path {raw!r} is outside the allowed adapter root", param=param
            )
        if path == root:
            raise InvalidRequest(
                "the adapter path must name a directory inside the root", param=param
            )
        _check_adapter_dir(path, raw, param)
        # a stable name per directory, so the engine keeps one LoRA id per adapter
        name = "path:" + os.path.relpath(path, root)
        return name, path


def _check_adapter_dir(path: Path, shown: str, param: str) -> None:
    if not path.is_dir():
        raise InvalidRequest(f"LoRA adapter {shown!r} does not exist", param=param)
    if not (path / ADAPTER_CONFIG).is_file():
        raise InvalidRequest(f"LoRA adapter {shown!r} has no {ADAPTER_CONFIG}", param=param)
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise InvalidRequest(
            f"LoRA adapter {shown!r} has no {ADAPTER_WEIGHTS}; only safetensors adapters "
            "are accepted",
            param=param,
        )
