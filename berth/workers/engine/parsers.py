"""Split generated text into content, reasoning and tool calls with vLLM's own parsers.

vLLM composes a tool-call parser (``--tool-call-parser``, e.g. ``hermes``) and a
reasoning parser (``--reasoning-parser``, e.g. ``deepseek_r1``) into one
``Parser`` that its server holds per choice and feeds every delta. berth does
the same, so a model family's quirks stay vLLM's business. The parsers read a
vLLM ``ChatCompletionRequest``; :func:`vllm_request` builds the few fields they
look at (tools, tool_choice, parallel_tool_calls, the structured-output
constraint) from berth's request.

The tool parser also decides how ``tool_choice="required"`` or a named tool is
enforced: ``Parser.adjust_request`` sets the grammar (an xgrammar structural
tag in the parser's own call syntax, or vLLM's JSON-schema fallback), and the
same parser later reads the constrained output back into tool calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as VllmChatRequest,
)
from vllm.exceptions import VLLMValidationError
from vllm.parser.parser_manager import ParserManager
from vllm.sampling_params import StructuredOutputsParams

from berth.protocol.errors import InvalidRequest, Unsupported

if TYPE_CHECKING:
    from vllm.parser.abstract_parser import Parser
    from vllm.tokenizers import TokenizerLike

    from berth.protocol.chat import ChatCompletionRequest

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ParsedDelta:
    """What one step of one choice adds, after parsing."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None


def _plain(value: Any) -> Any:
    """Pydantic models to plain JSON-like data, so vLLM's models can validate them."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True, by_alias=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def uses_tools(req: ChatCompletionRequest) -> bool:
    """Whether the output should be parsed for tool calls."""
    return bool(req.tools) and req.tool_choice != "none"


def vllm_request(
    req: ChatCompletionRequest,
    model: str,
    structured_outputs: StructuredOutputsParams | None = None,
) -> VllmChatRequest:
    """The vLLM request the parsers read: tools, tool choice and constraint only."""
    data: dict[str, Any] = {"model": model, "messages": []}
    if req.tools:
        tools = req.tool_dicts() or []
        if _forces_tool(req.tool_choice):
            # vLLM pins a call's arguments to the schema only for `strict` tools;
            # berth's contract is that a forced call matches the tool's schema,
            # so a forced tool is strict unless the client said otherwise
            for tool in tools:
                tool["function"].setdefault("strict", True)
        data["tools"] = tools
        data["tool_choice"] = _plain(req.tool_choice) if req.tool_choice is not None else "auto"
        parallel = getattr(req, "parallel_tool_calls", None)
        if parallel is not None:
            data["parallel_tool_calls"] = parallel
    try:
        vreq = VllmChatRequest.model_validate(data)
    except (ValueError, VLLMValidationError) as exc:
        raise InvalidRequest(f"invalid tools or tool_choice: {exc}", param="tool_choice") from None
    # assigned after validation: vLLM refuses a schema next to a named tool choice
    # in its request validator, while berth lets the tool choice win (as vLLM's
    # own adjust_request does for required/named tools)
    vreq.structured_outputs = structured_outputs
    return vreq


class OutputParsers:
    """The vLLM parser classes one engine uses, built once per (tools, reasoning) combination."""

    def __init__(
        self,
        tokenizer: TokenizerLike,
        *,
        tool_call_parser: str | None,
        reasoning_parser: str | None,
        model: str = "model",
    ):
        self._tokenizer = tokenizer
        self._tool = tool_call_parser
        self._reasoning = reasoning_parser
        self._model = model
        self._classes: dict[tuple[bool, bool], type[Parser] | None] = {}
        # fail at start, not on the first request, when a name is wrong
        self._class(bool(tool_call_parser), bool(reasoning_parser))

    @property
    def has_tool_parser(self) -> bool:
        return self._tool is not None

    @property
    def has_reasoning_parser(self) -> bool:
        return self._reasoning is not None

    def _class(self, tools: bool, reasoning: bool) -> type[Parser] | None:
        key = (tools and self._tool is not None, reasoning and self._reasoning is not None)
        if key not in self._classes:
            self._classes[key] = ParserManager.get_parser(
                tool_parser_name=self._tool if key[0] else None,
                reasoning_parser_name=self._reasoning if key[1] else None,
                enable_auto_tools=key[0],
                model_name=self._model,
                tokenizer=self._tokenizer,
            )
        return self._classes[key]

    def for_request(
        self,
        req: ChatCompletionRequest,
        structured_outputs: StructuredOutputsParams | None,
        *,
        skip_special_tokens: bool,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> RequestParsing:
        """How to constrain and parse one request's output."""
        tools = uses_tools(req)
        reasoning = bool(getattr(req, "separate_reasoning", False))
        if tools and not self.has_tool_parser and _forces_tool(req.tool_choice):
            raise Unsupported(
                "this model is served without a tool-call parser, so tool_choice "
                "'required' or a named tool cannot be honoured; use 'auto' or 'none'",
                param="tool_choice",
            )
        cls = self._class(tools, reasoning)
        vreq = vllm_request(req, self._model, structured_outputs)
        vreq.skip_special_tokens = skip_special_tokens
        parser = None
        if cls is not None:
            parser = cls(
                self._tokenizer,
                vreq.tools,  # type: ignore[arg-type]
                chat_template_kwargs=chat_template_kwargs or {},
            )
            try:
                vreq = parser.adjust_request(vreq)  # type: ignore[assignment]
            except (ValueError, VLLMValidationError) as exc:
                raise InvalidRequest(
                    f"cannot constrain the output to the tools: {exc}", param="tools"
                ) from None
        return RequestParsing(
            cls=cls,
            tokenizer=self._tokenizer,
            vreq=vreq,
            chat_template_kwargs=chat_template_kwargs or {},
            first=parser,
        )


def _forces_tool(tool_choice: Any) -> bool:
    return tool_choice == "required" or (
        tool_choice is not None and not isinstance(tool_choice, str)
    )


@dataclass
class RequestParsing:
    """One request's parsing: the adjusted constraint and a parser per choice."""

    cls: type[Parser] | None
    tokenizer: Any
    vreq: VllmChatRequest
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # the parser that adjusted the request; each choice gets a fresh one
    first: Parser | None = None

    @property
    def structured_outputs(self) -> StructuredOutputsParams | None:
        """The constraint after the tool parser had its say."""
        return self.vreq.structured_outputs

    @property
    def skip_special_tokens(self) -> bool:
        # hermes turns this off so <tool_call> markup reaches the parser
        return bool(self.vreq.skip_special_tokens)

    @property
    def reasoning_parser_kwargs(self) -> dict[str, Any] | None:
        if self.cls is None or self.cls.reasoning_parser_cls is None:
            return None
        return {"chat_template_kwargs": self.chat_template_kwargs}

    def reasoning_ended(self, prompt_token_ids: list[int]) -> bool | None:
        """For the engine's structured-output gate: does reasoning end inside the prompt?"""
        if self.first is None or self.first.reasoning_parser is None:
            return None
        return self.first.is_reasoning_end(prompt_token_ids)

    def choice_parser(self, prompt_token_ids: list[int]) -> ChoiceParser:
        """A fresh parser for one choice (vLLM's parsers keep per-stream state)."""
        if self.cls is None:
            return ChoiceParser(None, self.vreq, prompt_token_ids)
        parser = self.cls(
            self.tokenizer,
            self.vreq.tools,  # type: ignore[arg-type]
            chat_template_kwargs=self.chat_template_kwargs,
        )
        return ChoiceParser(parser, self.vreq, prompt_token_ids)


class ChoiceParser:
    """Feeds one choice's deltas through vLLM's parser; remembers whether tools were called."""

    def __init__(
        self, parser: Parser | None, vreq: VllmChatRequest | None, prompt_token_ids: list[int]
    ):
        """``parser`` None (a text completion, or a chat request with nothing to parse):
        the text passes through as content."""
        self._parser = parser
        self._vreq = vreq
        self._prompt = prompt_token_ids
        self._first = True
        self.tools_called = False
        # reasoning tokens are counted as the parser routes their text: a token counts
        # while the answer is still reasoning (vLLM's own count_reasoning_tokens counts
        # only tokens between explicit start and end markers in the output, so a template
        # that opens the thinking in the prompt, or a random model that emits a stray
        # marker, makes it disagree with the reasoning_content the client got)
        reasoning = getattr(parser, "reasoning_parser", None)
        self._end_id = getattr(reasoning, "end_token_id", None)
        self._reasoning_done = reasoning is None
        self._reasoning_count = 0
        # tokens whose text the parser holds back (a delta of None): counted when it speaks
        self._held = 0

    def reasoning_tokens(self) -> int:
        """How many of the choice's tokens so far went to reasoning (0 without a reasoning
        parser), the thinking markers included."""
        return self._reasoning_count

    def _count_reasoning(self, token_ids: list[int], delta: Any) -> None:
        if self._reasoning_done:
            return
        tokens = self._held + len(token_ids)
        if delta is None:
            self._held = tokens
            return
        held, self._held = self._held, 0
        if not (delta.content or delta.tool_calls):
            self._reasoning_count += tokens
            return
        # the reasoning ended here: up to its end marker it was still reasoning
        self._reasoning_done = True
        if delta.reasoning or self._end_id in token_ids:
            end = token_ids.index(self._end_id) + 1 if self._end_id in token_ids else 0
            self._reasoning_count += held + end

    def feed(self, text: str, token_ids: list[int], *, finished: bool) -> ParsedDelta:
        if self._parser is None or self._vreq is None:
            return ParsedDelta(content=text)
        delta = self._parser.parse_delta(
            delta_text=text,
            delta_token_ids=list(token_ids),
            request=self._vreq,
            prompt_token_ids=self._prompt if self._first else None,
            finished=finished,
        )
        self._first = False
        self._count_reasoning(token_ids, delta)
        if delta is None:
            return ParsedDelta()
        calls = None
        if delta.tool_calls:
            self.tools_called = True
            calls = [
                {"type": "function", **tc.model_dump(exclude_none=True)}
                if tc.id is not None
                else tc.model_dump(exclude_none=True)
                for tc in delta.tool_calls
            ]
        return ParsedDelta(
            content=delta.content or "", reasoning=delta.reasoning or "", tool_calls=calls
        )
