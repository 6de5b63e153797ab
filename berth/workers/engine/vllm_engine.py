"""The real engine: one long-lived vLLM ``AsyncLLM`` that every request of the worker feeds.

Each chat request is rendered with the model's chat template (a text completion's
prompt is tokenized as it is, or taken as the token ids it is), checked against the
model (context length, vocabulary, adapter), mapped to ``SamplingParams`` and
submitted with ``RequestOutputKind.DELTA``; vLLM batches it continuously with
everything else in flight. Every delta of a chat request goes through vLLM's own
tool-call and reasoning parsers (one per choice), and comes out as an :class:`EngineStep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError, VLLMValidationError
from vllm.inputs.engine import tokens_input
from vllm.lora.request import LoRARequest
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from berth.plumbing import tracing
from berth.protocol.completion import CompletionRequest
from berth.protocol.errors import EngineFailure, InvalidRequest
from berth.workers.engine.adapters import AdapterRegistry
from berth.workers.engine.base import (
    AdapterLru,
    ChoiceDelta,
    EngineStats,
    EngineStep,
    FinishReason,
    echoed,
    engine_priority,
)
from berth.workers.engine.chat import render_prompt, template_kwargs
from berth.workers.engine.checks import check_token_ids
from berth.workers.engine.config import EngineConfig
from berth.workers.engine.grammar import CompileBudget, GrammarGate
from berth.workers.engine.mapping import (
    build_sampling_params,
    constraint_param,
    constraint_spec,
    invalid_from_vllm,
    structured_outputs,
)
from berth.workers.engine.parsers import ChoiceParser, OutputParsers, RequestParsing

if TYPE_CHECKING:
    from vllm.outputs import CompletionOutput

    from berth.protocol.chat import ChatCompletionRequest
    from berth.workers.engine.base import EngineRequest

log = logging.getLogger(__name__)

# prompts longer than this many characters are tokenized off the event loop
_INLINE_RENDER_CHARS = 8_000


@dataclass(slots=True)
class _Prompt:
    """A request made ready for vLLM: its prompt token ids, how its output is parsed (a
    chat request's ``parsing``; None for a text completion, whose output is plain text),
    one parser per choice, and the text an ``echo`` puts before the output."""

    token_ids: list[int]
    parsing: RequestParsing | None
    choice_parsers: list[ChoiceParser]
    named_tool: bool = False
    echo: str | None = None


class VllmEngine:
    """vLLM's ``AsyncLLM`` behind berth's :class:`~berth.workers.engine.base.Engine` interface."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self._registry = AdapterRegistry(config.adapters, config.adapter_root)
        self._llm: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._parsers: OutputParsers | None = None
        self._vocab_size = 0
        self._max_model_len = config.max_model_len or 0
        self._defaults: dict[str, Any] = {}
        self._lora_ids: dict[str, int] = {}
        # adapter name -> its first load; vLLM validates an adapter when it loads it,
        # and a failure while a batch runs kills the engine, so each adapter is loaded
        # (and refused, if need be) once up front, outside any batch
        self._loads: dict[str, asyncio.Future[bool]] = {}
        self._running: set[str] = set()
        self._aborted: set[str] = set()
        self._lru = AdapterLru(config.max_cpu_loras or config.max_loras)
        self._gauges: list[_SchedulerGauge] = []
        self._grammar: GrammarGate | None = None
        # vLLM traces only with its own OTLP endpoint (engine arg otlp_traces_endpoint);
        # without one it drops trace headers with a warning, so none are sent
        self._traces_to_vllm = bool(config.engine_args.get("otlp_traces_endpoint"))

    # --- Engine interface ---

    @property
    def model(self) -> str:
        return self.config.name

    @property
    def adapters(self) -> list[str]:
        return self._registry.names

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def num_running(self) -> int:
        return len(self._running)

    def stats(self) -> EngineStats:
        usage = [g.kv_cache_usage for g in self._gauges if g.kv_cache_usage is not None]
        return EngineStats(
            loaded_adapters=self._lru.names(),
            max_loras=self.config.max_loras if self.config.enable_lora else 0,
            kv_cache_usage=max(usage) if usage else None,
            waiting=sum(g.waiting for g in self._gauges),
        )

    def set_registered_adapters(self, adapters: dict[str, str]) -> None:
        self._registry.set_registered(adapters)

    async def start(self) -> None:
        if self._llm is not None:
            return
        cfg = self.config
        if cfg.kv_cache_space_gib is not None:
            # read by the CPU build's engine process, which inherits our environment
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(cfg.kv_cache_space_gib)))
        args = AsyncEngineArgs(**engine_settings(cfg))
        log.info("starting vLLM engine for %s (%s)", cfg.name, cfg.model)

        # building the engine blocks for tens of seconds while the engine process
        # loads the model; keep the event loop (heartbeats) running meanwhile
        def gauge(vllm_config: Any, engine_index: int = 0) -> _SchedulerGauge:
            made = _SchedulerGauge(vllm_config, engine_index)
            self._gauges.append(made)
            return made

        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=[gauge])
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        model_config = llm.model_config
        self._vocab_size = model_config.get_vocab_size()
        self._max_model_len = model_config.max_model_len
        self._defaults = dict(model_config.get_diff_sampling_param())
        self._grammar = GrammarGate(
            await asyncio.to_thread(_tokenizer_info, self._tokenizer, self._vocab_size),
            CompileBudget(
                timeout_s=cfg.grammar_timeout_s,
                loop_s=cfg.grammar_loop_s,
                memory_mib=cfg.grammar_memory_mib,
                cache_size=cfg.grammar_cache_size,
            ),
        )
        self._grammar.start()
        self._parsers = OutputParsers(
            self._tokenizer,
            tool_call_parser=cfg.tool_call_parser,
            reasoning_parser=cfg.reasoning_parser,
            model=cfg.name,
        )
        log.info(
            "vLLM engine ready: %s, context %d, vocabulary %d, adapters %s",
            cfg.name,
            self._max_model_len,
            self._vocab_size,
            ", ".join(self.adapters) or "none",
        )

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        grammar, self._grammar = self._grammar, None
        if grammar is not None:
            await grammar.close()
        if llm is not None:
            self._aborted.update(self._running)
            llm.shutdown()

    async def abort(self, request_id: str) -> None:
        if request_id not in self._running:
            return
        log.info("aborting request %s", request_id)
        self._aborted.add(request_id)
        await self._abort_in_vllm(request_id)

    async def _abort_in_vllm(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    def generate(
        self,
        request_id: str,
        request: EngineRequest,
        adapter: str | None,
        *,
        lane: str = "interactive",
    ) -> AsyncIterator[EngineStep]:
        return self._generate(request_id, request, adapter, engine_priority(lane))

    # --- one request ---

    async def _generate(
        self, request_id: str, req: EngineRequest, adapter: str | None, priority: int
    ) -> AsyncIterator[EngineStep]:
        llm, parsers = self._llm, self._parsers
        if llm is None or parsers is None:
            raise EngineFailure("the engine has not been started")
        if request_id in self._running:
            raise InvalidRequest(f"request {request_id} is already running in this engine")
        self._running.add(request_id)
        try:
            lora, lora_param = self._lora_request(adapter, req)
            if lora is not None:
                await self._load_adapter(lora, lora_param)
            if isinstance(req, CompletionRequest):
                ready = await self._text_prompt(req)
            else:
                ready = await self._chat_prompt(req, parsers)
            prompt, parsing = ready.token_ids, ready.parsing
            params = build_sampling_params(
                req,
                vocab_size=self._vocab_size,
                max_model_len=self._max_model_len,
                prompt_len=len(prompt),
                parsing=parsing,
                defaults=self._defaults,
            )
            if request_id in self._aborted:
                yield _abort_step(range(req.n), len(prompt), 0)
                return
            stream = llm.generate(
                tokens_input(prompt),
                params,
                request_id,
                lora_request=lora,
                priority=priority,
                # vLLM's own request span joins berth's trace (when both trace)
                trace_headers=tracing.carrier() if self._traces_to_vllm else None,
                reasoning_ended=parsing.reasoning_ended(prompt) if parsing else None,
                reasoning_parser_kwargs=parsing.reasoning_parser_kwargs if parsing else None,
            )
            steps = self._steps(
                request_id, req, stream, prompt, ready.choice_parsers, ready.named_tool
            )
            if ready.echo is not None:
                steps = echoed(steps, ready.echo)
            async with contextlib.aclosing(stream):
                async for step in steps:
                    yield step
        finally:
            self._running.discard(request_id)
            self._aborted.discard(request_id)

    async def _chat_prompt(self, req: ChatCompletionRequest, parsers: OutputParsers) -> _Prompt:
        """The chat template's prompt, and the request's tool and reasoning parsing."""
        chars = sum(len(str(m.get("content") or "")) for m in req.message_dicts())
        if chars > _INLINE_RENDER_CHARS:
            prompt = await asyncio.to_thread(render_prompt, self._tokenizer, req)
        else:
            prompt = render_prompt(self._tokenizer, req)
        parsing = parsers.for_request(
            req,
            structured_outputs(req),
            skip_special_tokens=req.skip_special_tokens,
            chat_template_kwargs=template_kwargs(req),
        )
        await self._check_constraint(parsing.structured_outputs, req)
        return _Prompt(
            prompt,
            parsing,
            [parsing.choice_parser(prompt) for _ in range(req.n)],
            named_tool=req.tools is not None and not isinstance(req.tool_choice, str | None),
        )

    async def _text_prompt(self, req: CompletionRequest) -> _Prompt:
        """A text completion's prompt as it is: its token ids, or its text tokenized as
        vLLM's server tokenizes a completion's (special tokens such as BOS added)."""
        text, ids = req.prompt_text, req.prompt_ids
        if ids is not None:
            prompt = list(ids)
            check_token_ids(prompt, vocab_size=self._vocab_size, param="prompt")
        elif text is None:
            raise AssertionError("a parsed prompt is text or token ids")
        elif len(text) > _INLINE_RENDER_CHARS:
            prompt = list(await asyncio.to_thread(self._tokenizer.encode, text))
        else:
            prompt = list(self._tokenizer.encode(text))
        await self._check_constraint(structured_outputs(req), req)
        echo = None
        if req.echo:
            echo = text if text is not None else self._tokenizer.decode(prompt)
        plain = [ChoiceParser(None, None, prompt) for _ in range(req.n)]
        return _Prompt(prompt, None, plain, echo=echo)

    async def _steps(
        self,
        request_id: str,
        req: EngineRequest,
        stream: AsyncIterator[Any],
        prompt: list[int],
        parsers: list[ChoiceParser],
        named_tool: bool,
    ) -> AsyncIterator[EngineStep]:
        n = req.n
        finish: list[FinishReason | None] = [None] * n
        completion_tokens = 0
        started = abort_sent = reported_queue = False
        while True:
            try:
                out = await anext(stream)
            except StopAsyncIteration:
                break
            except (VLLMValidationError, VLLMClientError, ValueError) as exc:
                if started:
                    raise EngineFailure(f"the engine failed the request: {exc}") from exc
                if isinstance(exc, VLLMValidationError):
                    raise invalid_from_vllm(exc, req) from None
                raise InvalidRequest(str(exc)) from None
            except EngineDeadError as exc:
                raise EngineFailure("the engine process died") from exc
            started = True
            if request_id in self._aborted and not abort_sent and not out.finished:
                # abort() can land while vLLM is still admitting the request, before
                # it knows the id; repeat it now that the request surely exists
                abort_sent = True
                await self._abort_in_vllm(request_id)
            step = EngineStep(prompt_tokens=len(prompt))
            for output in out.outputs:
                i = output.index
                if finish[i] is not None:
                    continue
                completion_tokens += len(output.token_ids)
                delta = self._choice_delta(req, output, parsers[i], named_tool)
                finish[i] = delta.finish_reason
                step.choices.append(delta)
            step.completion_tokens = completion_tokens
            step.finished = all(f is not None for f in finish)
            if step.finished:
                step.cached_tokens = out.num_cached_tokens or 0
                step.reasoning_tokens = sum(p.reasoning_tokens() for p in parsers)
                if out.metrics is not None:
                    step.preemptions = out.metrics.num_preemptions
            if not reported_queue:
                reported_queue = True
                stats = out.metrics
                if stats is not None and stats.scheduled_ts and stats.queued_ts:
                    step.queued_s = max(0.0, stats.scheduled_ts - stats.queued_ts)
            if step.finished or step.choices:
                yield step
            if step.finished:
                return
        # The stream ended with choices unfinished: vLLM ended it without a
        # final output for them, which happens when the request was aborted.
        unfinished = [i for i in range(n) if finish[i] is None]
        if request_id not in self._aborted:
            raise EngineFailure("the engine ended the request without finishing it")
        yield _abort_step(unfinished, len(prompt), completion_tokens)

    async def _check_constraint(self, constraint: Any, req: EngineRequest) -> None:
        """Compile the constraint under budget, off the event loop, before vLLM sees it:
        vLLM would convert it on this loop (beside the heartbeat) and compile it in the
        engine process, and neither has a bound of its own."""
        spec = constraint_spec(constraint)
        if spec is not None and self._grammar is not None:
            await self._grammar.check(*spec, param=constraint_param(req))

    def _choice_delta(
        self,
        req: EngineRequest,
        output: CompletionOutput,
        parser: ChoiceParser,
        named_tool: bool,
    ) -> ChoiceDelta:
        token_ids = list(output.token_ids)
        reason = output.finish_reason
        parsed = parser.feed(output.text, token_ids, finished=reason is not None)
        delta = ChoiceDelta(
            index=output.index,
            content=parsed.content,
            reasoning_content=parsed.reasoning,
            tool_calls=parsed.tool_calls,
        )
        top = req.logprobs_count
        if top is not None and output.logprobs is not None:
            delta.logprobs = openai_logprobs(self._tokenizer, token_ids, output.logprobs, top)
        if reason is not None:
            delta.finish_reason = _finish_reason(reason, parser.tools_called, named_tool)
            delta.stop_reason = output.stop_reason
        return delta

    def _lora_request(
        self, adapter: str | None, req: EngineRequest
    ) -> tuple[LoRARequest | None, str]:
        param = "lora_path"
        if adapter:
            name, path = self._registry.resolve(adapter, param=param)
        elif req.lora_path:
            name, path = self._registry.resolve(req.lora_path, param=param)
        elif req.model != self.model and req.model in self._registry:
            # like vLLM's server: `model` may name a registered adapter
            param = "model"
            name, path = self._registry.resolve(req.model, param=param)
        else:
            return None, param
        if not self.config.enable_lora:
            raise InvalidRequest("this model is served without LoRA adapters", param=param)
        lora_id = self._lora_ids.setdefault(name, len(self._lora_ids) + 1)
        self._lru.touch(name)
        return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(path)), param

    async def _load_adapter(self, lora: LoRARequest, param: str) -> None:
        load = self._loads.get(lora.lora_name)
        if load is None:
            assert self._llm is not None
            log.info("loading LoRA adapter %s from %s", lora.lora_name, lora.lora_path)
            load = self._loads[lora.lora_name] = asyncio.ensure_future(self._llm.add_lora(lora))
        try:
            await asyncio.shield(load)
        except Exception as exc:
            # forget the failure: the adapter's files may be fixed and asked for again
            if self._loads.get(lora.lora_name) is load:
                del self._loads[lora.lora_name]
            reason = str(exc)
            if worker := re.search(r"Worker failed with error '(.*)'", reason, re.DOTALL):
                reason = worker.group(1)
            reason = reason.removeprefix("Call to add_lora method failed: ")
            raise InvalidRequest(
                f"LoRA adapter {lora.lora_name!r} cannot be served by this engine: {reason}",
                param=param,
            ) from None


def engine_settings(cfg: EngineConfig) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` fields for ``cfg``: the values berth derives, under vLLM's
    own flags given to the worker (``berth worker --dtype ...``), which win."""
    settings: dict[str, Any] = dict(
        model=cfg.model,
        served_model_name=[cfg.name, *cfg.aliases],
        tokenizer=cfg.tokenizer,
        dtype=cfg.dtype,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        enable_prefix_caching=cfg.enable_prefix_caching,
        enforce_eager=cfg.enforce_eager,
        seed=cfg.seed,
        enable_lora=cfg.enable_lora,
        max_loras=cfg.max_loras,
        max_lora_rank=cfg.max_lora_rank,
        max_cpu_loras=cfg.max_cpu_loras,
        # the engine's structured-output gate waits for the end of reasoning
        reasoning_parser=cfg.reasoning_parser or "",
        # lanes reach the engine: a request's priority comes from its lane
        # (engine_priority), so dispatched batch work does not hold interactive requests
        # behind it; `--scheduling-policy fcfs` on the worker turns it off
        scheduling_policy="priority",
        disable_log_stats=True,
    )
    return settings | cfg.engine_args


class _SchedulerGauge(StatLoggerBase):
    """Keeps the engine scheduler's latest KV-cache use and queue length for heartbeats."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.kv_cache_usage: float | None = None
        self.waiting = 0

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
            self.waiting = int(scheduler_stats.num_waiting_reqs)

    def log_engine_initialized(self) -> None:
        pass


def _tokenizer_info(tokenizer: Any, vocab_size: int) -> str:
    """xgrammar's view of the tokenizer, built as vLLM's xgrammar backend builds it."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    return str(info.serialize_json())


def _finish_reason(reason: str, tools_called: bool, named_tool: bool) -> FinishReason:
    if reason == "error":
        raise EngineFailure("the engine hit an internal error while generating")
    if reason == "abort":
        return "abort"
    if reason == "length":
        return "length"
    # OpenAI: "tool_calls" when the model chose to call tools (auto/required);
    # a named tool_choice forced the call, and ends with "stop"
    if tools_called and not named_tool:
        return "tool_calls"
    return "stop"  # "stop", and vLLM's "repetition" (an early stop)


def _abort_step(indices: Sequence[int] | range, prompt_tokens: int, completion: int) -> EngineStep:
    return EngineStep(
        choices=[ChoiceDelta(index=i, finish_reason="abort") for i in indices],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        finished=True,
    )


def openai_logprobs(
    tokenizer: Any, token_ids: Sequence[int], logprobs: Sequence[Any], top: int
) -> list[dict[str, Any]]:
    """vLLM's per-token ``{id: Logprob}`` → OpenAI ``ChatCompletionTokenLogprob`` dicts."""
    out = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates.get(token_id) if candidates else None
        token = _token_text(tokenizer, token_id, chosen)
        entry: dict[str, Any] = {
            "token": token,
            "logprob": max(chosen.logprob, -9999.0) if chosen is not None else -9999.0,
            "bytes": list(token.encode("utf-8", errors="replace")),
            "top_logprobs": [],
        }
        if candidates and top:
            ranked = sorted(candidates.items(), key=lambda kv: kv[1].rank or math.inf)[:top]
            for alt_id, alt in ranked:
                alt_token = _token_text(tokenizer, alt_id, alt)
                entry["top_logprobs"].append(
                    {
                        "token": alt_token,
                        "logprob": max(alt.logprob, -9999.0),
                        "bytes": list(alt_token.encode("utf-8", errors="replace")),
                    }
                )
        out.append(entry)
    return out


def _token_text(tokenizer: Any, token_id: int, logprob: Any) -> str:
    decoded = getattr(logprob, "decoded_token", None)
    return decoded if decoded is not None else tokenizer.decode([token_id])
