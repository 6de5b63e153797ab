"""`berth worker` takes vLLM's own engine flags, read by vLLM's parser, and `--config FILE`.

(That they reach a running engine: test_engine_vllm.py, whose engine is configured this
way.) Marked ``engine``: vLLM's parser imports vLLM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.cli import parse
from berth.workers.settings import WorkerSettings

pytestmark = pytest.mark.engine


def _worker(*argv: str) -> WorkerSettings:
    settings = parse(["worker", *argv])
    assert isinstance(settings, WorkerSettings)
    return settings


def test_vllm_flags_become_engine_args_and_berths_stay_berths() -> None:
    s = _worker(
        *("--dtype", "float32", "--max-num-seqs=4", "--worker-id", "w1", "--enforce-eager"),
        *("--kv_cache_dtype", "auto", "--max-model-len", "512", "--no-enable-prefix-caching"),
    )
    assert s.engine_args == {
        "dtype": "float32",
        "enforce_eager": True,
        "kv_cache_dtype": "auto",
        "max_num_seqs": 4,
    }
    assert (s.worker_id, s.max_model_len, s.enable_prefix_caching) == ("w1", 512, False)


def test_no_vllm_flag_leaves_engine_args_empty() -> None:
    assert _worker("--worker-id", "w1").engine_args == {}


def test_an_unknown_flag_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _worker("--dtype", "float32", "--no-such-flag", "1")
    # a usage error, as argparse's: exit code 2, one line naming the flag
    assert exit_.value.code == 2
    assert "berth worker: unknown flag --no-such-flag" in capsys.readouterr().err


def test_a_bad_value_is_refused_with_vllms_words(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _worker("--max-num-seqs", "many")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("berth worker: ") and "--max-num-seqs" in err
    assert "invalid int value: 'many'" in err


def test_a_config_file_gives_flags_the_command_line_overrides(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("max_num_seqs: 8\nenforce_eager: true\nworker_id: from-file\nseed: 3\n")
    s = _worker("--config", str(config), "--seed", "7")
    assert s.worker_id == "from-file"
    assert s.engine_args == {"enforce_eager": True, "max_num_seqs": 8, "seed": 7}


def test_the_environment_is_the_base_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_ENGINE_ARGS", '{"max_num_seqs": 2, "quantization": null}')
    assert _worker().engine_args == {"max_num_seqs": 2, "quantization": None}
    assert _worker("--max-num-seqs", "6").engine_args == {"max_num_seqs": 6, "quantization": None}


def test_help_engine_lists_vllms_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _worker("--help-engine")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--max-num-seqs" in out and "--quantization" in out


def test_the_engine_schedules_by_priority_unless_the_worker_says_fcfs() -> None:
    from berth.workers.engine.vllm_engine import engine_settings
    from berth.workers.main import engine_config

    def policy(*argv: str) -> str:
        settings = engine_settings(engine_config(_worker("--model", "m", *argv)))
        return str(settings["scheduling_policy"])

    assert policy() == "priority"
    assert policy("--scheduling-policy", "fcfs") == "fcfs"
