"""Reads the model catalog file (``BERTH_MODELS_FILE``, YAML or JSON) every role seeds the
catalog from at its start; a file that cannot be read stops the role with a message that
says where it is wrong."""

from __future__ import annotations

from pathlib import Path

import yaml

from berth.protocol.catalog import CatalogError, CatalogModel, parse_catalog


def read_models_file(path: str | None) -> list[CatalogModel]:
    """The file's entries (none when ``path`` is unset); SystemExit when it is unreadable."""
    if not path:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SystemExit(f"BERTH_MODELS_FILE {path}: {err.strerror or err}") from None
    try:
        # JSON is YAML: one loader reads both
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SystemExit(f"BERTH_MODELS_FILE {path}: not YAML or JSON: {err}") from None
    try:
        return parse_catalog(data, f"BERTH_MODELS_FILE {path}")
    except CatalogError as err:
        raise SystemExit(str(err)) from None
