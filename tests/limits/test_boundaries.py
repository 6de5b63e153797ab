"""The limits are a concern of their own (berth/limits/): they import protocol, store and
plumbing, never a role; the roles reach them through the package's entry point."""

from __future__ import annotations

import berth.limits
from tests.test_imports import _graph

_ROLES = ("berth.api", "berth.scheduler", "berth.workers")


def test_the_limits_import_no_role() -> None:
    graph = _graph()
    for module, targets in graph.items():
        if module == "berth.limits" or module.startswith("berth.limits."):
            roles = sorted(t for t in targets if t.startswith(_ROLES))
            assert not roles, f"{module} imports {roles}"


def test_the_roles_import_the_entry_point_only() -> None:
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith(_ROLES):
            inner = sorted(t for t in targets if t.startswith("berth.limits."))
            assert not inner, f"{module} imports {inner}: import them from berth.limits"


def test_the_entry_point_exports_what_it_names() -> None:
    assert all(hasattr(berth.limits, name) for name in berth.limits.__all__)
