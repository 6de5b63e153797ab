"""Waits for a request's events and guarantees the wait ends: a terminal event always comes,
every event counts once, in order, and from one attempt only.

Pub/sub is the fast path and may lose events (a dropped subscriber connection, a lost
publish). The worker also writes each event to the request's short-lived stream, within
``STORE_EVERY_S`` of publishing it (its first and last before), so a gap in ``seq`` is
filled from there; so is a silence (a lost last event is found within ``check_every_s``).
A gap the stream cannot fill, even once the worker had time to write it, ends the answer
with an error event, never with a normal finish. Workers send the terminal event; when they cannot
(the worker died, the request outlived its deadline), this module makes one up.

A worker that dies, or hands the request back at the end of its drain (a ``requeued`` event
in its numbering), does not end the answer: the request is queued again (``retry``) before
its first token as it was, after it as a continuation of what the client has (a ``Cut``:
``protocol/continuation.py``), and the wait follows the next attempt from the next ``seq``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from berth.protocol.envelopes import OUTSIDE_SEQ, TokenEvent, worker_ref
from berth.protocol.errors import BerthError, EventsLost, Timeout, WorkerLost
from berth.store.tokens import STORE_EVERY_S

log = logging.getLogger(__name__)

# how long a gap the stream did not fill is given before its events count as lost: the
# worker writes what it published to the stream within STORE_EVERY_S
_STORE_WAIT_S = 2 * STORE_EVERY_S + 0.05

# (attempt, first seq, end seq or None) -> those events from the request's event stream
Fetch = Callable[[int, int, int | None], Awaitable[list[TokenEvent]]]


@dataclass(frozen=True, slots=True)
class Cut:
    """Where an answer stopped: the next attempt numbers its events from ``seq`` and
    continues after ``text`` (the content the client has) and ``tokens`` generated."""

    seq: int
    text: str
    tokens: int


# (workers to avoid, the cut when output was sent, whether its worker handed it back)
# -> whether the request was queued again
Retry = Callable[[set[str], Cut | None, bool], Awaitable[bool]]


class _SilenceWatch:
    """Takes a request's queue items, waking a wait on its empty queue with None after
    ``check_every_s`` of silence (then ``silenced`` is true until ``taken``).

    One timer per check interval, re-armed only when it fires early, rather than one per
    wait: an ``asyncio.timeout`` around every wait cost ~3 us per event. Once the reader
    stops waiting for good, the timer fires at most once more and is not re-armed.
    """

    def __init__(self, queue: asyncio.Queue[TokenEvent | None], check_every_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = queue
        self._every = check_every_s
        # when the wait in progress falls silent; None while not waiting
        self._until: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.silenced = False

    async def get(self) -> TokenEvent | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        self._until = self._loop.time() + self._every
        if self._timer is None:
            self._timer = self._loop.call_at(self._until, self._check)
        try:
            return await self._queue.get()
        finally:  # taken, or the reader was cancelled or closed
            self._until = None

    def taken(self) -> bool:
        """Whether the None just taken was a silence (else the relay's RESYNC)."""
        silenced, self.silenced = self.silenced, False
        return silenced

    def _check(self) -> None:
        self._timer = None
        if self._until is None or not self._queue.empty():
            return  # no wait, or one about to wake: the next wait arms the timer again
        # a millisecond early counts: the loop's timers may fire that much before their time
        if self._loop.time() >= self._until - 0.001:
            self.silenced = True
            self._queue.put_nowait(None)
        else:
            self._timer = self._loop.call_at(self._until, self._check)


def synthetic_error(request_id: str, err: BerthError) -> TokenEvent:
    """An error event made up here (the worker cannot send one); never written to Redis."""
    return TokenEvent(
        id=request_id, seq=OUTSIDE_SEQ, type="error", error=err.body(), status=err.status_code
    )


async def request_events(
    request_id: str,
    queue: asyncio.Queue[TokenEvent | None],
    *,
    is_alive: Callable[[str, str | None], bool],
    check_every_s: float,
    deadline: float,
    fetch: Fetch,
    retry: Retry | None = None,
    stopped: Callable[[str], bool] | None = None,
    attempt: int = 0,
    first_seq: int = 0,
    worker: str | None = None,
) -> AsyncIterator[TokenEvent]:
    """Yield the request's events in order, ending with exactly one terminal event.

    ``queue`` carries the pub/sub events, and None when they may have been lost (the relay
    reconnected). Only events of ``attempt`` count (a resumed stream starts at ``first_seq``
    of the attempt it followed, on ``worker``).

    When the worker holding the request dies, or hands it back (draining), ``retry`` (if
    given, called with the workers to avoid) queues the request again as the next attempt
    and the wait goes on, invisible to the client: before any token as it was, after some
    as a continuation from the ``Cut``. Where it cannot (no ``retry``, retries used up, an
    answer whose continuation would not be exact) the client gets an error event.

    Incarnations: ``is_alive(worker, incarnation)`` is false once that process start of the
    worker is gone, even when the worker was restarted under the same id; ``dead`` holds
    ``worker_ref``s (id/incarnation), which ``retry`` passes on as workers to avoid. A worker
    gone by a clean stop (``stopped``: it drained; the request was in a group it never read)
    counts as having handed the request back, not as lost.
    """
    expected = first_seq
    incarnation: str | None = None
    produced = False
    # what the client has of the answer, for a continuation; exact while one choice's
    # plain content is all it has
    sent: list[str] = []
    exact = True
    tokens = 0
    dead: set[str] = set()
    # events taken from the stream (or put back), handled before the queue
    backlog: deque[TokenEvent] = deque()
    # the seq whose gap the stream did not fill once already (it is given one more look)
    waited_for = -1
    watch = _SilenceWatch(queue, check_every_s)

    async def queue_again(handed_back: bool) -> bool:
        """Queue the request again after its worker stopped; True when the wait goes on."""
        nonlocal worker, incarnation, expected, attempt
        if retry is None or (produced and not exact):
            return False
        cut = Cut(expected, "".join(sent), tokens) if produced else None
        if not await retry(dead, cut, handed_back):
            return False
        worker, incarnation = None, None
        expected = cut.seq if cut is not None else 0
        attempt += 1
        return True

    async def from_stream(end: int | None) -> list[TokenEvent] | None:
        try:
            return await fetch(attempt, expected, end)
        except Exception as err:  # Redis away: pub/sub is down too; try again later
            log.warning("request %s: reading its event stream failed: %s", request_id, err)
            return None

    while True:
        if time.monotonic() > deadline:
            # checked on every turn: a request that keeps producing still has a deadline
            yield synthetic_error(
                request_id, Timeout("the request did not finish before its timeout")
            )
            return
        if backlog:
            event = backlog.popleft()
        else:
            got = await watch.get()
            if got is None:
                silent = watch.taken()
                # a silence or a reconnect: the stream holds whatever pub/sub did not deliver
                found = await from_stream(None)
                if found:
                    backlog.extend(found)
                    continue
                if not silent:
                    continue
                if worker is not None and not is_alive(worker, incarnation):
                    dead.add(worker_ref(worker, incarnation))
                    drained = stopped is not None and stopped(worker)
                    if await queue_again(handed_back=drained):
                        continue
                    yield synthetic_error(
                        request_id, WorkerLost(f"worker {worker} stopped while serving the request")
                    )
                    return
                continue
            event = got
        if event.seq >= 0 and event.attempt != attempt:
            continue  # another attempt's run: the client follows one
        if event.worker is not None and (
            event.worker in dead or worker_ref(event.worker, event.incarnation) in dead
        ):
            continue  # a late event of an attempt given up on
        if event.type == "dispatched":
            worker, incarnation = event.worker, event.incarnation
            continue
        if event.seq >= 0:
            if event.seq < expected:
                continue  # a duplicate; each event counts once
            if event.seq > expected:
                missing = await from_stream(event.seq)
                if missing is None:
                    backlog.appendleft(event)
                    await asyncio.sleep(check_every_s)
                    continue
                if [e.seq for e in missing] != list(range(expected, event.seq)):
                    if waited_for != expected:
                        # the worker writes published events to the stream within
                        # STORE_EVERY_S: give it that, twice, before counting them lost
                        waited_for = expected
                        backlog.appendleft(event)
                        await asyncio.sleep(_STORE_WAIT_S)
                        continue
                    log.error(
                        "request %s: events %d..%d are lost", request_id, expected, event.seq - 1
                    )
                    yield synthetic_error(
                        request_id,
                        EventsLost(f"events {expected}..{event.seq - 1} of the answer were lost"),
                    )
                    return
                backlog.extendleft(reversed([*missing, event]))
                continue
            expected = event.seq + 1
        if event.tokens is not None:
            tokens = event.tokens
        if event.type == "requeued" and event.seq >= 0 and event.worker is not None:
            # its worker drains and hands the request back: continue it elsewhere
            dead.add(worker_ref(event.worker, event.incarnation))
            if await queue_again(handed_back=True):
                continue
            yield synthetic_error(
                request_id,
                WorkerLost(f"worker {event.worker} stopped (drained) while serving the request"),
            )
            return
        if event.worker:
            same = event.worker == worker
            worker = event.worker
            incarnation = event.incarnation or (incarnation if same else None)
        for choice in event.choices:
            produced = True
            if choice.index or choice.reasoning_content or choice.tool_calls or choice.logprobs:
                exact = False
            sent.append(choice.content)
        yield event
        if event.terminal:
            return
