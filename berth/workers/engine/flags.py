"""vLLM's own engine flags on `berth worker`.

A platform team's vLLM command line carries over: every flag of vLLM's ``AsyncEngineArgs``
(``--dtype``, ``--quantization``, ``--max-num-seqs``, ``--kv-cache-dtype``,
``--trust-remote-code``, ...) is read by vLLM's own parser, so a vLLM release brings its
new flags with it and a value means what it means to vLLM. ``--config FILE`` takes a YAML
file of the same flags (and berth's), as vLLM's server does; a flag on the command line
wins over the file. Flags berth has itself (``--model``, ``--served-model-name``,
``--tensor-parallel-size``, ``--max-model-len``, ...) stay berth's: they mean the same.

Only the worker's command line imports this (vLLM takes seconds to import), and only when
it carries a flag berth does not know.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

CONFIG_FLAG = "--config"


class EngineFlagError(ValueError):
    """A vLLM flag the command line gave is not one of vLLM's, or its value is refused."""


def engine_parser() -> argparse.ArgumentParser:
    """vLLM's parser of its engine arguments (``vllm serve``'s engine part)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="berth worker", add_json_tip=False, exit_on_error=False)
    return AsyncEngineArgs.add_cli_args(parser)


def config_tokens(path: str) -> list[str]:
    """The flags a YAML config file stands for, as command-line tokens."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise EngineFlagError(f"--config {path}: cannot be read: {err}") from None
    if loaded is None:
        return []
    if not isinstance(loaded, dict):
        raise EngineFlagError(f"--config {path}: must be a mapping of flag names to values")
    tokens: list[str] = []
    for key, value in loaded.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            tokens.append(flag)
        elif value is False:
            tokens.append("--no-" + flag[2:])
        elif isinstance(value, list):
            tokens += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            tokens += [flag, json.dumps(value)]
        elif value is not None:
            tokens += [flag, str(value)]
    return tokens


def expand_config(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``--config FILE`` replaced by the file's flags, placed first so
    the command line's own flags win."""
    from_files: list[str] = []
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == CONFIG_FLAG:
            path = next(tokens, None)
            if path is None:
                raise EngineFlagError("--config needs a file")
            from_files += config_tokens(path)
        elif token.startswith(CONFIG_FLAG + "="):
            from_files += config_tokens(token.partition("=")[2])
        else:
            rest.append(token)
    return from_files + rest


def flag_name(token: str) -> str | None:
    """The flag a token names (``--max-num-seqs=4`` -> ``--max-num-seqs``), or None for a
    value; vLLM writes its flags with dashes and takes underscores too."""
    if not token.startswith("--") or token == "--":
        return None
    return token.partition("=")[0].replace("_", "-")


def split_engine_flags(
    argv: Sequence[str], berth_flags: Iterable[str]
) -> tuple[list[str], dict[str, Any]]:
    """Split a worker's command line into berth's part and vLLM's engine arguments.

    A flag berth knows stays berth's, with its values; any other goes to vLLM's parser,
    with the tokens after it up to the next flag. Returns berth's tokens and the engine
    arguments the command line set (``AsyncEngineArgs`` field -> value), only those given.
    """
    ours = set(berth_flags)
    berth_part: list[str] = []
    engine_part: list[str] = []
    into = berth_part
    for token in argv:
        name = flag_name(token)
        if name is not None:
            into = berth_part if name in ours else engine_part
        into.append(token)
    if not engine_part:
        return berth_part, {}
    parser = engine_parser()
    given = {name for name in map(flag_name, engine_part) if name is not None}
    unknown = sorted(name for name in given if name not in parser._option_string_actions)
    if unknown:
        raise EngineFlagError(
            f"unknown flag {unknown[0]}: neither berth's (berth worker --help) nor one of "
            "vLLM's engine arguments (berth worker --help-engine)"
        )
    try:
        parsed = parser.parse_args(engine_part)
    except (argparse.ArgumentError, SystemExit) as err:
        raise EngineFlagError(f"vLLM engine argument: {err}") from None
    dests = {parser._option_string_actions[name].dest for name in given}
    return berth_part, {dest: getattr(parsed, dest) for dest in sorted(dests)}


def engine_help() -> str:
    """vLLM's help for its engine arguments.

    vLLM's parser takes its defaults from the machine's device; where it finds none (vLLM's
    CUDA build in an image checked on a machine with no GPU) it cannot build the parser at
    all. The flags are then listed as vLLM's CPU platform sees them, through vLLM's own
    switch for running its CUDA wheel on CPU-only machines (VLLM_TARGET_DEVICE=cpu).
    """
    import torch

    if "VLLM_TARGET_DEVICE" not in os.environ and not torch.cuda.is_available():
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    return engine_parser().format_help()
