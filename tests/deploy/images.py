"""deploy/docker's Dockerfiles read as instructions."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.compose import DEPLOY

DOCKER = DEPLOY / "docker"
Instruction = tuple[str, str]


def instructions(path: Path) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def final_stage(path: Path) -> list[Instruction]:
    steps = instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def stages(path: Path) -> dict[str, list[Instruction]]:
    """Each named stage's instructions, from its FROM to the next; the last one as ``""``."""
    result: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            words = args.split()
            current = []
            result[words[-1] if len(words) == 3 and words[1].upper() == "AS" else ""] = current
        current.append((keyword, args))
    return result
