"""Every wait for a request's events ends with exactly one terminal event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import redis.asyncio

from berth.api.delivery.events import Cut, request_events
from berth.api.delivery.relay import TokenRelay
from berth.protocol import keys
from berth.protocol.envelopes import TokenEvent, decode_event, event_json, events_message
from berth.store.tokens import STORE_EVERY_S


async def _no_stream(attempt: int, first: int, end: int | None) -> list[TokenEvent]:
    return []


def _event(
    seq: int, type_: str = "delta", worker: str | None = "w1", attempt: int = 0
) -> TokenEvent:
    return TokenEvent(id="r", seq=seq, type=type_, worker=worker, attempt=attempt)  # type: ignore[arg-type]


async def _collect(
    queue: asyncio.Queue[TokenEvent | None], alive: bool, deadline_s: float = 5.0
) -> list[TokenEvent]:
    def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return alive

    return [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + deadline_s,
            fetch=_no_stream,
        )
    ]


async def test_duplicates_dropped_and_stops_at_terminal() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    for e in [_event(0, "started"), _event(1), _event(1), _event(2, "finished"), _event(3)]:
        queue.put_nowait(e)
    got = await _collect(queue, alive=True)
    assert [(e.seq, e.type) for e in got] == [(0, "started"), (1, "delta"), (2, "finished")]


async def test_dead_worker_yields_one_error() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(_event(0, "started"))
    got = await _collect(queue, alive=False)
    assert [e.type for e in got] == ["started", "error"]
    assert got[-1].error is not None and got[-1].error["error"]["code"] == "worker_lost"


async def test_deadline_yields_timeout_error() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    got = await _collect(queue, alive=True, deadline_s=0.1)
    assert [e.type for e in got] == ["error"]
    assert got[0].status == 504


async def test_worker_lost_before_any_token_is_retried_invisibly() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(TokenEvent(id="r", seq=-1, type="dispatched", worker="w1"))
    retried: list[bool] = []

    async def retry(dead: set[str], cut: Cut | None, handed_back: bool) -> bool:
        assert dead == {"w1"}
        retried.append(True)
        # the next attempt lands on a live worker and finishes; the dead one's late event is dropped
        queue.put_nowait(_event(5, "delta", worker="w1"))
        queue.put_nowait(_event(0, "started", worker="w2", attempt=1))
        queue.put_nowait(_event(1, "finished", worker="w2", attempt=1))
        return True

    def is_alive(worker: str, incarnation: str | None = None) -> bool:
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
            fetch=_no_stream,
        )
    ]
    assert retried == [True]
    assert [(e.worker, e.type) for e in got] == [("w2", "started"), ("w2", "finished")]


def _delta(seq: int, worker: str = "w1", attempt: int = 0, **choice: object) -> TokenEvent:
    return msgspec.convert(
        {
            "id": "r",
            "seq": seq,
            "type": "delta",
            "worker": worker,
            "attempt": attempt,
            "tokens": seq,
            "choices": [{"index": 0, **choice}],
        },
        TokenEvent,
    )


async def _retrying(
    queue: asyncio.Queue[TokenEvent | None],
    retry: object,
    alive: object = None,
    stopped: Callable[[str], bool] | None = None,
) -> list[TokenEvent]:
    def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return worker != "w1" if alive is None else bool(alive)

    return [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + 5,
            retry=retry,  # type: ignore[arg-type]
            stopped=stopped,
            fetch=_no_stream,
        )
    ]


async def test_worker_lost_after_tokens_continues_from_the_cut() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(_event(0, "started"))
    queue.put_nowait(_delta(1, content="the "))
    queue.put_nowait(_delta(2, content="quick "))
    cuts: list[tuple[Cut | None, bool]] = []

    async def retry(dead: set[str], cut: Cut | None, handed_back: bool) -> bool:
        assert dead == {"w1"}
        cuts.append((cut, handed_back))
        # the next attempt numbers its events from the cut's seq: the client sees one stream
        queue.put_nowait(_event(3, "started", worker="w2", attempt=1))
        queue.put_nowait(_delta(4, worker="w2", attempt=1, content="brown "))
        queue.put_nowait(_event(5, "finished", worker="w2", attempt=1))
        return True

    got = await _retrying(queue, retry)
    assert cuts == [(Cut(seq=3, text="the quick ", tokens=2), False)]
    assert [(e.worker, e.seq, e.type) for e in got] == [
        ("w1", 0, "started"),
        ("w1", 1, "delta"),
        ("w1", 2, "delta"),
        ("w2", 3, "started"),
        ("w2", 4, "delta"),
        ("w2", 5, "finished"),
    ]


async def test_an_answer_with_reasoning_is_not_continued() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(_event(0, "started"))
    queue.put_nowait(_delta(1, reasoning_content="hmm"))

    async def retry(dead: set[str], cut: Cut | None, handed_back: bool) -> bool:
        raise AssertionError("a reasoning parser's state cannot be continued exactly")

    got = await _retrying(queue, retry, alive=False)
    assert [e.type for e in got] == ["started", "delta", "error"]
    assert got[-1].error is not None and got[-1].error["error"]["code"] == "worker_lost"


async def test_a_hand_back_continues_at_once_while_the_worker_lives() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(_event(0, "started"))
    queue.put_nowait(_delta(1, content="the "))
    handed_back = TokenEvent(id="r", seq=2, type="requeued", worker="w1", tokens=1)
    queue.put_nowait(handed_back)
    cuts: list[tuple[set[str], Cut | None, bool]] = []

    async def retry(dead: set[str], cut: Cut | None, handed: bool) -> bool:
        cuts.append((set(dead), cut, handed))
        queue.put_nowait(_delta(2, worker="w1", content="late "))  # its old attempt: dropped
        queue.put_nowait(_event(3, "started", worker="w2", attempt=1))
        queue.put_nowait(_event(4, "finished", worker="w2", attempt=1))
        return True

    got = await _retrying(queue, retry, alive=True)
    assert cuts == [({"w1"}, Cut(seq=3, text="the ", tokens=1), True)]
    assert [(e.worker, e.type) for e in got] == [
        ("w1", "started"),
        ("w1", "delta"),
        ("w2", "started"),
        ("w2", "finished"),
    ]


async def test_a_request_left_with_a_worker_that_drained_and_stopped_is_handed_back() -> None:
    # its group was on its way when the drain began: the worker never read it
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(TokenEvent(id="r", seq=-1, type="dispatched", worker="w1"))
    calls: list[tuple[Cut | None, bool]] = []

    async def retry(dead: set[str], cut: Cut | None, handed_back: bool) -> bool:
        calls.append((cut, handed_back))
        queue.put_nowait(_event(0, "started", worker="w2", attempt=1))
        queue.put_nowait(_event(1, "finished", worker="w2", attempt=1))
        return True

    got = await _retrying(queue, retry, stopped=lambda worker: worker == "w1")
    assert calls == [(None, True)]
    assert [e.type for e in got] == ["started", "finished"]


# -- filling from the request's event stream (a real server, as the worker writes it) -------


async def _write(
    aredis: redis.asyncio.Redis, seq: int, type_: str = "delta", attempt: int = 0, text: str = ""
) -> TokenEvent:
    """Add one event to the request's stream the way the worker does; returns it."""
    choices = [{"index": 0, "content": text}] if text else []
    payload = event_json("r", type_, seq=seq, worker="w1", attempt=attempt, choices=choices)  # type: ignore[arg-type]
    await aredis.xadd(
        keys.request_events("r"),
        {"e": events_message([payload.encode()])},
        id=keys.event_entry_id(attempt, seq),
    )
    return decode_event(payload)


async def _follow(
    aredis: redis.asyncio.Redis, queue: asyncio.Queue[TokenEvent | None], **kwargs: object
) -> list[TokenEvent]:
    relay = TokenRelay(aredis, "api-1")

    async def fetch(attempt: int, first: int, end: int | None) -> list[TokenEvent]:
        return await relay.fetch("r", attempt, first, end)

    def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return True

    return [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + 5,
            fetch=fetch,
            **kwargs,  # type: ignore[arg-type]
        )
    ]


async def test_a_gap_is_filled_from_the_stream_in_order(aredis: redis.asyncio.Redis) -> None:
    written = [await _write(aredis, 0, "started")]
    written += [await _write(aredis, seq, text=f"t{seq}") for seq in range(1, 6)]
    written.append(await _write(aredis, 6, "finished"))
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    # pub/sub delivered 0, 1, lost 2..4, then 5 and 6 (and 3 again, late)
    for seq in (0, 1, 5, 3, 6):
        queue.put_nowait(written[seq])
    got = await _follow(aredis, queue)
    assert [e.seq for e in got] == list(range(7))
    assert "".join(c.content for e in got for c in e.choices) == "t1t2t3t4t5"


async def test_a_gap_the_stream_cannot_fill_ends_with_an_error(
    aredis: redis.asyncio.Redis,
) -> None:
    started = await _write(aredis, 0, "started")
    finished = TokenEvent(id="r", seq=3, type="finished", worker="w1")  # 1, 2 never written
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(started)
    queue.put_nowait(finished)
    got = await _follow(aredis, queue)
    assert [e.type for e in got] == ["started", "error"]
    assert got[-1].error is not None and got[-1].error["error"]["code"] == "events_lost"


async def test_a_gap_the_worker_has_not_written_yet_is_filled_once_it_has(
    aredis: redis.asyncio.Redis,
) -> None:
    """The worker writes what it published to the stream within STORE_EVERY_S, several
    events as one entry: a gap found before that is given the time, not counted lost."""
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(await _write(aredis, 0, "started"))
    late = [
        event_json("r", "delta", seq=seq, worker="w1", choices=[{"index": 0, "content": f"t{seq}"}])
        for seq in (1, 2)
    ]
    # delta 1's publish is lost; delta 2's arrives before either is in the stream
    queue.put_nowait(decode_event(late[1]))

    async def worker_writes_late() -> None:
        await asyncio.sleep(STORE_EVERY_S)
        stream = keys.request_events("r")
        entry = keys.event_entry_id(0, 2)
        await aredis.xadd(stream, {"e": events_message([e.encode() for e in late])}, id=entry)
        queue.put_nowait(await _write(aredis, 3, "finished"))

    writing = asyncio.create_task(worker_writes_late())
    got = await _follow(aredis, queue)
    await writing
    assert [e.seq for e in got] == [0, 1, 2, 3]
    assert "".join(c.content for e in got for c in e.choices) == "t1t2"


async def test_a_lost_terminal_event_is_found_in_the_stream(aredis: redis.asyncio.Redis) -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(await _write(aredis, 0, "started"))
    await _write(aredis, 1, text="x")
    await _write(aredis, 2, "finished")  # neither published: only a silence reveals them
    got = await _follow(aredis, queue)
    assert [e.type for e in got] == ["started", "delta", "finished"]


async def test_a_resync_reads_the_stream_at_once(aredis: redis.asyncio.Redis) -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    await _write(aredis, 0, "started")
    await _write(aredis, 1, "finished")
    queue.put_nowait(None)
    got = await _follow(aredis, queue)
    assert [e.seq for e in got] == [0, 1]


async def test_only_the_followed_attempt_counts(aredis: redis.asyncio.Redis) -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    # a duplicate run wrote attempt 0 and 1; the reader follows attempt 1 only
    stale = [await _write(aredis, 0, "started"), await _write(aredis, 1, text="old")]
    own = [await _write(aredis, 0, "started", 1), await _write(aredis, 1, "delta", 1, "new")]
    own.append(await _write(aredis, 2, "finished", 1))
    for event in (stale[0], own[0], stale[1], own[1], own[2]):
        queue.put_nowait(event)
    got = await _follow(aredis, queue, attempt=1)
    assert [(e.attempt, e.seq) for e in got] == [(1, 0), (1, 1), (1, 2)]
    assert got[1].choices[0].content == "new"


async def test_a_resumed_reader_starts_after_the_last_event_it_had(
    aredis: redis.asyncio.Redis,
) -> None:
    for seq in range(5):
        await _write(aredis, seq, text=str(seq))
    await _write(aredis, 5, "finished")
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    got = await _follow(aredis, queue, first_seq=3, worker="w1")
    assert [e.seq for e in got] == [3, 4, 5]


async def test_a_request_that_keeps_producing_still_times_out() -> None:
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()

    async def produce() -> None:
        for seq in range(1000):
            queue.put_nowait(_event(seq))
            await asyncio.sleep(0.01)  # never quiet for check_every_s

    producer = asyncio.create_task(produce())
    try:
        got = await _collect(queue, alive=True, deadline_s=0.3)
    finally:
        producer.cancel()
    assert got[-1].type == "error" and got[-1].status == 504
    assert len(got) < 1000


async def test_restarted_worker_is_a_new_incarnation() -> None:
    """The same worker id restarted: its old incarnation's request fails over, and the new
    incarnation (same id) serves the next attempt."""
    queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    queue.put_nowait(TokenEvent(id="r", seq=-1, type="dispatched", worker="w1", incarnation="old"))

    def event(seq: int, type_: str, incarnation: str, attempt: int) -> TokenEvent:
        return msgspec.convert(
            {
                "id": "r",
                "seq": seq,
                "type": type_,
                "worker": "w1",
                "incarnation": incarnation,
                "attempt": attempt,
            },
            TokenEvent,
        )

    async def retry(dead: set[str], cut: Cut | None, handed_back: bool) -> bool:
        assert dead == {"w1/old"}
        queue.put_nowait(event(3, "delta", "old", 0))  # late, from the dead process: dropped
        queue.put_nowait(event(0, "started", "new", 1))
        queue.put_nowait(event(1, "finished", "new", 1))
        return True

    def is_alive(worker: str, incarnation: str | None = None) -> bool:
        return worker == "w1" and incarnation == "new"

    async def nothing_stored(attempt: int, first: int, end: int | None) -> list[TokenEvent]:
        return []  # this request's event stream is empty: pub/sub delivered everything

    got = [
        e
        async for e in request_events(
            "r",
            queue,
            is_alive=is_alive,
            check_every_s=0.05,
            deadline=time.monotonic() + 5,
            fetch=nothing_stored,
            retry=retry,
        )
    ]
    assert [(e.type, e.incarnation) for e in got] == [("started", "new"), ("finished", "new")]
