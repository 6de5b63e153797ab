"""Pages of OpenAI's list endpoints (jobs, files, batches).

Chat output (``chat.completion``, ``chat.completion.chunk``) is built as plain dicts in
``protocol/output.py`` and the model list in ``api/directory.py``: one pydantic model per
token costs CPU on the hot path, and tests check both against the ``openai`` client's own
types (tests/protocol/test_output.py, test_openai_client.py).
"""

from __future__ import annotations

from typing import Any


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page of a list endpoint (jobs, files, batches), as OpenAI's cursor pages read it."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
