"""The compile subprocess: compiles output constraints with xgrammar under a memory cap.

Started by :class:`berth.workers.engine.grammar.GrammarGate` as
``python -m berth.workers.engine.grammar_child TOKENIZER_INFO_FILE MEMORY_MIB``.
It builds the same ``GrammarCompiler`` vLLM's xgrammar backend builds (from the
model's tokenizer info), caps its own address space at what it uses once started
plus ``MEMORY_MIB``, prints ``{"ready": true}``, then answers one JSON line per
request line ``{"kind", "spec"}`` with ``{"ok", "error", "memory", "parse_s",
"compile_s"}``. ``parse_s`` is the part vLLM repeats on the worker's event loop
(``Grammar.from_*``); ``compile_s`` the part its engine process repeats. The
parent kills this process when a compile outlives its time budget.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, TextIO


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _cap_memory(budget_mib: int) -> None:
    used = _address_space()
    if used:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = used + budget_mib * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _compile(xgr: Any, compiler: Any, kind: str, spec: str) -> tuple[float, float]:
    """Parse then compile ``spec`` the way vLLM's xgrammar backend does; the two times."""
    start = time.perf_counter()
    if kind == "json":
        xgr.Grammar.from_json_schema(spec)
        parsed = time.perf_counter()
        compiler.compile_json_schema(spec, any_whitespace=True)
    elif kind == "regex":
        xgr.Grammar.from_regex(spec)
        parsed = time.perf_counter()
        compiler.compile_regex(spec)
    elif kind == "lark":
        xgr.Grammar.from_lark(spec)
        parsed = time.perf_counter()
        compiler.compile_lark(spec)
    elif kind == "ebnf":
        xgr.Grammar.from_ebnf(spec)
        parsed = time.perf_counter()
        compiler.compile_grammar(spec)
    elif kind == "structural_tag":
        parsed = time.perf_counter()
        compiler.compile_structural_tag(spec)
    else:
        raise ValueError(f"unknown constraint kind {kind!r}")
    return parsed - start, time.perf_counter() - parsed


def _answer(out: TextIO, reply: dict[str, Any]) -> None:
    out.write(json.dumps(reply) + "\n")
    out.flush()


def main(argv: list[str]) -> None:
    info_file, budget_mib = argv[0], int(argv[1])
    # replies go on a private copy of stdout; anything a library prints goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import xgrammar as xgr

    with open(info_file) as f:
        info = xgr.TokenizerInfo.deserialize_json(f.read())
    # one thread: the budget is per compile, and vLLM's own compiler runs elsewhere
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    _cap_memory(budget_mib)
    _answer(out, {"ready": True})
    for line in sys.stdin:
        job = json.loads(line)
        reply: dict[str, Any] = {"ok": True, "error": None, "memory": False}
        started = time.perf_counter()
        try:
            reply["parse_s"], reply["compile_s"] = _compile(xgr, compiler, job["kind"], job["spec"])
        except MemoryError:
            reply.update(ok=False, memory=True, error="out of memory")
            # vLLM's parse on the event loop would run at most this long before failing too
            reply["parse_s"] = time.perf_counter() - started
        except Exception as exc:  # xgrammar refuses what it cannot compile
            text = str(exc)
            memory = "bad_alloc" in text or "memory" in text.lower()
            reply.update(ok=False, memory=memory, error=text[:500])
            reply["parse_s"] = time.perf_counter() - started
        _answer(out, reply)


if __name__ == "__main__":
    main(sys.argv[1:])
