"""The model catalog's entries: the models (and their LoRA adapters) berth offers whether or
not a worker runs them now. Declared in the file named by ``BERTH_MODELS_FILE`` and through
the admin API; a request for a declared model with no live worker waits for one.

    models:
      - name: qwen2.5-7b
        adapters: [sql-lora, {name: chat-lora, path: /adapters/chat}]
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# a model's served name: what clients put in `model` (a Hugging Face id has a '/'); printable,
# no spaces, short enough for a Redis key and a metric label
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
# an adapter's name, as the admin API's adapter registry takes it
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"a model name must be 1-200 letters, digits or '._:/@+-', starting with a letter "
            f"or digit, got {name[:200]!r}"
        )
    return name


class CatalogAdapter(BaseModel):
    """A LoRA adapter of a declared model: its name, and its directory on the workers
    (absent: one the workers configure themselves)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not ADAPTER_NAME.fullmatch(name):
            raise ValueError(
                f"an adapter name must be 1-128 letters, digits, '.', '_' or '-', got {name!r}"
            )
        return name

    @field_validator("path")
    @classmethod
    def _path(cls, path: str | None) -> str | None:
        if path is not None and (not path.startswith("/") or ".." in path.split("/")):
            raise ValueError(f"an adapter path must be absolute, without '..', got {path!r}")
        return path


class CatalogModel(BaseModel):
    """One declared model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    adapters: tuple[CatalogAdapter, ...] = Field(default=())

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_model_name(name)

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters(cls, value: Any) -> Any:
        """An adapter is a name, or a mapping {name, path}."""
        if isinstance(value, list | tuple):
            return [{"name": a} if isinstance(a, str) else a for a in value]
        return value

    def adapter_names(self) -> set[str]:
        return {a.name for a in self.adapters}


class CatalogError(ValueError):
    """A catalog that cannot be read: the message says where and what is allowed."""


def parse_catalog(data: Any, source: str = "the catalog") -> list[CatalogModel]:
    """The entries of a catalog document (``{"models": [...]}``, as loaded from YAML or
    JSON); raises CatalogError naming the entry and field that is wrong."""
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"models"}:
        raise CatalogError(f"{source}: expected a mapping with one key, 'models'")
    entries = data.get("models") or []
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: 'models' must be a list of {{name, adapters}}")
    models: list[CatalogModel] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        try:
            models.append(CatalogModel.model_validate(entry))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise CatalogError(f"{source}: models[{index}].{where}: {message}") from None
    names = [m.name for m in models]
    if len(names) != len(set(names)):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CatalogError(f"{source}: models named more than once: {', '.join(twice)}")
    owners: dict[str, str] = {}
    for model in models:
        for name in model.adapter_names():
            if name in owners or name in names:
                raise CatalogError(
                    f"{source}: adapter {name!r} of {model.name!r} is also "
                    f"{'a model' if name in names else f'an adapter of {owners[name]!r}'}"
                )
            owners[name] = model.name
    return models
