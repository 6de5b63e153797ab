"""The compile step: every output constraint is compiled once, off the worker's event loop,
under a time and memory budget, before the engine sees the request.

vLLM converts a constraint to a grammar twice: ``Grammar.from_json_schema`` (or
``from_regex``, ...) in the front end, which in berth's worker runs on the event
loop beside the heartbeat, and the full compile against the vocabulary in the
engine process. A hostile schema makes either spin for minutes. The
:class:`GrammarGate` runs both, with the same xgrammar and the model's own
tokenizer info, in a compile subprocess (:mod:`grammar_child`) capped in memory
and killed when it outlives ``timeout_s``; a constraint whose front-end part
alone takes longer than ``loop_s`` is refused too, since vLLM would repeat that
part on the loop. Verdicts are cached by a hash of the constraint, so a repeated
schema (hostile or not) costs once per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from berth.protocol.errors import InvalidRequest

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class CompileBudget:
    """What compiling one constraint may cost on a worker."""

    # the whole conversion and compile, in the compile subprocess
    timeout_s: float = 10.0
    # the front-end conversion vLLM repeats on the worker's event loop
    loop_s: float = 0.5
    # memory the compile subprocess may grow by while compiling
    memory_mib: int = 1024
    # constraints whose verdict is remembered
    cache_size: int = 4096


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of compiling one constraint: None means the engine may take it."""

    refusal: str | None
    parse_s: float = 0.0
    compile_s: float = 0.0


def constraint_key(kind: str, spec: str) -> str:
    return hashlib.sha256(f"{kind}\0{spec}".encode()).hexdigest()


class _Child:
    """One compile subprocess and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, job: dict[str, str]) -> dict[str, Any] | None:
        """The child's reply, or None when it died (out of memory) before answering."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        return json.loads(line) if line else None

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


class GrammarGate:
    """Compiles constraints in a subprocess under a :class:`CompileBudget`, with a cache.

    ``tokenizer_info`` is xgrammar's ``TokenizerInfo.serialize_json()`` of the model
    the engine serves, so the subprocess compiles against the same vocabulary.
    """

    def __init__(self, tokenizer_info: str, budget: CompileBudget | None = None) -> None:
        self.budget = budget or CompileBudget()
        fd, self._info_file = tempfile.mkstemp(prefix="berth-tokenizer-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(tokenizer_info)
        self._cache: OrderedDict[str, Verdict] = OrderedDict()
        self._child: asyncio.Task[_Child] | None = None
        # one compile at a time: the budget is what one compile may take on this machine
        self._lock = asyncio.Lock()
        self.compiles = 0

    def start(self) -> None:
        """Start the subprocess in the background; the first check waits for it."""
        if self._child is None:
            self._child = asyncio.ensure_future(self._spawn())

    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "berth.workers.engine.grammar_child",
            self._info_file,
            str(self.budget.memory_mib),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        child = _Child(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), _STARTUP_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line or not json.loads(line).get("ready"):
            await child.kill()
            raise RuntimeError("the grammar compile subprocess did not start")
        log.info("grammar compile subprocess %d ready", proc.pid)
        return child

    async def close(self) -> None:
        task, self._child = self._child, None
        if task is not None:
            if task.done() and task.exception() is None:
                await task.result().kill()
            else:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        with contextlib.suppress(OSError):
            os.unlink(self._info_file)

    async def check(self, kind: str, spec: str, param: str) -> None:
        """Raise InvalidRequest naming ``param`` when the constraint is over budget."""
        verdict = await self.verdict(kind, spec)
        if verdict.refusal is not None:
            raise InvalidRequest(f"{param}: {verdict.refusal}", param=param)

    async def verdict(self, kind: str, spec: str) -> Verdict:
        key = constraint_key(kind, spec)
        if (known := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return known
        async with self._lock:
            if (known := self._cache.get(key)) is None:
                known = await self._compile(kind, spec)
                self._cache[key] = known
                while len(self._cache) > self.budget.cache_size:
                    self._cache.popitem(last=False)
        return known

    async def _compile(self, kind: str, spec: str) -> Verdict:
        self.start()
        assert self._child is not None
        child = await asyncio.shield(self._child)
        self.compiles += 1
        budget = self.budget
        reply: dict[str, Any] | None = {"timeout": True}
        try:
            reply = await asyncio.wait_for(
                child.ask({"kind": kind, "spec": spec}), budget.timeout_s
            )
        except TimeoutError:
            pass
        finally:
            if reply is None or reply.get("timeout"):
                # a compile that overran its budget (or died of it, or whose request was
                # cancelled meanwhile) takes the process with it
                await child.kill()
                self._child = asyncio.ensure_future(self._spawn())
        if reply is None:
            return Verdict(
                f"compiling this constraint needs more than {budget.memory_mib} MiB of memory, "
                "the limit on this server; make it smaller or less repetitive"
            )
        if reply.get("timeout"):
            return Verdict(
                f"compiling this constraint takes longer than {budget.timeout_s:g} s, the "
                "limit on this server; make it smaller or less repetitive"
            )
        parse_s = float(reply.get("parse_s") or 0.0)
        compile_s = float(reply.get("compile_s") or 0.0)
        if reply.get("memory"):
            return Verdict(
                f"compiling this constraint needs more than {budget.memory_mib} MiB of memory, "
                "the limit on this server; make it smaller or less repetitive",
                parse_s,
            )
        if parse_s > budget.loop_s:
            return Verdict(
                f"turning this constraint into a grammar takes {parse_s:.2f} s, more than the "
                f"{budget.loop_s:g} s allowed on this server; make it smaller or less "
                "repetitive",
                parse_s,
                compile_s,
            )
        # a constraint xgrammar refuses outright is left to vLLM, which falls back to
        # another backend or answers with its own validation error
        return Verdict(None, parse_s, compile_s)
