"""Where a webhook may go: non-global addresses are refused after resolution (also written
as IPv4-mapped or NAT64 IPv6), a bad URL is a 400 naming ``webhook``, and an attempt goes to
the address that was checked, with the name as written in Host."""

from __future__ import annotations

import base64
import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from berth.protocol.errors import InvalidRequest
from berth.store.webhooks import Delivery
from berth.webhooks.addresses import Refused, check_webhook, is_forbidden, parse_url, resolve
from berth.webhooks.sender import new_client, send
from berth.webhooks.signing import Signer

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()

FORBIDDEN = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space (CGNAT)
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "ff02::1",
]
GLOBAL = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_non_global_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", GLOBAL)
def test_global_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/", "http or https"),
        ("https://", "host"),
        ("https://user:pw@example.com/", "credentials"),
        (42, "URL string"),
        ("https://example.com/" + "a" * 2100, "at most 2048"),
    ],
)
def test_a_malformed_url_says_what_a_webhook_must_be(url: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_url(url)


async def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    target = parse_url("http://localhost:9/")
    with pytest.raises(Refused, match="resolves to"):
        await resolve(target, allow_private=False)
    found = await resolve(target, allow_private=True)
    assert ipaddress.ip_address("127.0.0.1") in found or ipaddress.ip_address("::1") in found


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x", "http://[::1]:8080/", "http://localhost/", "https://169.254.169.254/"],
)
async def test_submission_refuses_private_destinations_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await check_webhook(url, allow_private=False)
    assert caught.value.param == "webhook"
    assert "BERTH_WEBHOOK_ALLOW_PRIVATE" in str(caught.value)
    assert await check_webhook(url, allow_private=True) == url


async def test_submission_refuses_a_name_that_does_not_exist() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await check_webhook("https://no-such-host.invalid/hook", allow_private=False)
    assert caught.value.param == "webhook"


async def test_submission_takes_a_public_address() -> None:
    url = "https://8.8.8.8/hook"
    assert await check_webhook(url, allow_private=False) == url


class _Receiver(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (the handler's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.seen.append((self.headers["host"], self.headers["webhook-id"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def test_an_attempt_goes_to_the_checked_address_with_the_name_in_host(receiver: int) -> None:
    _Receiver.seen.clear()
    url = f"http://localhost:{receiver}/hook"
    delivery = Delivery(id="evt_1", type="job.completed", created_at=1, object="job_1", url=url)
    async with new_client(4, 5) as client:
        refused = await send(
            client, delivery, b"{}", Signer(SECRET), allow_private=False, timeout_s=5
        )
        assert refused.refused and not refused.delivered and "resolves to" in refused.reason
        assert _Receiver.seen == []
        sent = await send(client, delivery, b"{}", Signer(SECRET), allow_private=True, timeout_s=5)
    assert sent.delivered, sent.reason
    assert _Receiver.seen == [(f"localhost:{receiver}", "evt_1", b"{}")]


async def test_an_unreachable_receiver_is_a_failure_to_retry() -> None:
    delivery = Delivery(
        id="evt_1", type="job.failed", created_at=1, object="job_1", url="http://127.0.0.1:9/"
    )
    async with new_client(4, 2) as client:
        outcome = await send(
            client, delivery, b"{}", Signer(SECRET), allow_private=True, timeout_s=2
        )
    assert not outcome.delivered and not outcome.refused and outcome.reason
