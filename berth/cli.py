"""The `berth` command: one subcommand per role, plus `up` for the whole stack locally.

Every flag is generated from the role's settings class, so flags, environment
variables (BERTH_<NAME>) and defaults stay one fact each.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic.fields import FieldInfo

from berth.settings import CommonSettings


def _settings_classes() -> dict[str, type[CommonSettings]]:
    from berth.api.settings import ApiSettings
    from berth.local import UpSettings
    from berth.scheduler.settings import SchedulerSettings
    from berth.workers.settings import WorkerSettings

    return {
        "api": ApiSettings,
        "scheduler": SchedulerSettings,
        "worker": WorkerSettings,
        "up": UpSettings,
    }


_HELP = {
    "api": "Run the HTTP API (OpenAI-compatible /v1/chat/completions).",
    "scheduler": "Run a scheduler replica: read queued requests, group them, dispatch to workers.",
    "worker": "Run a worker: one vLLM engine fed by Celery tasks.",
    "up": "Run the whole stack on this machine (embedded Valkey, tiny model if none given).",
}


def _is_bool(field: FieldInfo) -> bool:
    return field.annotation is bool


def _add_flags(parser: argparse.ArgumentParser, cls: type[CommonSettings]) -> None:
    for name, field in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "REDIS_URL" if name == "redis_url" else f"BERTH_{name.upper()}"
        default = field.get_default(call_default_factory=False)
        shown = "" if default is None or callable(default) else f" Default: {default}."
        help_text = f"{field.description or ''}{shown} Env: {env}."
        if _is_bool(field):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)


def _settings(cls: type[CommonSettings], args: argparse.Namespace) -> CommonSettings:
    given: dict[str, Any] = {}
    for name in cls.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, str) and value[:1] in "{[":
            value = json.loads(value)
        given[name] = value
    return cls(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth",
        description="Queue-based, OpenAI-compatible LLM serving. "
        "Start with `berth up` to run everything locally.",
    )
    sub = parser.add_subparsers(
        dest="role", required=True, metavar="{up,api,scheduler,worker,check}"
    )
    for role, cls in _settings_classes().items():
        _add_flags(sub.add_parser(role, help=_HELP[role], description=_HELP[role]), cls)
    check = sub.add_parser(
        "check",
        help="Exit 0 if a role is healthy (for liveness probes).",
        description="Exit 0 if a role is healthy, 1 if not: the API answers /health; a worker "
        "or scheduler refreshed its record in Redis recently (looked up by its id).",
    )
    check.add_argument("check_role", choices=["api", "scheduler", "worker"])
    check.add_argument("--url", default="http://127.0.0.1:8000", help="API base URL.")
    check.add_argument("--redis-url", dest="redis_url", default=None, help="Env: REDIS_URL.")
    check.add_argument(
        "--id",
        dest="role_id",
        default=None,
        help="Worker or scheduler id. Env: BERTH_WORKER_ID / BERTH_SCHEDULER_ID.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from berth.settings import setup_logging

    args = build_parser().parse_args(argv)
    if args.role == "check":
        import os

        from berth.check import run_check

        env_id = f"BERTH_{args.check_role.upper()}_ID"
        return run_check(
            args.check_role,
            url=args.url,
            redis_url=args.redis_url
            or os.environ.get("REDIS_URL")
            or os.environ.get("BERTH_REDIS_URL"),
            role_id=args.role_id or os.environ.get(env_id),
        )
    cls = _settings_classes()[args.role]
    settings = _settings(cls, args)
    setup_logging(settings.log_level, args.role)
    if args.role != "up":
        from berth.lifeline import watch_parent

        # started by `berth up`: stop when it is gone, even if it was killed
        watch_parent()
    if args.role == "api":
        import uvicorn

        from berth.api.app import create_app
        from berth.api.settings import ApiSettings

        assert isinstance(settings, ApiSettings)
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    elif args.role == "scheduler":
        from berth import eventloop
        from berth.scheduler.service import serve
        from berth.scheduler.settings import SchedulerSettings

        assert isinstance(settings, SchedulerSettings)
        eventloop.run(serve(settings))
    elif args.role == "worker":
        from berth.workers.main import run_worker
        from berth.workers.settings import WorkerSettings

        assert isinstance(settings, WorkerSettings)
        run_worker(settings)
    else:
        from berth.local import UpSettings, run_up

        assert isinstance(settings, UpSettings)
        return run_up(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
