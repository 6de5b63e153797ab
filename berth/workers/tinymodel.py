"""A tiny random-weight Llama with its own tokenizer, chat template and LoRA adapters.

No model can be downloaded on the machines berth is developed and tested on, so
this module builds one locally in a few seconds: a 2-layer Llama (hidden 128,
2 heads of dimension 64 — vLLM's CPU attention rejects smaller heads), a
byte-level BPE tokenizer trained on a built-in text (so any string encodes), a
ChatML chat template that knows tools, tool calls and thinking, and two LoRA
adapters. The text it generates is gibberish; every code path that touches the
engine — loading, scheduling, LoRA, structured outputs, tool and reasoning
parsing, abort — is real.

The result is cached under ``$BERTH_CACHE_DIR`` (default ``~/.cache/berth``) in
a folder named after :data:`GENERATOR_VERSION`, so changing the generator means
bumping that string. Two processes may race to generate: each builds into its
own temporary folder and the first atomic rename wins.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Bump whenever the generated files would change.
GENERATOR_VERSION = "tiny-llama-v2"

MODEL_NAME = "berth-tiny"
ADAPTER_NAMES = ("tiny-lora-a", "tiny-lora-b")

BOS = "<s>"
EOS = "<|im_end|>"
PAD = "<pad>"
IM_START = "<|im_start|>"
# Markup the tool-call (hermes) and reasoning (deepseek_r1 / qwen3) parsers look
# for; each must be a single token of the vocabulary.
MARKUP_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>")

TARGET_VOCAB = 384

# ChatML, as Hermes / Qwen models use it. Tools go into the system prompt; an
# assistant turn's tool calls are rendered as <tool_call> JSON blocks; tool
# results come back in a "tool" turn. `enable_thinking=false` pre-fills an empty
# think block, as Qwen3 does; `reasoning_effort` is written into the system turn.
CHAT_TEMPLATE = r"""
{%- macro render_content(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable and content is not mapping -%}
{%- for part in content -%}
{%- if part is mapping and part.get('type') == 'text' -%}{{ part['text'] }}
{%- elif part is string -%}{{ part }}
{%- endif -%}
{%- endfor -%}
{%- elif content is not none -%}{{ content }}
{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system='', rest_start=0) -%}
{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}
{%- set ns.system = render_content(messages[0]['content']) -%}
{%- set ns.rest_start = 1 -%}
{%- endif -%}
{%- if tools or ns.system or reasoning_effort is defined and reasoning_effort -%}
{{- '<|im_start|>system\n' -}}
{{- ns.system -}}
{%- if reasoning_effort is defined and reasoning_effort -%}
{{- '\nReasoning effort: ' + reasoning_effort -}}
{%- endif -%}
{%- if tools -%}
{{- '\n\n# Tools\n\nYou may call one or more functions. ' -}}
{{- 'Function signatures are inside <tools></tools>:\n<tools>' -}}
{%- for tool in tools -%}
{{- '\n' -}}{{- (tool['function'] if tool['function'] is defined else tool) | tojson -}}
{%- endfor -%}
{{- '\n</tools>\n\nFor each call, return a JSON object with the function name and ' -}}
{{- 'arguments inside <tool_call></tool_call> tags:\n<tool_call>\n' -}}
{{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' -}}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages[ns.rest_start:] -%}
{%- set role = 'system' if message['role'] == 'developer' else message['role'] -%}
{{- '<|im_start|>' + role + '\n' -}}
{%- if role == 'assistant' and message.get('reasoning_content') -%}
{{- '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' -}}
{%- endif -%}
{{- render_content(message.get('content')) -}}
{%- if role == 'assistant' and message.get('tool_calls') -%}
{%- for call in message['tool_calls'] -%}
{%- set fn = call['function'] if call['function'] is defined else call -%}
{{- '\n<tool_call>\n{"name": "' + fn['name'] + '", "arguments": ' -}}
{%- if fn['arguments'] is string -%}{{- fn['arguments'] -}}
{%- else -%}{{- fn['arguments'] | tojson -}}
{%- endif -%}
{{- '}\n</tool_call>' -}}
{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}
{{- '<think>\n\n</think>\n\n' -}}
{%- endif -%}
{%- endif -%}
""".strip()

# Training text for the tokenizer: enough English, JSON and code for useful
# merges; the byte-level alphabet covers everything else.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A tiny model serves many users.
Hello, world! How are you today? I am fine, thank you. What is the weather like?
The scheduler groups queued requests by model and adapter and sends them to a worker.
Every stream ends with exactly one terminal event: finished, error, or cancelled.
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
def main():\n    return [1, 2, 3]\n\nfor i in range(10):\n    print(i)\n
You are a helpful assistant. Think step by step, then answer the question.
system user assistant tool developer function arguments content reasoning
0123456789 true false null yes no the of and to in is it that for on with as
"""


@dataclass(frozen=True, slots=True)
class TinyModel:
    """Where the generated model and its adapters live."""

    path: Path
    name: str = MODEL_NAME
    adapters: dict[str, Path] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """``$BERTH_CACHE_DIR``, or ``~/.cache/berth``."""
    env = os.environ.get("BERTH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "berth"


def _layout(root: Path) -> TinyModel:
    return TinyModel(
        path=root / "model",
        adapters={name: root / "adapters" / name for name in ADAPTER_NAMES},
    )


def ensure_tiny_model(cache_dir: Path | None = None) -> TinyModel:
    """Return the tiny model, generating it into the cache on first use."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / GENERATOR_VERSION
    if (final / "complete").exists():
        return _layout(final)

    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{GENERATOR_VERSION}-", dir=cache))
    try:
        logger.info("generating tiny model into %s", final)
        _generate(tmp)
        (tmp / "complete").write_text(GENERATOR_VERSION)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process won the race (the target exists and is not empty).
            if not (final / "complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _layout(final)


def _generate(root: Path) -> None:
    # Never reach for the Hub, even by accident.
    saved = {k: os.environ.get(k) for k in _OFFLINE}
    os.environ.update(_OFFLINE)
    try:
        _build(root)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _build(root: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    layout = _layout(root)
    tokenizer = _build_tokenizer()
    tokenizer.save_pretrained(layout.path)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(layout.path, safe_serialization=True)

    for seed, (name, path) in enumerate(layout.adapters.items(), start=1):
        write_random_adapter(config, path, seed)
        logger.debug("generated adapter %s", name)


def write_random_adapter(config: Any, path: Path, seed: int) -> None:
    """A rank-8 LoRA adapter on q_proj/v_proj with random A and B (so it visibly changes
    the output), saved as safetensors for the tiny model's ``config``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    get_peft_model(LlamaForCausalLM(config), lora).save_pretrained(
        str(path), safe_serialization=True
    )
    # peft records the folder the base model came from; point it at the served name
    # instead so nothing tries to resolve a temporary path
    cfg_file = path / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = MODEL_NAME
    cfg_file.write_text(json.dumps(cfg, indent=2))


def _build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB,
        special_tokens=[BOS, EOS, PAD, IM_START],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line], trainer=trainer)
    # Not "special": like Qwen's, these survive skip_special_tokens so the
    # parsers see them in the detokenized text.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
