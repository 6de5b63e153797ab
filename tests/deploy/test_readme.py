"""The README's Compose and Kubernetes sections name files and profiles that exist."""

from __future__ import annotations

import re

from tests.deploy.compose import ROOT, resolved


def test_readme_names_existing_deploy_files() -> None:
    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"deploy/[\w./-]*\w", readme))
    assert len(paths) > 5
    # files the README has the reader make: `cp deploy/.env.example deploy/.env`
    paths -= {made for _, made in re.findall(r"\bcp (\S+) (\S+)", readme)}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_readme_profiles_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    profiles = set(re.findall(r"--profile (\w+)", readme))
    defined = {p for s in resolved()["services"].values() for p in s.get("profiles", [])}
    assert profiles and profiles <= defined
