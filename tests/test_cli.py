"""The `berth` command line: flags and environment variables from the settings classes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

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


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(SystemExit) as stopped:
        parse(["api", "--port", "eighty"])
    assert str(stopped.value.code) == (
        "berth api: --port: input should be a valid integer, unable to parse string as an "
        "integer (got 'eighty')"
    )
    with pytest.raises(SystemExit) as stopped:
        parse(["api", "--bogus", "1"])
    assert (
        str(stopped.value.code) == "berth api: unknown flag --bogus (berth api --help lists them)"
    )
    with pytest.raises(SystemExit) as stopped:
        parse(["worker", "--heartbeat-ttl", "3", "--heartbeat-interval", "2"])
    assert str(stopped.value.code).startswith("berth worker: heartbeat_interval must leave")
    with pytest.raises(SystemExit):
        parse(["worker", "--log-format", "xml"])


@pytest.mark.parametrize("role", sorted(_settings_classes()))
def test_help_lists_every_setting_as_a_kebab_case_flag(role: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "berth.cli", role, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in _settings_classes()[role].model_fields:
        assert f"--{name.replace('_', '-')}" in shown, name


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
