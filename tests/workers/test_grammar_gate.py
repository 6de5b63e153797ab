"""The compile step for real: xgrammar compiles in a subprocess under a time and memory
budget, against the tiny model's vocabulary, and remembers its verdicts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from berth.protocol.errors import InvalidRequest
from berth.workers.engine.grammar import CompileBudget, GrammarGate

# starts a real subprocess (xgrammar imports torch: several seconds)
pytestmark = pytest.mark.e2e

SMALL = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
# the schema of issue 11: xgrammar's conversion of the pattern alone runs for minutes
HOSTILE = json.dumps(
    {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "items": {"type": "string", "pattern": "[a-z]{1,50000}"},
                "minItems": 1000000,
            }
        },
        "required": ["a"],
    }
)


def pattern_schema(n: int) -> str:
    return json.dumps({"type": "string", "pattern": f"[a-z]{{1,{n}}}"})


@pytest.fixture(scope="module")
def tokenizer_info(tiny_tokenizer: Any) -> str:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tiny_tokenizer, vocab_size=len(tiny_tokenizer))
    return str(info.serialize_json())


@pytest_asyncio.fixture
async def gate(tokenizer_info: str) -> AsyncIterator[GrammarGate]:
    made = GrammarGate(tokenizer_info, CompileBudget(timeout_s=3.0, loop_s=0.25))
    made.start()
    try:
        yield made
    finally:
        await made.close()


async def test_within_budget_compiles_once(gate: GrammarGate) -> None:
    await gate.check("json", SMALL, param="response_format")
    await gate.check("json", SMALL, param="response_format")
    await gate.check("regex", "[a-z]{1,20}@example\\.com", param="regex")
    await gate.check("ebnf", 'root ::= "yes" | "no"', param="ebnf")
    assert gate.compiles == 3
    verdict = await gate.verdict("json", SMALL)
    assert verdict.refusal is None and verdict.compile_s > 0


async def test_over_time_budget_is_refused_and_the_gate_recovers(gate: GrammarGate) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await gate.check("json", HOSTILE, param="response_format")
    assert refused.value.param == "response_format"
    assert "longer than 3 s" in refused.value.message
    # the verdict is remembered: the second refusal compiles nothing
    with pytest.raises(InvalidRequest):
        await gate.check("json", HOSTILE, param="response_format")
    assert gate.compiles == 1
    # a fresh subprocess serves the next constraint
    await gate.check("json", SMALL, param="response_format")
    assert gate.compiles == 2


async def test_front_end_share_over_its_budget_is_refused(tokenizer_info: str) -> None:
    # converting a schema pattern grows with the square of its repetition count; this
    # one finishes within the compile budget, but vLLM would repeat it on the event loop.
    # The compile budget is generous: a loaded machine takes longer, and must not turn this
    # into a refusal for time (the part that repeats on the loop only grows with it)
    gate = GrammarGate(tokenizer_info, CompileBudget(timeout_s=120.0, loop_s=0.25))
    gate.start()
    try:
        verdict = await gate.verdict("json", pattern_schema(3000))
    finally:
        await gate.close()
    assert verdict.refusal is not None and "grammar takes" in verdict.refusal
    assert verdict.parse_s > 0.25


async def test_invalid_constraint_is_left_to_vllm(gate: GrammarGate) -> None:
    # xgrammar cannot parse it: vLLM answers it with its own validation error
    verdict = await gate.verdict("ebnf", "root ::= (")
    assert verdict.refusal is None


async def test_over_memory_budget_is_refused(tokenizer_info: str) -> None:
    small = GrammarGate(tokenizer_info, CompileBudget(timeout_s=60.0, loop_s=60.0, memory_mib=16))
    try:
        # a long enum: well over 100 MiB to compile against the vocabulary
        big_enum = json.dumps({"enum": [f"value-{i}-abcdefghij" for i in range(20000)]})
        verdict = await small.verdict("json", big_enum)
    finally:
        await small.close()
    assert verdict.refusal is not None and "16 MiB" in verdict.refusal
