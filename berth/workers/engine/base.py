"""The engine interface every engine (real vLLM or the fake) implements.

The worker runtime only talks to an :class:`Engine`; it never imports vLLM.
An engine turns one request (a chat completion, rendered with the model's chat template,
or a text completion, whose prompt goes in as it is) into a stream of
:class:`EngineStep` objects, one per engine step in which the request made progress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from berth.protocol.keys import LANES

if TYPE_CHECKING:
    from berth.protocol.chat import ChatCompletionRequest
    from berth.protocol.completion import CompletionRequest

    EngineRequest = ChatCompletionRequest | CompletionRequest

FinishReason = Literal["stop", "length", "tool_calls", "abort"]


@dataclass(slots=True)
class ChoiceDelta:
    """What one choice (of ``n``) produced in one engine step."""

    index: int
    content: str = ""
    reasoning_content: str = ""
    # OpenAI-shaped streaming tool-call deltas: {"index", "id", "type", "function": {...}}
    tool_calls: list[dict[str, Any]] | None = None
    # OpenAI-shaped ChatCompletionTokenLogprob dicts for the tokens of this step
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: FinishReason | None = None
    # the stop string or token id that ended the choice, when one did
    stop_reason: str | int | None = None


@dataclass(slots=True)
class EngineStep:
    """Progress of one request in one engine step."""

    choices: list[ChoiceDelta] = field(default_factory=list)
    prompt_tokens: int = 0
    # cumulative over all choices so far
    completion_tokens: int = 0
    # prompt tokens whose KV the engine found in its prefix cache (vLLM's
    # num_cached_tokens), and completion tokens that were reasoning: set on the last step
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # on the last step: how often the engine set the request aside when its KV cache ran
    # out (vLLM's preemption, the least urgent first; it recomputes the request later and
    # its client sees only a pause)
    preemptions: int = 0
    # True on the last step: every choice has a finish_reason
    finished: bool = False
    # on the first step, when the engine knows it: seconds the request waited inside the
    # engine before it was scheduled (its queue, apart from prefill), for traces
    queued_s: float | None = None


@dataclass(slots=True)
class EngineStats:
    """What the engine holds now, for the worker's heartbeat and placement."""

    # adapters in the engine's LoRA cache, least recently used first
    loaded_adapters: list[str] = field(default_factory=list)
    # adapters one engine step can mix (vLLM's max_loras); 0 when LoRA is off
    max_loras: int = 0
    # share of the KV cache in use, when the engine reports it
    kv_cache_usage: float | None = None
    # requests waiting inside the engine's own scheduler
    waiting: int = 0


class AdapterLru:
    """The adapters an engine used most recently, as its LoRA cache (LRU) holds them."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._order: dict[str, None] = {}

    def touch(self, name: str) -> None:
        self._order.pop(name, None)
        self._order[name] = None
        while len(self._order) > self._capacity:
            del self._order[next(iter(self._order))]

    def names(self) -> list[str]:
        return list(self._order)


async def echoed(steps: AsyncIterator[EngineStep], text: str) -> AsyncIterator[EngineStep]:
    """``steps`` with ``text`` (a text completion's prompt, for ``echo``) before each
    choice's first output."""
    started: set[int] = set()
    async for step in steps:
        for choice in step.choices:
            if choice.index not in started:
                started.add(choice.index)
                choice.content = text + choice.content
        yield step


def engine_priority(lane: str) -> int:
    """The engine's scheduling priority for a request of ``lane``: as vLLM counts it, a
    lower number is scheduled first, so interactive is 0, job 1, batch 2.

    The scheduler's lanes order only its own queue; inside the engine, requests already
    dispatched would otherwise run first come first served, and a flood of batch work
    there holds an interactive request behind it. A lane berth does not know ranks last.
    (A request carries no priority of its own: berth refuses SGLang's ``priority``.)
    """
    return LANES.index(lane) if lane in LANES else len(LANES)


class Engine(Protocol):
    """One long-lived inference engine owned by a worker process."""

    @property
    def model(self) -> str:
        """The served model name."""
        ...

    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters this engine can serve (loaded on demand)."""
        ...

    @property
    def max_model_len(self) -> int: ...

    async def start(self) -> None:
        """Load the model; must be awaited before generate()."""
        ...

    def generate(
        self,
        request_id: str,
        request: EngineRequest,
        adapter: str | None,
        *,
        lane: str = "interactive",
    ) -> AsyncIterator[EngineStep]:
        """Run one request. Raises InvalidRequest (before the first step) for checks
        that need the model: vocabulary, context length, unknown adapter. Requests of a
        more urgent ``lane`` are started first (:func:`engine_priority`)."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a running request; its iterator ends with finish_reason "abort"."""
        ...

    def num_running(self) -> int:
        """Requests currently inside the engine (running or waiting in it)."""
        ...

    def stats(self) -> EngineStats:
        """Loaded adapters and cache figures for the heartbeat; cheap, called every beat."""
        ...

    def set_registered_adapters(self, adapters: dict[str, str]) -> None:
        """Adapters registered at run time (name -> directory), beside the configured ones;
        replaces the previous set."""
        ...

    async def shutdown(self) -> None: ...
