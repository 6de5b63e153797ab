"""The `berth` command line: flags and environment variables from the settings classes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from annotated_types import Ge, Gt
from pydantic import BaseModel

from berth.api.settings import ApiSettings
from berth.cli import CheckArgs, _settings_classes, main, parse
from berth.local import UpSettings
from berth.plumbing.liveness import LivenessFile, proof_path
from berth.workers.settings import WorkerSettings


def test_an_empty_string_is_a_string_not_json() -> None:
    settings = parse(["api", "--api-keys", "", "--admin-keys", "[not json"])
    assert isinstance(settings, ApiSettings)
    assert settings.api_keys == ""
    assert settings.admin_keys == "[not json"


def test_dict_and_model_settings_read_json(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = parse(["worker", "--adapters", '{"support": "/adapters/support"}'])
    assert isinstance(worker, WorkerSettings)
    assert worker.adapters == {"support": "/adapters/support"}
    monkeypatch.setenv("BERTH_ADAPTERS", "")
    worker = parse(["worker"])
    assert isinstance(worker, WorkerSettings) and worker.adapters == {}
    api = parse(["api", "--request-limits", '{"max_tools": 3}'])
    assert isinstance(api, ApiSettings) and api.request_limits.max_tools == 3


def test_environment_names_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_PORT", "9001")
    monkeypatch.setenv("BERTH_MAX_N", "4")
    monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/2")
    monkeypatch.setenv("BERTH_LOG_FORMAT", "json")
    # a variable named like a subcommand must not choose or fill one
    monkeypatch.setenv("API", '{"port": 1}')
    api = parse(["api", "--port", "9002", "--allow-anonymous"])
    assert isinstance(api, ApiSettings)
    assert (api.port, api.max_n, api.redis_url) == (9002, 4, "redis://env-host:6379/2")
    assert api.allow_anonymous and api.log_format == "json"
    up = parse(["up", "--fake-engine", "--redis-url", "redis://flag-host"])
    assert isinstance(up, UpSettings)
    assert up.fake_engine and up.redis_url == "redis://flag-host" and up.port == 9001


def test_boolean_flags_turn_off() -> None:
    worker = parse(["worker", "--no-enable-prefix-caching"])
    assert isinstance(worker, WorkerSettings) and worker.enable_prefix_caching is False


def test_check_takes_a_role_and_its_id() -> None:
    check = parse(["check", "worker", "--id", "w-1", "--redis-url", "redis://x"])
    assert check == CheckArgs(role="worker", id="w-1", redis_url="redis://x")


def test_local_check_reads_the_liveness_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BERTH_HEALTH_FILE", raising=False)
    monkeypatch.delenv("BERTH_SCHEDULER_ID", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # read TMPDIR again, as the role and a probe process would
    try:
        proof = proof_path("scheduler", "s-1")
        assert proof.parent == tmp_path
        check = ["check", "scheduler", "--local", "--id", "s-1"]
        assert main(check) == 1  # not started
        LivenessFile(proof, "scheduler", "s-1").refresh()
        assert main(check) == 0
        # no Redis is asked: none is given, and the check still answers
        old = time.time() - 31
        os.utime(proof, (old, old))
        assert main(check) == 1
        assert main([*check, "--max-age", "60"]) == 0
        assert main(["check", "scheduler", "--health-file", str(proof), "--max-age", "60"]) == 0
        assert main(["check", "scheduler", "--local"]) == 2  # no id, no file: a usage error
    finally:
        tempfile.tempdir = None


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What the command line answers ``argv`` with: one line on stderr, exit code 2."""
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


def test_bad_values_name_the_flag_and_what_it_takes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _refused(["api", "--port", "eighty"], capsys) == (
        "berth api: --port must be an integer, got 'eighty'"
    )
    assert _refused(["api", "--bogus", "1"], capsys) == (
        "berth api: unknown flag --bogus (berth api --help lists them)"
    )
    assert _refused(["worker", "--heartbeat-ttl", "3", "--heartbeat-interval", "2"], capsys)
    assert _refused(["worker", "--log-format", "xml"], capsys) == (
        "berth worker: --log-format must be one of text, json, got 'xml'"
    )
    assert _refused(["worker", "--gpu-memory-utilization", "1.5"], capsys) == (
        "berth worker: --gpu-memory-utilization must be a number > 0 and <= 1, got '1.5'"
    )
    assert _refused(["worker", "--adapters", "not json"], capsys) == (
        "berth worker: --adapters must be a JSON object, got 'not json'"
    )
    assert _refused(["api", "--request-limits.max-tools", "x"], capsys) == (
        "berth api: --request-limits.max-tools must be an integer >= 1, got 'x'"
    )
    assert _refused(["check", "bogus"], capsys) == (
        "berth check: ROLE must be one of api, scheduler, worker, got 'bogus'"
    )


def test_a_nested_settings_flag_is_taken() -> None:
    api = parse(["api", "--request-limits.max-tools", "5"])
    assert isinstance(api, ApiSettings) and api.request_limits.max_tools == 5


_COMMANDS: dict[str, type[BaseModel]] = {**_settings_classes(), "check": CheckArgs}


def _bounded_number(command: type[BaseModel]) -> tuple[str, str]:
    """A flag of ``command`` that takes a bounded number, and what an error says it takes."""
    for name, field in command.model_fields.items():
        bound = next((m for m in field.metadata if isinstance(m, Ge | Gt)), None)
        if field.annotation in (int, float) and bound is not None:
            noun = "an integer" if field.annotation is int else "a number"
            sign, value = (">=", bound.ge) if isinstance(bound, Ge) else (">", bound.gt)
            return "--" + name.replace("_", "-"), f"{noun} {sign} {value}"
    raise AssertionError(f"{command.__name__} has no bounded number")


@pytest.mark.parametrize("role", sorted(_COMMANDS))
def test_every_role_refuses_a_bad_value_in_one_line(
    role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flag, takes = _bounded_number(_COMMANDS[role])
    argv = [role, "worker"] if role == "check" else [role]
    answer = _refused([*argv, flag, "x"], capsys)
    assert answer == f"berth {role}: {flag} must be {takes}, got 'x'"


# a value named by its Python type, as pydantic-settings names it
_TYPE_METAVAR = re.compile(r"--[\w.-]+ (int|str|float|bool|dict\[|list\[)")


@pytest.mark.parametrize("role", sorted(_COMMANDS))
def test_help_reads_as_vllm_help_does(role: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "berth.cli", role, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flat = " ".join(shown.split())
    for name in _COMMANDS[role].model_fields:
        if not _COMMANDS[role].model_fields[name].is_required():
            assert f"--{name.replace('_', '-')}" in shown, name
    assert "(default: null)" not in flat and "default factory" not in flat
    assert not _TYPE_METAVAR.search(flat), _TYPE_METAVAR.search(flat)
    # a default is shown where it is a value
    assert "(default: " in flat
    assert "--redis-url URL" in flat and "--log-format {text,json}" in flat or role == "check"


def test_worker_help_says_what_each_flag_takes() -> None:
    shown = " ".join(
        subprocess.run(
            [sys.executable, "-m", "berth.cli", "worker", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )
    for usage in (
        "--capacity N",
        "--heartbeat-ttl SECONDS",
        "--gpu-memory-utilization FRACTION",
        "--adapters JSON",
        "--adapter-root DIR",
        "--health-file FILE",
        "--model MODEL",
        "--vllm-otlp-traces-endpoint URL",
    ):
        assert usage in shown, usage
    assert "Requests the worker accepts at once. (default: 256)" in shown
    # unset means what the description says, not "null"
    assert "gibberish output). --" in shown


def test_no_subcommand_is_an_error_that_lists_them() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "berth.cli"], capture_output=True, text=True, check=False
    )
    assert answer.returncode != 0
    assert "up, api, scheduler, worker, check" in answer.stdout + answer.stderr


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        parse(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"berth {version('berth')}\n"
