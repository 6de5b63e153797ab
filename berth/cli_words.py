"""The words of `berth`'s command line: what each flag takes, its default where it means
something, and a bad value answered in one line, as vLLM's (argparse) command line does.

pydantic-settings builds the parser from the settings classes; it names a flag's value by
its Python type (``--capacity int``), shows ``(default: null)`` for every unset option and
reports a bad value in pydantic's words. Here the parser it built is reworded (metavars
from each field's name and type, defaults only when set) and a ValidationError becomes
``berth worker: --capacity must be an integer >= 1, got 'x'``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# a field whose name says what its value is
_BY_NAME = {
    "model": "MODEL",
    "served_model_name": "NAME[,NAME...]",
    "log_level": "LEVEL",
    "tool_call_parser": "NAME",
    "reasoning_parser": "NAME",
    "gpu_memory_utilization": "FRACTION",
    "batch_reserve": "FRACTION",
    "heartbeat_interval": "SECONDS",
    "heartbeat_ttl": "SECONDS",
    "max_age": "SECONDS",
    "fake_tokens_per_s": "TOKENS_PER_S",
}
# else its name's ending does (first match wins): a number's unit, a string's kind
_NUMBER_SUFFIX = (
    ("_ms", "MS"),
    ("_s", "SECONDS"),
    ("_at", "UNIX_TIME"),
    ("_bytes", "BYTES"),
    ("_mib", "MIB"),
    ("_gib", "GIB"),
    ("port", "PORT"),
)
_STRING_SUFFIX = (
    ("url", "URL"),
    ("_endpoint", "URL"),
    ("_file", "FILE"),
    ("_root", "DIR"),
    ("host", "HOST"),
    ("id", "ID"),
)
# errors that say the value is not what the field takes: answered with what it takes
_NOT_ALLOWED = re.compile(
    r"^(int|float|bool|string|dict|list|model|json|literal|enum)_"
    r"|^(greater|less)_than|^(multiple_of|too_short|too_long|string_too_(short|long))"
)
_DEFAULT_SHOWN = re.compile(r" ?\(default(?: factory)?: [^()]*(?:\([^()]*\))?[^()]*\)$")


def _unwrapped(annotation: Any) -> Any:
    """``X`` of ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def metavar(name: str, field: FieldInfo) -> str | None:
    """What a flag takes, in the help's words (None: a flag that takes no value)."""
    kind = _unwrapped(field.annotation)
    if kind is bool:
        return None
    if get_origin(kind) is Literal:
        return "{" + ",".join(str(a) for a in get_args(kind)) + "}"
    if get_origin(kind) in (dict, list) or kind in (dict, list):
        return "JSON"
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return "JSON"
    if name in _BY_NAME:
        return _BY_NAME[name]
    for suffix, shown in _NUMBER_SUFFIX if kind in (int, float) else _STRING_SUFFIX:
        if name.endswith(suffix):
            return shown
    if kind is int:
        return "N"
    if kind is float:
        return "NUMBER"
    return name.upper()


def _bounds(field: FieldInfo) -> list[str]:
    shown = []
    for rule in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(rule, attr, None)
            if isinstance(rule, annotated_types.BaseMetadata) and value is not None:
                shown.append(f"{sign} {value}")
    return shown


def allowed(field: FieldInfo) -> str:
    """What a field takes, as an error says it: ``an integer >= 1``, ``one of text, json``."""
    kind = _unwrapped(field.annotation)
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(kind))
    if kind is bool:
        return "true or false"
    if get_origin(kind) is list or kind is list:
        return "a JSON list"
    if get_origin(kind) is dict or kind is dict:
        return "a JSON object"
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return "a JSON object of " + ", ".join(kind.model_fields)
    noun = {int: "an integer", float: "a number"}.get(kind, "a string")
    bounds = _bounds(field)
    return f"{noun} {' and '.join(bounds)}" if bounds else noun


def _shown_default(field: FieldInfo) -> str | None:
    """The default the help shows: a set value (unset, empty and computed ones say
    nothing; the description says what unset means)."""
    default = field.default
    if default is PydanticUndefined or default is None or default in ("", {}, []):
        return None
    if isinstance(default, BaseModel):
        return None
    return str(default)


def _field(model: type[BaseModel], path: list[str]) -> FieldInfo | None:
    """The field a flag's dest names (``request_limits.max_tools``: a nested model's)."""
    field = model.model_fields.get(path[0])
    if field is None or len(path) == 1:
        return field
    inner = _unwrapped(field.annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return _field(inner, path[1:])
    return None


def reword_help(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Metavars and defaults of one command's parser, from the fields its flags set."""
    for action in parser._actions:
        # a subcommand's dests start with its name
        path = action.dest.split(".")[1:]
        field = _field(model, path) if path else None
        if field is None:
            continue
        field_name = path[-1]
        if not action.option_strings:
            # a positional argument: its choices, as argparse would show them
            action.metavar = metavar(field_name, field)
            continue
        if action.metavar is not None:
            action.metavar = metavar(field_name, field)
        if action.help and action.help != argparse.SUPPRESS:
            text = _DEFAULT_SHOWN.sub("", action.help)
            default = _shown_default(field)
            action.help = f"{text} (default: {default})" if default is not None else text


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def usage_error(role: str | None, message: str) -> NoReturn:
    """A command-line mistake, as argparse answers one: one line on stderr, exit code 2."""
    print(f"berth {role}: {message}" if role else f"berth: {message}", file=sys.stderr)
    raise SystemExit(2)


def invalid(role: str | None, model: type[BaseModel] | None, err: ValidationError) -> str:
    """A settings error in the command's words: each bad flag, what it takes, what it got;
    never pydantic's report (its type codes and links)."""
    lines = []
    for problem in err.errors(include_url=False):
        # the subcommand comes first in the location; a model-wide check has nothing after
        loc = problem["loc"][1:] if problem["loc"][:1] == (role,) else problem["loc"]
        what = problem["msg"].removeprefix("Value error, ")
        what = what[0].lower() + what[1:]
        path = [str(part) for part in loc]
        field = _field(model, path) if model is not None and path else None
        if field is None:
            lines.append(f"--{'.'.join(path).replace('_', '-')}: {what}" if path else what)
            continue
        # a required field is a positional argument (`berth check ROLE`)
        if field.is_required() and len(path) == 1:
            flag = path[0].upper()
        else:
            flag = "--" + ".".join(path).replace("_", "-")
        got = problem.get("input")
        shown = f", got {got!r}" if isinstance(got, str | int | float) else ""
        # a list or dict flag's value is read as JSON before it is validated
        unreadable = isinstance(problem.get("ctx", {}).get("error"), json.JSONDecodeError)
        if unreadable or _NOT_ALLOWED.search(problem["type"]):
            lines.append(f"{flag} must be {allowed(field)}{shown}")
        else:
            lines.append(f"{flag}: {what}{shown}")
    return "; ".join(lines)
