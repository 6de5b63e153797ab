"""A webhook receiver for tests and benchmarks: a real HTTP server on a fixed port that
verifies every delivery with openai-python's own ``client.webhooks.unwrap`` and records it;
it can be taken down (its port closed: connections refused) and brought back on the same
port."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai import OpenAI

from tests.stack import free_port

SECRET = "whsec_" + base64.b64encode(b"berth-webhook-test-secret-32-byt").decode()


@dataclass(frozen=True)
class Received:
    """One delivery as the receiver saw it: its ``webhook-id``, the event unwrapped by the
    openai client (None when verification failed), and when it arrived."""

    webhook_id: str
    event: Any
    at: float


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    # a listen backlog of 5 (the default) drops connections of a burst of deliveries, which
    # the sender's kernel retries a second later: a second no receiver in production adds
    request_queue_size = 128


class Receiver:
    """Records every POST; answers 200 to a verified one, 400 otherwise. ``hold``: each
    request waits until it is set (a slow receiver); ``refuse_next``: answer 503 to the
    next few (a receiver failing for a while)."""

    def __init__(
        self,
        port: int | None = None,
        secret: str = SECRET,
        hold: threading.Event | None = None,
    ) -> None:
        self.port = port or free_port()
        self.client = OpenAI(api_key="unused", webhook_secret=secret)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._hold = hold
        self._held = 0
        self._refusals = 0

    def refuse_next(self, count: int) -> None:
        with self._lock:
            self._refusals = count

    def waiting(self) -> int:
        """Requests held now (a ``hold`` receiver)."""
        with self._lock:
            return self._held

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the handler's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver._hold is not None:
                    with receiver._lock:
                        receiver._held += 1
                    receiver._hold.wait()
                    with receiver._lock:
                        receiver._held -= 1
                with receiver._lock:
                    refuse = receiver._refusals > 0
                    receiver._refusals -= refuse
                    if refuse:
                        receiver.received.append(
                            Received(headers.get("webhook-id", ""), None, time.time())
                        )
                if refuse:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                try:
                    event = receiver.client.webhooks.unwrap(body, headers)
                except Exception:
                    event = None
                with receiver._lock:
                    receiver.received.append(
                        Received(headers.get("webhook-id", ""), event, time.time())
                    )
                self.send_response(200 if event is not None else 400)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[Any]:
        """Every verified event received, in arrival order (duplicates included)."""
        with self._lock:
            return [r.event for r in self.received if r.event is not None]

    def unverified(self) -> int:
        with self._lock:
            return sum(1 for r in self.received if r.event is None)

    def by_object(self) -> dict[str, list[Any]]:
        """Verified events by the job or batch they are about, duplicates included."""
        out: dict[str, list[Any]] = {}
        for event in self.events():
            out.setdefault(event.model_dump()["data"]["id"], []).append(event)
        return out

    def once_each(self) -> list[str]:
        """What a receiver deduplicating on ``webhook-id`` keeps: the job or batch of each
        distinct event, sorted."""
        by_id = {e.id: e.model_dump()["data"]["id"] for e in self.events()}
        return sorted(by_id.values())

    def wait_for(self, object_ids: list[str], timeout_s: float) -> dict[str, list[Any]]:
        """Until an event about each of ``object_ids`` arrived (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.by_object()
            if all(i in seen for i in object_ids) or time.monotonic() > deadline:
                return seen
            time.sleep(0.02)
