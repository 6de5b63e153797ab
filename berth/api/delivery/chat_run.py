"""A chat (or text) completion's run, as the API process that queued it follows it: listen
first, then queue; queue it again if its worker dies or hands it back (before its first token
as it was, after it as a continuation of the answer so far); count it and end it.

A request whose wait ends without its worker's terminal event (its client left, its
timeout passed, its answer could not be completed) is cancelled: in the queue and in the
engine. A streamed request sent with ``X-Berth-Resumable: true`` is instead kept running
for ``resume_grace_s`` after its client left, and cancelled only if nobody resumed it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from berth.api import metrics
from berth.api.delivery.events import Cut, Retry, request_events
from berth.api.delivery.relay import EventQueue
from berth.api.state import ApiState
from berth.plumbing import tracing
from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.completion import CompletionRequest
from berth.protocol.continuation import NotContinuable, continued_request
from berth.protocol.envelopes import Continuation, QueuedRequest, TokenEvent
from berth.store.streams import StreamStore

log = logging.getLogger(__name__)


@dataclass
class ChatRun:
    """One chat completion this process answers: its events (in order, ending with one
    terminal event), the queue they arrive on, and the timer that measures them."""

    state: ApiState
    request_id: str
    queue: EventQueue
    events: AsyncIterator[TokenEvent]
    timer: metrics.RequestTimer

    @property
    def tenant(self) -> str:
        return self.timer.tenant

    def account(self, event: TokenEvent) -> None:
        """Per-tenant token counts, and one accounting log line per request."""
        usage = event.usage
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        metrics.count_tokens(self.tenant, prompt, completion)
        log.info(
            "request %s ended %s: tenant=%s prompt_tokens=%d completion_tokens=%d",
            self.request_id,
            event.type,
            self.tenant,
            prompt,
            completion,
        )

    def finish_soon(self, completed: bool, resumable: bool = False) -> None:
        """Stop listening and end the request: cancelled unless ``completed``, after the
        grace unless resumed if ``resumable``."""
        # runs from cancelled code paths, where an await would be cancelled again
        if resumable and not completed:
            work = _detach(self.state, self.request_id)
        else:
            work = _finish(self.state, self.request_id, completed)
        task = asyncio.get_running_loop().create_task(work)
        _background.add(task)
        task.add_done_callback(_background.discard)


async def start(
    state: ApiState,
    chat: ChatCompletionRequest | CompletionRequest,
    queued: QueuedRequest,
    timer: metrics.RequestTimer,
) -> ChatRun:
    """Queue ``queued`` and follow its events until its deadline (the request's own, at most
    ``request_timeout_s``)."""
    request_id = queued.id
    # a tenant holding all its leases here is refused before the subscription below
    state.quotas.refuse_if_all_held(queued)
    # subscribe before enqueueing: no event can be published before we listen
    queue = await state.relay.open(request_id)
    try:
        await state.ingress.enqueue(queued)
    except BaseException:
        state.relay.release(request_id)
        raise
    # per request: DEBUG; the one INFO line per request is ChatRun.account's at its end
    log.debug(
        "request %s (%s) queued for %s/%s lane=%s stream=%s tenant=%s user=%s safety_identifier=%s",
        request_id,
        queued.kind,
        queued.model,
        queued.adapter,
        queued.lane,
        chat.stream,
        timer.tenant,
        chat.user,
        getattr(chat, "safety_identifier", None),
    )
    attempts = [queued]
    failures = 0

    async def retry(dead: set[str], cut: Cut | None, handed_back: bool) -> bool:
        nonlocal failures
        # a worker's drain is no failure: its hand-backs use up no retries
        if not handed_back and failures >= state.settings.max_retries:
            return False
        update: dict[str, object] = {"attempt": len(attempts), "avoid": sorted(dead)}
        if cut is not None:
            if queued.kind != "chat":
                log.warning("request %s: a text completion is not continued", request_id)
                return False
            try:
                update["request"] = continued_request(queued.request, cut.text, cut.tokens)
            except NotContinuable as why:
                log.warning("request %s: cannot be continued exactly: %s", request_id, why)
                return False
            update["continuation"] = Continuation(seq=cut.seq, tokens=cut.tokens)
        failures += not handed_back
        metrics.REQUEUED.labels(
            "handed_back" if handed_back else "died", "no" if cut is None else "yes"
        ).inc()
        again = queued.model_copy(update=update)
        attempts.append(again)
        # a drain's hand-back is routine; a dead worker is worth a warning
        log.log(
            logging.INFO if handed_back else logging.WARNING,
            "request %s: its worker %s %s; queued again%s",
            request_id,
            "handed it back" if handed_back else "died",
            "before any token" if cut is None else f"after {cut.tokens} tokens",
            "" if cut is None else f", to continue from event {cut.seq}",
        )
        await state.ingress.requeue(again)
        return True

    events = follow(
        state,
        request_id,
        queue,
        retry=retry,
        deadline=time.monotonic()
        + min(
            state.settings.request_timeout_s,
            (queued.deadline - time.time()) if queued.deadline else float("inf"),
        ),
    )
    if tracing.enabled():
        events = tracing.traced_relay(events)
    return ChatRun(state, request_id, queue, events, timer)


def follow(
    state: ApiState,
    request_id: str,
    queue: EventQueue,
    *,
    deadline: float,
    retry: Retry | None = None,
    attempt: int = 0,
    first_seq: int = 0,
    worker: str | None = None,
) -> AsyncIterator[TokenEvent]:
    """The request's events from ``queue``, gaps filled from its event stream."""

    async def fetch(attempt: int, first: int, end: int | None) -> list[TokenEvent]:
        return await state.relay.fetch(request_id, attempt, first, end)

    return request_events(
        request_id,
        queue,
        retry=retry,
        fetch=fetch,
        is_alive=state.directory.is_alive,
        stopped=state.directory.stopped,
        check_every_s=state.settings.liveness_check_s,
        deadline=deadline,
        attempt=attempt,
        first_seq=first_seq,
        worker=worker,
    )


def ended_by_worker(event: TokenEvent) -> bool:
    """A terminal event its worker wrote: the run is over. Any other (made up here on a
    timeout, a lost worker or a lost part of the answer; or the scheduler's) leaves a run
    that may still be queued or running, so the request is cancelled."""
    return event.seq >= 0


async def _finish(state: ApiState, request_id: str, completed: bool) -> None:
    state.relay.release(request_id)
    await state.ingress.finished(request_id)
    if not completed:
        log.info("request %s: client went away; cancelling", request_id)
        await state.ingress.cancel(request_id)


async def _detach(state: ApiState, request_id: str) -> None:
    """The client of a resumable stream left: keep the request running for the grace, then
    cancel it unless a client resumed it (through any API process) meanwhile."""
    state.relay.release(request_id)
    streams = StreamStore(state.redis)
    grace = state.settings.resume_grace_s
    token = await streams.detach(request_id, grace)
    log.info("request %s: client went away; resumable for %.0fs", request_id, grace)
    await asyncio.sleep(grace)
    # the tenant's concurrency slot is held through the grace, whoever resumes the stream
    await state.ingress.finished(request_id)
    if await streams.end_if_detached(request_id, token):
        log.info("request %s: not resumed within %.0fs; cancelling", request_id, grace)
        await state.ingress.cancel(request_id)


_background: set[asyncio.Task[None]] = set()
