"""The roles reach the limits (berth/limits/) through the package's entry point only
(which folders limits itself may import: tests/test_layers.py)."""

from __future__ import annotations

import berth.limits
from tests.test_imports import _graph

_ROLES = ("berth.api", "berth.scheduler", "berth.workers")


def test_the_roles_import_the_entry_point_only() -> None:
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith(_ROLES):
            inner = sorted(t for t in targets if t.startswith("berth.limits."))
            assert not inner, f"{module} imports {inner}: import them from berth.limits"


def test_the_entry_point_exports_what_it_names() -> None:
    assert all(hasattr(berth.limits, name) for name in berth.limits.__all__)
