"""The docs that describe the code keep up with it: the generated configuration reference
matches the settings classes, and the architecture's tree names every module."""

from __future__ import annotations

import re
from pathlib import Path

import berth
from scripts.config_reference import PAGE, render

ROOT = Path(berth.__file__).parent
ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"


def test_configuration_reference_is_current() -> None:
    assert PAGE.read_text() == render(), "run: python -m scripts.config_reference"


def tree_paths(page: str) -> set[str]:
    """The paths the architecture's tree (the code block under "## The tree") names: two
    spaces of indent per level, a name ending in / a folder."""
    block = page.split("## The tree", 1)[1].split("```", 2)[1]
    folders: list[str] = []
    paths: set[str] = set()
    for line in block.splitlines():
        found = re.match(r"( *)(\S+)", line)
        if found is None or found.group(2) == "berth/":
            continue
        depth = len(found.group(1)) // 2 - 1
        del folders[depth:]
        name = found.group(2)
        path = "/".join([*folders, name.rstrip("/")])
        paths.add(path)
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return paths


def test_the_architecture_tree_names_every_module() -> None:
    modules = {
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    named = tree_paths(ARCHITECTURE.read_text())
    assert not modules - named, f"docs/architecture.md's tree misses {sorted(modules - named)}"
    gone = {p for p in named if p.endswith(".py")} - modules
    assert not gone, f"docs/architecture.md's tree names modules that are gone: {sorted(gone)}"


def test_the_tree_is_read_as_a_tree() -> None:
    tree = ["berth/", "  cli.py   x", "  api/   y", "    routes/", "      chat.py  z", "    app.py"]
    page = "## The tree\n```\n" + "\n".join(tree) + "\n```"
    assert tree_paths(page) == {"cli.py", "api", "api/routes", "api/routes/chat.py", "api/app.py"}
