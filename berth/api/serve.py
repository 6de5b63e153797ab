"""`berth api`: one process, or several on one port.

An API process does its work on one event loop, on one core. A flood of requests (one
tenant's hundreds at once, each refused cheaply but each parsed) queues every other
tenant's request behind it on that loop. With ``processes`` above one, a supervisor forks
that many API processes and starts again any that dies. Each listens on the port with
SO_REUSEPORT, so the kernel spreads connections evenly over them by their addresses (one
shared socket would not: the first loop to wake accepts a whole burst). Each process is a
whole API (its own instance id, relay, directory and caches); Redis holds everything they
share. Their /metrics is one view: the supervisor turns on prometheus-client's
multiprocess mode before any of them starts.

SIGTERM or SIGINT to the supervisor stops every process the way one stops (running
streams drain); one that has not exited after the grace period is killed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import tempfile
import time

from berth.api.settings import ApiSettings
from berth.plumbing.lifeline import GRACE_S, set_parent_death_signal

log = logging.getLogger(__name__)

# a process that dies this soon after its start waits before the next start (a broken
# setting would otherwise fork in a tight loop)
_RESTART_BACKOFF_S = (0.5, 10.0)
_POLL_S = 0.2
# see _serve
_SWITCH_INTERVAL_S = 0.001
# time for a stuck process to write its stacks before it is killed
_DUMP_S = 0.5
# uvicorn's exit status for a server that never started
_STARTUP_FAILURE = 3


def run_api(settings: ApiSettings) -> int:
    """Serve until stopped; the exit status of the role."""
    if settings.processes == 1:
        return _serve(settings, sockets=None)
    return _Supervisor(settings).run()


def _serve(settings: ApiSettings, sockets: list[socket.socket] | None) -> int:
    """One API process: uvicorn on ``sockets``, or on a socket of its own; the exit status
    (uvicorn's 3 when it never started serving: the port taken, the lifespan failed)."""
    import uvicorn

    from berth.api.app import create_app

    # work handed to threads (checking uploaded lines) holds the GIL for this long at most
    # before the event loop gets it back: 5 ms, Python's default, held every request on the
    # loop that long per wakeup while uploads were checked
    sys.setswitchinterval(_SWITCH_INTERVAL_S)

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # uvicorn's own loggers go through ours (JSON when asked)
        log_config=None,
    )
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    return 0 if server.started else _STARTUP_FAILURE


def bind(host: str, port: int, listen: bool = True) -> socket.socket:
    """An API process's listening socket, one of a SO_REUSEPORT group on ``port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class _Supervisor:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.children: dict[int, float] = {}  # pid -> when it started
        self.stopping = False
        self.failures = 0

    def run(self) -> int:
        # before the first fork: every process writes its samples where /metrics reads them
        metrics_dir = _share_metrics()
        host, port = self.settings.host, self.settings.port
        # the port is free for us (else say so once, here, not in every process); bound but
        # not listening, this socket takes no connection, and it is closed before any fork
        bind(host, port, listen=False).close()
        log.info("api: %d processes on %s:%d", self.settings.processes, host, port)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        try:
            for _ in range(self.settings.processes):
                self._start()
            self._watch()
        finally:
            if metrics_dir is not None:
                metrics_dir.cleanup()
        return 0

    def _start(self) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the API process
            status = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                # what a process that would not stop was doing (the supervisor asks)
                faulthandler.register(signal.SIGUSR1, all_threads=True)
                # a supervisor killed outright takes its processes with it
                set_parent_death_signal(signal.SIGTERM)
                if os.getppid() == parent:
                    sock = bind(self.settings.host, self.settings.port)
                    status = _serve(self.settings, sockets=[sock])
            except BaseException:
                log.exception("api process %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(status)
        self.children[pid] = time.monotonic()

    def _stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("api: stopping %d processes", len(self.children))
        self.stopping = True
        for pid in self.children:
            _signal(pid, signal.SIGTERM)

    def _watch(self) -> None:
        stop_deadline: float | None = None
        while self.children:
            if self.stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + GRACE_S
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                log.error(
                    "api: processes %s did not stop; their stacks follow, then they are killed",
                    sorted(self.children),
                )
                for pid in self.children:
                    _signal(pid, signal.SIGUSR1)
                time.sleep(_DUMP_S)
                for pid in self.children:
                    _signal(pid, signal.SIGKILL)
                stop_deadline = float("inf")
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(_POLL_S)
                continue
            started = self.children.pop(pid, None)
            if started is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            lived_s = time.monotonic() - started
            self.failures = 0 if lived_s > 60 else self.failures + 1
            wait_s = min(_RESTART_BACKOFF_S[1], _RESTART_BACKOFF_S[0] * 2 ** (self.failures - 1))
            log.warning(
                "api process %d exited (%d) after %.1f s; starting another in %.1f s",
                pid,
                code,
                lived_s,
                wait_s if self.failures else 0.0,
            )
            _metrics_process_dead(pid)
            if self.failures:
                time.sleep(wait_s)
            if not self.stopping:
                self._start()


def _share_metrics() -> tempfile.TemporaryDirectory[str] | None:
    """Turn on prometheus-client's multiprocess mode: each process's samples in files of a
    directory, which /metrics sums (berth/api/routes/health.py). A directory the operator
    named in PROMETHEUS_MULTIPROC_DIR is used as it is; otherwise a temporary one, removed
    at the end."""
    if "berth.api.metrics" in sys.modules:
        # its unlabelled metrics would keep counting in this process's memory only
        raise RuntimeError("berth.api.metrics was imported before metrics were shared")
    made = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made = tempfile.TemporaryDirectory(prefix="berth-api-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made.name
    from prometheus_client import values

    # chosen when prometheus-client was imported, maybe before the variable was set
    values.ValueClass = values.get_value_class()
    return made


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _metrics_process_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
