"""A deterministic engine without vLLM, for plumbing tests and simulated workers.

It implements the same :class:`~berth.workers.engine.base.Engine` interface as
the real engine and applies the same model-dependent checks, so the worker code
that runs on it is the code that runs in production. Its "model" cycles through
a fixed word list (one word is one token), at a configurable rate per request,
with at most ``max_concurrency`` requests generating at once; the rest wait
inside the engine, as they would in vLLM's scheduler: most urgent lane first
(:func:`~berth.workers.engine.base.engine_priority`), then in arrival order, as vLLM's
priority policy orders its waiting queue. Unlike vLLM it never preempts a running request.

Word ``k`` of choice ``i`` is ``WORDS[(seed + 7 * i + k) % len(WORDS)]``: a function of the
seed and the position only, so a request that continues the assistant's final message
(``continue_final_message``, as a stream cut mid-way is continued) goes on from the word after
that message's, and a continued answer is exactly the answer that was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from berth.protocol.completion import CompletionRequest
from berth.protocol.errors import InvalidRequest
from berth.workers.engine.base import (
    AdapterLru,
    ChoiceDelta,
    EngineStats,
    EngineStep,
    FinishReason,
    echoed,
    engine_priority,
)
from berth.workers.engine.checks import check_token_ids, logit_bias_ids, resolve_max_tokens

if TYPE_CHECKING:
    from berth.workers.engine.base import EngineRequest

_TEXT = (
    "the quick brown fox jumps over a lazy dog while berth serves many users "
    "from one queue and every stream ends with exactly one terminal event"
)
WORDS = tuple(_TEXT.split())

FAKE_VOCAB_SIZE = 32_000


class FakeEngine:
    """Cycles words at ``tokens_per_s`` per request (``None``: as fast as the loop runs)."""

    def __init__(
        self,
        *,
        served_model_name: str | None = None,
        adapters: list[str] | None = None,
        max_model_len: int = 2048,
        tokens_per_s: float | None = None,
        max_concurrency: int | None = None,
        default_max_tokens: int = 16,
        vocab_size: int = FAKE_VOCAB_SIZE,
        max_loras: int = 4,
    ):
        self._model = served_model_name or "fake-model"
        self._configured = list(adapters or [])
        self._adapters = list(self._configured)
        self._max_loras = max_loras
        self._lru = AdapterLru(max_loras)
        self._max_model_len = max_model_len
        self._delay = 1.0 / tokens_per_s if tokens_per_s else 0.0
        self._max_concurrency = max_concurrency
        # the real engine defaults to the rest of the context; a fake that fast
        # would flood plumbing tests, so it stops at this many tokens instead
        self._default_max_tokens = default_max_tokens
        self._vocab_size = vocab_size
        self._slots: _Slots | None = None
        # request id -> set when the request is aborted
        self._running: dict[str, asyncio.Event] = {}
        self._started = False

    @property
    def model(self) -> str:
        return self._model

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def stats(self) -> EngineStats:
        return EngineStats(loaded_adapters=self._lru.names(), max_loras=self._max_loras)

    def set_registered_adapters(self, adapters: dict[str, str]) -> None:
        self._adapters = sorted(set(self._configured) | set(adapters))

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def start(self) -> None:
        if self._max_concurrency:
            self._slots = _Slots(self._max_concurrency)
        self._started = True

    async def shutdown(self) -> None:
        for aborted in self._running.values():
            aborted.set()
        self._started = False

    def num_running(self) -> int:
        return len(self._running)

    async def abort(self, request_id: str) -> None:
        if request_id in self._running:
            self._running[request_id].set()

    def generate(
        self,
        request_id: str,
        request: EngineRequest,
        adapter: str | None,
        *,
        lane: str = "interactive",
    ) -> AsyncIterator[EngineStep]:
        steps = self._generate(request_id, request, adapter, engine_priority(lane))
        if isinstance(request, CompletionRequest) and request.echo:
            return echoed(steps, _prompt_text(request))
        return steps

    async def _generate(
        self, request_id: str, request: EngineRequest, adapter: str | None, priority: int
    ) -> AsyncIterator[EngineStep]:
        if not self._started:
            raise RuntimeError("FakeEngine.start() was not awaited")
        adapter = adapter or getattr(request, "lora_path", None)
        if adapter and adapter not in self._adapters:
            raise InvalidRequest(
                f"unknown LoRA adapter {adapter!r}; registered adapters: "
                f"{', '.join(self._adapters) or 'none'}",
                param="lora_path",
            )
        if adapter:
            self._lru.touch(adapter)
        if isinstance(request, CompletionRequest) and request.prompt_ids is not None:
            check_token_ids(request.prompt_ids, vocab_size=self._vocab_size, param="prompt")
        prompt_len = _prompt_len(request)
        requested = request.max_tokens_requested
        max_tokens = resolve_max_tokens(
            requested,
            prompt_len=prompt_len,
            max_model_len=self._max_model_len,
            prompt_param=request.prompt_field,
            max_param=request.max_tokens_field,
        )
        if requested is None:
            max_tokens = min(max_tokens, self._default_max_tokens)
        check_token_ids(
            logit_bias_ids(request.logit_bias), vocab_size=self._vocab_size, param="logit_bias"
        )
        check_token_ids(
            getattr(request, "stop_token_ids", None) or [],
            vocab_size=self._vocab_size,
            param="stop_token_ids",
        )

        if request_id in self._running:
            raise InvalidRequest(f"request {request_id} is already running in this engine")
        aborted = self._running[request_id] = asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                arrived = time.monotonic()
                if self._slots is not None and not await self._slots.acquire(priority, aborted):
                    yield _abort_step(range(request.n), prompt_len, 0)
                    return
                if self._slots is not None:
                    stack.callback(self._slots.release)
                queued_s: float | None = time.monotonic() - arrived
                async for step in self._run(aborted, request, prompt_len, max_tokens):
                    # the wait for a slot is this engine's queue
                    step.queued_s, queued_s = queued_s, None
                    yield step
        finally:
            del self._running[request_id]

    async def _run(
        self,
        aborted: asyncio.Event,
        request: EngineRequest,
        prompt_len: int,
        max_tokens: int,
    ) -> AsyncIterator[EngineStep]:
        n = request.n or 1
        stops = list(request.stop or [])
        keep_stop = bool(getattr(request, "no_stop_trim", False))
        want_logprobs = request.logprobs_count is not None
        top = request.logprobs_count or 0
        seed = _seed(request)
        # the words already written, when continuing the assistant's final message
        start = _continued_words(request)
        texts = [""] * n
        sent = [0] * n  # characters of texts[i] already sent
        done: list[FinishReason | None] = [None] * n
        produced = 0
        while True:
            # a plain sleep (not a wait on the event) keeps thousands of simulated
            # requests cheap; an abort lands within one token's time
            await asyncio.sleep(self._delay)
            if aborted.is_set():
                yield _abort_step([i for i in range(n) if done[i] is None], prompt_len, produced)
                return
            choices = []
            for i in range(n):
                if done[i] is not None:
                    continue
                k = len(texts[i].split())
                word = WORDS[(seed + 7 * i + start + k) % len(WORDS)]
                texts[i] += word + " "
                produced += 1
                delta = ChoiceDelta(index=i)
                if want_logprobs:
                    delta.logprobs = [_logprob(word + " ", top)]
                hit = _find_stop(texts[i], stops)
                if hit is not None:
                    pos, stop = hit
                    end = pos + len(stop) if keep_stop else pos
                    texts[i] = texts[i][:end]
                    delta.finish_reason, delta.stop_reason = "stop", stop
                elif k + 1 >= max_tokens:
                    delta.finish_reason = "length"
                # hold back a tail that could still become a stop string
                hold = 0 if delta.finish_reason else max((len(s) - 1 for s in stops), default=0)
                upto = max(sent[i], len(texts[i]) - hold)
                delta.content = texts[i][sent[i] : upto]
                sent[i] = upto
                done[i] = delta.finish_reason
                choices.append(delta)
            finished = all(d is not None for d in done)
            yield EngineStep(
                choices=choices,
                prompt_tokens=prompt_len,
                completion_tokens=produced,
                finished=finished,
            )
            if finished:
                return


class _Slots:
    """At most ``size`` requests generate at once; the others wait, the lowest priority
    number first, then in arrival order."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, priority: int, aborted: asyncio.Event) -> bool:
        """Wait for a slot; False when the request was aborted first."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return True
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), turn))
        abort: asyncio.Future[Any] = asyncio.ensure_future(aborted.wait())
        try:
            await asyncio.wait({turn, abort}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._leave(turn)
            raise
        finally:
            abort.cancel()
        if turn.done() and not aborted.is_set():
            return True
        self._leave(turn)
        return False

    def release(self) -> None:
        """Hand the slot to the first waiter still waiting, else free it."""
        while self._waiting:
            turn = heapq.heappop(self._waiting)[2]
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1

    def _leave(self, turn: asyncio.Future[None]) -> None:
        """Stop waiting: a slot handed over meanwhile goes on to the next waiter; an
        unanswered turn is cancelled, and release() skips it."""
        if turn.done():
            self.release()
        else:
            turn.cancel()


def _abort_step(indices: Iterable[int], prompt_tokens: int, completion_tokens: int) -> EngineStep:
    return EngineStep(
        choices=[ChoiceDelta(index=i, finish_reason="abort") for i in indices],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finished=True,
    )


def _prompt_len(request: EngineRequest) -> int:
    """A stand-in token count: words of every message, plus a few per message; a text
    prompt's words, or its token ids."""
    if isinstance(request, CompletionRequest):
        text = request.prompt_text
        return len(request.prompt) if text is None else len(text.split()) + 1
    total = 0
    for message in request.message_dicts():
        content = message.get("content")
        total += 4 + (len(str(content).split()) if content else 0)
    return total + 3


def _continued_words(request: EngineRequest) -> int:
    """How many words the assistant's final message holds when the request continues it."""
    if isinstance(request, CompletionRequest) or not request.continue_final_message:
        return 0
    content = request.message_dicts()[-1].get("content")
    return len(content.split()) if isinstance(content, str) else 0


def _prompt_text(request: CompletionRequest) -> str:
    """The prompt as text: as given, or its token ids as this engine's words."""
    ids = request.prompt_ids
    if ids is None:
        return str(request.prompt)
    return " ".join(WORDS[t % len(WORDS)] for t in ids) + " "


def _seed(request: EngineRequest) -> int:
    seed = getattr(request, "effective_seed", None)
    return int(seed) if isinstance(seed, int) else 0


def _find_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    found = [(text.find(s), s) for s in stops if s and s in text]
    return min(found) if found else None


def _logprob(token: str, top: int) -> dict[str, Any]:
    def entry(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    first = entry(token, math.log(0.5))
    alts = [entry(f"<alt{j}>", math.log(0.5 / (j + 2))) for j in range(max(top - 1, 0))]
    return {**first, "top_logprobs": ([first] + alts)[:top]}
