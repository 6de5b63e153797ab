"""Cheap bounds on output constraints (JSON schema, regex, EBNF), checked before queueing.

Compiling a constraint into a grammar costs time and memory that grow with
repetition counts and sizes a client chooses; these pure functions find the
first bound a constraint breaks and describe it (``"minItems must be at most
10000, got 1000000 (at properties.a)"``), or return None. The worker still
compiles every constraint under a time and memory budget; these checks refuse
the obvious cases at the API, without a trip through the queue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from berth.protocol.limits import RequestLimits

# keywords whose integer value is a repetition count the grammar has to encode
REPETITION_KEYWORDS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
# keywords whose values are data, not subschemas: their contents are not walked
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
# a count this long is reported as "more than" it (int() of huge digit strings is slow)
_MAX_DIGITS = 12


def _where(path: str) -> str:
    return f" (at {path})" if path else ""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def schema_violation(schema: Any, limits: RequestLimits) -> str | None:
    """The first bound ``schema`` breaks, as ``"<what> must be at most N, got M"``; or None."""
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_json_schema_bytes:
        return f"must be at most {limits.max_json_schema_bytes} bytes as JSON, got {size}"
    properties = enums = pattern_chars = 0
    # iterative, so a hostile schema cannot hit Python's recursion limit
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, list):
            stack.extend((item, _join(path, i)) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            here = _join(path, str(key))
            if key in REPETITION_KEYWORDS and _is_int(value):
                limit = limits.max_json_schema_repetition
                if value > limit:
                    return f"{key} must be at most {limit}, got {value}{_where(path)}"
            elif key == "enum" and isinstance(value, list):
                enums += len(value)
                if enums > limits.max_json_schema_enum:
                    return (
                        f"enum members must be at most {limits.max_json_schema_enum} in "
                        f"all, got {enums}{_where(here)}"
                    )
            elif key == "pattern" and isinstance(value, str):
                pattern_chars += len(value)
                if problem := _pattern_problem(value, here, pattern_chars, limits):
                    return problem
            if key in _DATA_KEYWORDS:
                continue
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                properties += len(value)
                if properties > limits.max_json_schema_properties:
                    return (
                        f"properties must be at most {limits.max_json_schema_properties} in "
                        f"all, got {properties}{_where(here)}"
                    )
                for name, sub in value.items():
                    sub_path = _join(here, str(name))
                    if key == "patternProperties":
                        pattern_chars += len(name)
                        if problem := _pattern_problem(name, sub_path, pattern_chars, limits):
                            return problem
                    stack.append((sub, sub_path))
                continue
            stack.append((value, here))
    return None


def _pattern_problem(
    pattern: str, path: str, total_chars: int, limits: RequestLimits
) -> str | None:
    if total_chars > limits.max_json_schema_pattern_chars:
        return (
            f"patterns must be at most {limits.max_json_schema_pattern_chars} characters "
            f"in all, got {total_chars}{_where(path)}"
        )
    return repetition_violation(pattern, limits.max_regex_repetition, path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def repetition_violation(text: str, limit: int, path: str = "", *, ebnf: bool = False) -> str:
    """A ``{m,n}`` repetition in a regex (or an EBNF grammar) above ``limit``, described;
    "" when there is none. Escaped braces, character classes and (in EBNF) string
    literals are skipped; an ``{m,n}`` anywhere else counts."""
    for start in _quantifier_starts(text, ebnf=ebnf):
        match = _COUNT.match(text, start)
        if match is None:
            continue
        for digits in match.groups():
            if not digits:
                continue
            shown = digits if len(digits) <= _MAX_DIGITS else f"more than {'9' * _MAX_DIGITS}"
            if len(digits) > _MAX_DIGITS or int(digits) > limit:
                return (
                    f"repetition counts ({{m,n}}) must be at most {limit}, got {shown} in "
                    f"{match.group(0)[:40]!r}{_where(path)}"
                )
    return ""


def _quantifier_starts(text: str, *, ebnf: bool) -> Iterator[int]:
    """Offsets of ``{`` that open a quantifier: outside escapes, classes and literals."""
    i, n = 0, len(text)
    in_class = False
    quote: str | None = None
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if quote is not None:
            if char == quote:
                quote = None
        elif in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
        elif ebnf and char in "\"'":
            quote = char
        elif char == "{":
            yield i
        i += 1
