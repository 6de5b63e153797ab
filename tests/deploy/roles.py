"""What a berth process in a deployment must be given: checked against berth's own settings."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from berth.api.settings import ApiSettings
from berth.cli import CheckArgs, parse
from berth.plumbing.settings import CommonSettings
from berth.scheduler.settings import SchedulerSettings
from berth.workers.settings import WorkerSettings

SETTINGS: dict[str, type[CommonSettings]] = {
    "api": ApiSettings,
    "scheduler": SchedulerSettings,
    "worker": WorkerSettings,
}
# the id `berth check` finds a role's liveness file (or its record in Redis) by
ID_VARIABLE = {"scheduler": "BERTH_SCHEDULER_ID", "worker": "BERTH_WORKER_ID"}


def role_of(command: list[str]) -> str:
    assert len(command) == 2 and command[0] == "berth" and command[1] in SETTINGS, command
    return command[1]


def settings_from(role: str, env: dict[str, str]) -> CommonSettings:
    """The role's settings from ``env``; every BERTH_ variable must be one of them.

    berth ignores unknown variables, so a misspelt one would silently do nothing.
    """
    cls = SETTINGS[role]
    given: dict[str, Any] = {}
    for name, value in env.items():
        if name in ("REDIS_URL", "BERTH_REDIS_URL"):
            given["redis_url"] = value
        elif name.startswith("BERTH_"):
            field = name.removeprefix("BERTH_").lower()
            assert field in cls.model_fields, f"berth {role} has no setting {name}"
            given[field] = value
    assert "redis_url" in given, f"berth {role} needs REDIS_URL"
    return cls(**given)


def check_health_command(role: str, argv: list[str], env: dict[str, str]) -> None:
    """``argv`` is `berth check <role>` with what it needs to find this very process."""
    assert argv[:3] == ["berth", "check", role], argv
    args = parse(argv[1:])
    assert isinstance(args, CheckArgs) and args.role == role, argv
    if role == "api":
        port = int(env.get("BERTH_PORT", ApiSettings.model_fields["port"].default))
        assert urlsplit(args.url).port == port, f"{argv} does not check port {port}"
    else:
        # a role's liveness never needs Redis: an outage must restart nothing
        assert args.local or args.health_file, f"{argv} checks the {role} through Redis"
        assert args.id or args.health_file or ID_VARIABLE[role] in env, (
            f"{argv} cannot know the {role}'s id"
        )
