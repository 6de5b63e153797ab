"""Every wait for a request's events ends with exactly one terminal event."""

from __future__ import annotations

import asyncio
import time

from berth.api.events import request_events
from berth.protocol.envelopes import TokenEvent


def _event(seq: int, type_: str = "delta", worker: str | None = "w1") -> TokenEvent:
    return TokenEvent(id="r", seq=seq, type=type_, worker=worker)  # type: ignore[arg-type]


async def _collect(
    queue: asyncio.Queue[TokenEvent], alive: bool, deadline_s: float = 5.0
) -> list[TokenEvent]:
    async def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return alive

    return [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + deadline_s,
        )
    ]


async def test_duplicates_dropped_and_stops_at_terminal() -> None:
    queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
    for e in [_event(0, "started"), _event(1), _event(1), _event(2, "finished"), _event(3)]:
        queue.put_nowait(e)
    got = await _collect(queue, alive=True)
    assert [(e.seq, e.type) for e in got] == [(0, "started"), (1, "delta"), (2, "finished")]


async def test_dead_worker_yields_one_error() -> None:
    queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
    queue.put_nowait(_event(0, "started"))
    got = await _collect(queue, alive=False)
    assert [e.type for e in got] == ["started", "error"]
    assert got[-1].error is not None and got[-1].error["error"]["code"] == "worker_lost"


async def test_deadline_yields_timeout_error() -> None:
    queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
    got = await _collect(queue, alive=True, deadline_s=0.1)
    assert [e.type for e in got] == ["error"]
    assert got[0].status == 504


async def test_worker_lost_before_any_token_is_retried_invisibly() -> None:
    queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
    queue.put_nowait(TokenEvent(id="r", seq=-1, type="dispatched", worker="w1"))
    retried: list[bool] = []

    async def retry(dead: set[str]) -> bool:
        assert dead == {"w1"}
        retried.append(True)
        # the next attempt lands on a live worker and finishes; the dead one's late event is dropped
        queue.put_nowait(_event(5, "delta", worker="w1"))
        queue.put_nowait(_event(0, "started", worker="w2"))
        queue.put_nowait(_event(1, "finished", worker="w2"))
        return True

    async def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return worker != "w1"

    got = [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + 5,
            retry=retry,
        )
    ]
    assert retried == [True]
    assert [(e.worker, e.type) for e in got] == [("w2", "started"), ("w2", "finished")]


async def test_worker_lost_after_tokens_is_an_error_not_a_retry() -> None:
    queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
    queue.put_nowait(_event(0, "started"))
    queue.put_nowait(
        TokenEvent.model_validate(
            {
                "id": "r",
                "seq": 1,
                "type": "delta",
                "worker": "w1",
                "choices": [{"index": 0, "content": "x"}],
            }
        )
    )

    async def retry(dead: set[str]) -> bool:
        raise AssertionError("must not retry after tokens were produced")

    async def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return False

    got = [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + 5,
            retry=retry,
        )
    ]
    assert [e.type for e in got] == ["started", "delta", "error"]


async def test_restarted_worker_is_a_new_incarnation() -> None:
    """The same worker id restarted: its old incarnation's request fails over, and the new
    incarnation (same id) serves the next attempt."""
    queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
    queue.put_nowait(TokenEvent(id="r", seq=-1, type="dispatched", worker="w1", incarnation="old"))

    def event(seq: int, type_: str, incarnation: str) -> TokenEvent:
        return TokenEvent.model_validate(
            {"id": "r", "seq": seq, "type": type_, "worker": "w1", "incarnation": incarnation}
        )

    async def retry(dead: set[str]) -> bool:
        assert dead == {"w1/old"}
        queue.put_nowait(event(3, "delta", "old"))  # late, from the dead process: dropped
        queue.put_nowait(event(0, "started", "new"))
        queue.put_nowait(event(1, "finished", "new"))
        return True

    async def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return worker == "w1" and incarnation == "new"

    got = [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + 5,
            retry=retry,
        )
    ]
    assert [(e.incarnation, e.type) for e in got] == [("new", "started"), ("new", "finished")]
