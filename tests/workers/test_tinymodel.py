"""The generated tiny model: files, tokenizer, chat template, adapters, cache and races."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.workers import tinymodel
from berth.workers.tinymodel import TinyModel, ensure_tiny_model


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Generated from scratch (not from the shared cache), to test the generator itself."""
    return ensure_tiny_model(tmp_path_factory.mktemp("cache"))


def test_layout(fresh: TinyModel) -> None:
    assert fresh.name == "berth-tiny"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (fresh.path / name).is_file(), name
    assert sorted(fresh.adapters) == ["tiny-lora-a", "tiny-lora-b"]
    for path in fresh.adapters.values():
        assert (path / "adapter_model.safetensors").is_file()
        assert not (path / "adapter_model.bin").exists()


def test_model_shape(fresh: TinyModel) -> None:
    config = json.loads((fresh.path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] == 128 and config["num_attention_heads"] == 2
    assert config["head_dim"] == 64  # vLLM's CPU attention rejects 16
    assert config["num_hidden_layers"] == 2 and config["max_position_embeddings"] == 2048
    assert 350 <= config["vocab_size"] <= 512


def test_adapter_config(fresh: TinyModel) -> None:
    for path in fresh.adapters.values():
        config = json.loads((path / "adapter_config.json").read_text())
        assert config["r"] == 8
        assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
        assert config["base_model_name_or_path"] == "berth-tiny"


def test_adapters_differ(fresh: TinyModel) -> None:
    from safetensors.numpy import load_file

    a = load_file(fresh.adapters["tiny-lora-a"] / "adapter_model.safetensors")
    b = load_file(fresh.adapters["tiny-lora-b"] / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # init_lora_weights=False: B is not zero, so the adapter changes the output
    b_weights = [k for k in a if "lora_B" in k]
    assert b_weights and all(abs(a[k]).sum() > 0 for k in b_weights)
    assert any((a[k] != b[k]).any() for k in a)


def test_special_tokens(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "<|im_end|>", "<pad>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in tinymodel.MARKUP_TOKENS}
    assert len(set(ids.values())) == 4 and tok.unk_token_id not in ids.values()
    # markup survives skip_special_tokens, so the parsers see it
    text = "a<tool_call>b</tool_call><think>c</think>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_string_round_trips(tiny_tokenizer: Any, text: str) -> None:
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert all(0 <= i < len(tiny_tokenizer) for i in ids)
    assert tiny_tokenizer.decode(ids) == text


def test_cached_after_the_first_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_generate(root: Path) -> None:
        calls.append(root)
        (root / "model").mkdir()

    monkeypatch.setattr(tinymodel, "_generate", fake_generate)
    first = ensure_tiny_model(tmp_path)
    second = ensure_tiny_model(tmp_path)
    assert first == second and len(calls) == 1
    assert first.path == tmp_path / tinymodel.GENERATOR_VERSION / "model"
    # no temporary folders are left behind
    assert [p.name for p in tmp_path.iterdir()] == [tinymodel.GENERATOR_VERSION]


def test_a_new_generator_version_regenerates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tinymodel, "_generate", lambda root: (root / "model").mkdir())
    old = ensure_tiny_model(tmp_path)
    monkeypatch.setattr(tinymodel, "GENERATOR_VERSION", "tiny-llama-test-next")
    new = ensure_tiny_model(tmp_path)
    assert old.path != new.path and new.path.parent.name == "tiny-llama-test-next"


def test_concurrent_generation_is_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    barrier = threading.Barrier(4)

    def slow_generate(root: Path) -> None:
        barrier.wait()  # all four generate at once, then race to rename
        (root / "model").mkdir()
        (root / "model" / "writer").write_text(root.name)
        time.sleep(0.01)

    monkeypatch.setattr(tinymodel, "_generate", slow_generate)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_tiny_model(tmp_path), range(4)))
    assert len({r.path for r in results}) == 1
    assert (results[0].path / "writer").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [tinymodel.GENERATOR_VERSION]


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_CACHE_DIR", str(tmp_path / "env-cache"))
    assert tinymodel.default_cache_dir() == tmp_path / "env-cache"
    monkeypatch.delenv("BERTH_CACHE_DIR")
    assert tinymodel.default_cache_dir() == Path.home() / ".cache" / "berth"


def test_generation_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(root: Path) -> None:
        (root / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tinymodel, "_generate", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_tiny_model(tmp_path)
    assert list(tmp_path.iterdir()) == []
