"""One factory for the end-to-end stacks: start roles on a flushed database, wait until the
stack serves, and stop every process it started when the module ends (or earlier, on ``with``).

    stack = make_stack(("worker", FAKE_ENGINE), "scheduler", "api", env={...})
    with make_stack(env={...}, ready=False) as stack:  # a test starts its own roles
        yield stack
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import StackFactory


@pytest.fixture(scope="module")
def make_stack(redis_server_url: str) -> Iterator[StackFactory]:
    factory = StackFactory(redis_server_url)
    try:
        yield factory
    finally:
        factory.stop_all()
