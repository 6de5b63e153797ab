"""A request's prefix key: chained hashes over fixed-size blocks of its prompt, without a
tokenizer, for placing requests where their prefix is already cached.

The prompt is taken as the chat template sees it: each message's role and content, in
order (a completion's prompt as it is). That text is cut into blocks of ``BLOCK_BYTES``
bytes of UTF-8 and each block is hashed with the hash of the block before it, so a block's
hash names the whole prompt up to its end: two requests share the first ``n`` hashes
exactly when they share the first ``n`` blocks of text. The chain starts from the model
and the adapter, so a prefix under adapter A is no hit for adapter B. A final block
shorter than ``BLOCK_BYTES`` gets no hash (an engine caches only full blocks too).

Hashes are blake2b, never Python's ``hash()``: they are the same in every process and
under any ``PYTHONHASHSEED``, so every scheduler replica computes the same keys.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# ~64 tokens of English text: coarse enough to keep the index small, fine enough that a
# conversation's next turn matches nearly all of its history
BLOCK_BYTES = 256
DIGEST_BYTES = 8
# separate fields and messages; a collision through content holding them only costs a
# placement guess, never correctness
_FIELD = b"\x00"
_MESSAGE = b"\x1e"


def _content_bytes(content: Any) -> bytes:
    if content is None:
        return b""
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, list):
        # text parts joined as the templates flatten them; other parts are refused earlier
        return "".join(
            p.get("text", "") or p.get("refusal", "") for p in content if isinstance(p, dict)
        ).encode()
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def prompt_bytes(kind: str, body: dict[str, Any]) -> bytes:
    """The canonical prompt of a queued request body: for a chat, each message's role,
    content (and tool calls, which the template renders too) in order; for a completion,
    its prompt (text, or token ids as JSON)."""
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt.encode()
        return orjson.dumps(prompt) if prompt is not None else b""
    parts: list[bytes] = []
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        parts.append(str(message.get("role", "")).encode())
        parts.append(_FIELD)
        parts.append(_content_bytes(message.get("content")))
        calls = message.get("tool_calls")
        if calls:
            parts.append(_FIELD)
            parts.append(orjson.dumps(calls, option=orjson.OPT_SORT_KEYS))
        parts.append(_MESSAGE)
    return b"".join(parts)


def chain_hashes(
    text: bytes, model: str, adapter: str | None, block_bytes: int = BLOCK_BYTES
) -> tuple[bytes, ...]:
    """The chained hash of each full block of ``text``, first block first."""
    seed = hashlib.blake2b(f"{model}\0{adapter or ''}".encode(), digest_size=DIGEST_BYTES).digest()
    out = []
    previous = seed
    view = memoryview(text)
    for start in range(0, len(text) - block_bytes + 1, block_bytes):
        h = hashlib.blake2b(previous, digest_size=DIGEST_BYTES)
        h.update(view[start : start + block_bytes])
        previous = h.digest()
        out.append(previous)
    return tuple(out)


def prefix_key(
    kind: str, body: dict[str, Any], model: str, adapter: str | None
) -> tuple[bytes, ...]:
    """A queued request's prefix key: the chained block hashes of its canonical prompt."""
    return chain_hashes(prompt_bytes(kind, body), model, adapter)
