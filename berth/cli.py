"""The `berth` command: one subcommand per role, plus `up` for the whole stack locally and
`check` for probes.

pydantic-settings builds the command line from each role's settings class (CliApp,
CliSubCommand), so flags, environment variables (BERTH_<NAME>, REDIS_URL) and defaults stay
one fact each; only list and dict settings read their flag's value as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliPositionalArg,
    CliSettingsSource,
    CliSubCommand,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    get_subcommand,
)

from berth import cli_words
from berth.plumbing.liveness import MAX_AGE_S
from berth.plumbing.settings import CommonSettings


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
    "worker": "Run a worker: one vLLM engine fed by Celery tasks. Every vLLM engine flag "
    "(--dtype, --quantization, --max-num-seqs, ...; `berth worker --help-engine` lists them) "
    "and --config FILE (YAML) are taken as well.",
    "up": "Run the whole stack on this machine (embedded Valkey, tiny model if none given).",
}
_ROOT_HELP = (
    "Queue-based, OpenAI-compatible LLM serving. Start with `berth up` to run everything "
    "locally (`berth --version` prints the version). Every flag is also an environment "
    "variable: BERTH_ and the flag's name in capitals (--max-n: BERTH_MAX_N; --redis-url: "
    "REDIS_URL); a flag wins over the environment."
)
_ORDER = ("up", "api", "scheduler", "worker")
_CLI_CONFIG = SettingsConfigDict(
    cli_prog_name="berth",
    cli_kebab_case=True,
    cli_implicit_flags=True,
    cli_hide_none_type=True,
    cli_avoid_json=False,
)


class CheckArgs(BaseModel):
    """Exit 0 if a role is healthy, 1 if not: the API answers /health; a worker or
    scheduler refreshed its local proof of life recently (--local: no Redis needed, for
    liveness probes), or else its record in Redis (looked up by its id)."""

    role: CliPositionalArg[Literal["api", "scheduler", "worker"]]
    url: str = Field(default="http://127.0.0.1:8000", description="API base URL.")
    redis_url: str | None = Field(default=None, description="Env: REDIS_URL.")
    id: str | None = Field(
        default=None,
        description="Worker or scheduler id. Env: BERTH_WORKER_ID / BERTH_SCHEDULER_ID.",
    )
    local: bool = Field(
        default=False,
        description="Worker or scheduler: check the liveness file the process refreshes "
        "beside itself instead of its record in Redis (implied by --health-file).",
    )
    health_file: str | None = Field(
        default=None,
        description="The liveness file to check (the role's --health-file). Env: "
        "BERTH_HEALTH_FILE. Default: found by the role's id in the temp directory.",
    )
    max_age: float = Field(
        default=MAX_AGE_S,
        gt=0,
        description="--local: seconds since the last refresh past which the role is unhealthy.",
    )


class _Root(BaseSettings):
    """The root command: its subcommands are added by _command."""

    model_config = _CLI_CONFIG

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the root has no settings of its own: no environment variable may choose or fill a
        # subcommand (each role's class reads its own BERTH_* variables)
        return (init_settings,)


def _command() -> type[BaseSettings]:
    """The root command, one subcommand per role; built on demand so `import berth.cli`
    stays cheap."""
    classes = _settings_classes()
    # CliSubCommand[X] is a typing alias that mypy cannot apply to a class held in a variable
    roles: dict[str, Any] = {
        role: (CliSubCommand[classes[role]], Field(description=_HELP[role]))  # type: ignore[misc, valid-type]
        for role in _ORDER
    }
    check = (
        CliSubCommand[CheckArgs],  # type: ignore[misc]
        Field(description="Exit 0 if a role is healthy (for probes)."),
    )
    return create_model("Berth", __base__=_Root, __doc__=_ROOT_HELP, **roles, check=check)


def _berth_flags(settings: type[BaseModel]) -> set[str]:
    """The flags pydantic-settings makes of a settings class (kebab case, ``--no-`` for
    booleans), and help."""
    flags = {"-h", "--help"}
    for name, field in settings.model_fields.items():
        for spelled in {
            name,
            *(a for a in (field.alias, field.validation_alias) if isinstance(a, str)),
        }:
            flag = "--" + spelled.lower().replace("_", "-")
            flags |= {flag, "--no-" + flag[2:]}
        # a nested model's fields are flags of their own: --request-limits.max-tools
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            prefix = "--" + name.replace("_", "-") + "."
            inner = _berth_flags(field.annotation) - {"-h", "--help"}
            flags |= {prefix + flag.removeprefix("--") for flag in inner}
    return flags


def _with_engine_flags(args: list[str]) -> list[str]:
    """A worker's command line with vLLM's engine flags (and ``--config`` files) folded
    into berth's ``--engine-args``; vLLM's parser is imported only when there are any."""
    from berth.workers.settings import WorkerSettings

    ours = _berth_flags(WorkerSettings)
    if "--help-engine" in args:
        from berth.workers.engine.flags import engine_help

        print(engine_help())
        raise SystemExit(0)
    if not _unknown_flags(args, ours):
        return args
    from berth.workers.engine.flags import EngineFlagError, expand_config, split_engine_flags

    try:
        rest, engine_args = split_engine_flags(expand_config(args[1:]), ours)
    except EngineFlagError as err:
        cli_words.usage_error("worker", str(err))
    if not engine_args:
        return [args[0], *rest]
    # the environment's BERTH_ENGINE_ARGS is the base; the command line's flags win
    env = os.environ.get("BERTH_ENGINE_ARGS", "").strip()
    merged = (json.loads(env) if env else {}) | engine_args
    return [args[0], *rest, "--engine-args", json.dumps(merged, default=str)]


def _unknown_flags(args: Sequence[str], known: set[str]) -> list[str]:
    return [
        name
        for name in (t.partition("=")[0].replace("_", "-") for t in args if t.startswith("--"))
        if name not in known
    ]


def _served_names_joined(args: list[str]) -> list[str]:
    """vLLM's ``--served-model-name a b`` (several names, space separated) as berth's one
    value ``a,b``; a worker takes no positional argument, so the words after the flag up to
    the next flag are its names."""
    out: list[str] = []
    names: list[str] | None = None
    for token in args:
        if names is not None and not token.startswith("-"):
            names.append(token)
            continue
        if names is not None:
            out.append(",".join(names))
            names = None
        out.append(token)
        if token == "--served-model-name":
            names = []
    if names is not None:
        out.append(",".join(names))
    return out


def parse(argv: Sequence[str] | None = None) -> BaseModel:
    """The chosen subcommand's settings (or CheckArgs), from flags and the environment."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        print(f"berth {version('berth')}")
        raise SystemExit(0)
    if args[:1] == ["worker"]:
        args = _with_engine_flags(_served_names_joined(args))
    classes: dict[str, type[BaseModel]] = {**_settings_classes(), "check": CheckArgs}
    role = args[0] if args and args[0] in classes else None
    if role is not None and role not in ("worker", "check"):
        # argparse would answer an unknown flag with the root command's usage
        unknown = _unknown_flags(args[1:], _berth_flags(classes[role]))
        if unknown:
            cli_words.usage_error(
                role, f"unknown flag {unknown[0]} (berth {role} --help lists them)"
            )
    command = _command()
    source: CliSettingsSource[argparse.ArgumentParser] = CliSettingsSource(
        command, case_sensitive=False
    )
    for name, parser in cli_words.subcommands(source.root_parser).items():
        cli_words.reword_help(parser, classes[name])
    try:
        chosen = get_subcommand(CliApp.run(command, cli_args=args, cli_settings_source=source))
    except ValidationError as err:
        cli_words.usage_error(role, cli_words.invalid(role, classes.get(role or ""), err))
    except SettingsError as err:
        cli_words.usage_error(None, str(err))
    assert isinstance(chosen, BaseModel)  # a subcommand is required: get_subcommand raises
    return chosen


def _keep_our_logging(**_: object) -> None:
    """Celery's setup_logging receiver: ours is already in place."""


def main(argv: Sequence[str] | None = None) -> int:
    from berth.plumbing.settings import setup_logging

    chosen = parse(argv)
    if isinstance(chosen, CheckArgs):
        from berth.check import LocalCheck, run_check

        health_file = chosen.health_file or os.environ.get("BERTH_HEALTH_FILE")
        return run_check(
            chosen.role,
            url=chosen.url,
            redis_url=chosen.redis_url
            or os.environ.get("REDIS_URL")
            or os.environ.get("BERTH_REDIS_URL"),
            role_id=chosen.id or os.environ.get(f"BERTH_{chosen.role.upper()}_ID"),
            local=LocalCheck(health_file, chosen.max_age)
            if chosen.local or chosen.health_file
            else None,
        )
    assert isinstance(chosen, CommonSettings)
    role = next(name for name, cls in _settings_classes().items() if type(chosen) is cls)
    setup_logging(chosen, role)
    if role != "up":
        from berth.plumbing import tracing

        # the OTEL_* variables decide; unset, nothing is installed and tracing costs nothing
        tracing.setup(role)
    if role != "up":
        from berth.plumbing.lifeline import watch_parent

        # started by `berth up`: stop when it is gone, even if it was killed
        watch_parent()
    if role == "api":
        from berth.api.serve import run_api
        from berth.api.settings import ApiSettings

        assert isinstance(chosen, ApiSettings)
        return run_api(chosen)
    elif role == "scheduler":
        from berth.plumbing import eventloop
        from berth.scheduler.service import serve
        from berth.scheduler.settings import SchedulerSettings

        assert isinstance(chosen, SchedulerSettings)
        eventloop.run(serve(chosen))
    elif role == "worker":
        from celery import signals as celery_signals

        from berth.workers.main import run_worker
        from berth.workers.settings import WorkerSettings

        assert isinstance(chosen, WorkerSettings)
        # a receiver of this signal tells Celery to leave the logging set up above alone
        celery_signals.setup_logging.connect(_keep_our_logging, weak=False)
        run_worker(chosen)
    else:
        from berth.local import UpSettings, run_up

        assert isinstance(chosen, UpSettings)
        return run_up(chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
