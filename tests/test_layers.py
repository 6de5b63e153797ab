"""berth's folders keep to their arrows: which folder may import which.

The design in one table (docs/architecture.md, "Layers"): ``protocol/`` is data and
imports nothing else of berth's; ``plumbing/`` (what every process shares) imports
protocol only; ``store/`` (one owner per Redis record) imports protocol and plumbing;
``limits/`` (per-tenant limits, a concern that spans roles) adds store, as does ``webhooks/``
(signed end events, taken by the API and sent by the scheduler); the roles add limits and
webhooks where they use them and never import each other. berth/'s root holds the command,
which may import anything. Every ``berth.*`` import counts, at module level or inside a
function, as in the cycle test.
"""

from __future__ import annotations

from tests.test_imports import ROOT, _graph

# folder -> the folders its modules may import (its own always allowed)
ALLOWED: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "plumbing": frozenset({"protocol"}),
    "store": frozenset({"protocol", "plumbing"}),
    "limits": frozenset({"protocol", "plumbing", "store"}),
    "webhooks": frozenset({"protocol", "plumbing", "store"}),
    "api": frozenset({"protocol", "plumbing", "store", "limits", "webhooks"}),
    "scheduler": frozenset({"protocol", "plumbing", "store", "limits", "webhooks"}),
    "workers": frozenset({"protocol", "plumbing", "store"}),
}
# berth/'s root: the command (`berth api`, `berth up`, `berth check`, ...) and nothing else
COMMAND = frozenset(
    {"berth", "berth.__main__", "berth.cli", "berth.cli_words", "berth.local", "berth.check"}
)


def _folder(module: str) -> str:
    """The folder a module lives in (``berth.api.routes.chat`` -> ``api``), or the module
    itself for one at berth/'s root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or module not in COMMAND else module


def wrong_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points where its folder may not, as ``a -> b``."""
    wrong = []
    for module, targets in sorted(graph.items()):
        if module in COMMAND:
            continue
        folder = _folder(module)
        allowed = ALLOWED.get(folder, frozenset()) | {folder}
        wrong += [f"{module} -> {t}" for t in sorted(targets) if _folder(t) not in allowed]
    return wrong


def test_every_folder_has_its_arrows() -> None:
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ALLOWED), "a folder the layering does not know: add it to ALLOWED"


def test_the_root_holds_the_command_only() -> None:
    root = {f"berth.{p.stem}" if p.stem != "__init__" else "berth" for p in ROOT.glob("*.py")}
    assert root <= COMMAND, f"modules at berth/'s root that are not the command: {root - COMMAND}"


def test_no_import_points_the_wrong_way() -> None:
    wrong = wrong_arrows(_graph())
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_a_wrong_arrow_is_found() -> None:
    graph = {
        "berth.protocol.keys": {"berth.plumbing.redisconn"},
        "berth.store.jobs": {"berth.protocol.keys"},
        "berth.api.app": {"berth.workers.runtime", "berth.store.jobs"},
        "berth.cli": {"berth.workers.main"},
    }
    assert wrong_arrows(graph) == [
        "berth.api.app -> berth.workers.runtime",
        "berth.protocol.keys -> berth.plumbing.redisconn",
    ]
