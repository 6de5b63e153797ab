"""Writes docs/configuration.md from the settings classes (run: python -m scripts.config_reference).

A test checks the page matches, so the reference never drifts from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from berth.cli import _HELP, _settings_classes

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `python -m scripts.config_reference`; "
        "do not edit by hand.",
        "",
        "Every setting is a flag of its role (`berth api --port 8080`) and an environment "
        "variable (`BERTH_PORT=8080`); a flag wins over the environment. `REDIS_URL` (or "
        "`BERTH_REDIS_URL`) names the Redis or Valkey server for every role.",
    ]
    for role, cls in _settings_classes().items():
        out += [
            "",
            f"## `berth {role}`",
            "",
            _HELP[role],
            "",
            "| flag | env | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, field in cls.model_fields.items():
            env = "REDIS_URL" if name == "redis_url" else f"BERTH_{name.upper()}"
            default = field.get_default(call_default_factory=False)
            shown = (
                "(generated)"
                if field.default_factory
                else ("—" if default is None else f"`{default}`")
            )
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `--{name.replace('_', '-')}` | `{env}` | {shown} | {desc} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    PAGE.write_text(render())
    sys.stdout.write(f"wrote {PAGE}\n")
