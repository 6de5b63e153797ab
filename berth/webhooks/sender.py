"""One attempt at delivering one event: resolve and check the host, POST the signed body to
the address that was checked, judge the answer. Bounded by a timeout from the lookup to the
status line; the answer's body is never read."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx

from berth.store.webhooks import Delivery
from berth.webhooks.addresses import IPAddress, Refused, Target, literal_address, parse_url, resolve
from berth.webhooks.signing import Signer

USER_AGENT = "berth-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """How an attempt went: ``delivered`` (a 2xx answer), ``refused`` (never to be tried
    again: a forbidden destination or a malformed URL), or neither (try again later);
    ``reason`` says what happened."""

    delivered: bool
    refused: bool = False
    reason: str = ""


def new_client(concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    """The deliverer's HTTP client. No proxies from the environment (the connection must go to
    the checked address), no redirects (a 3xx could point anywhere), and no kept connections:
    a connection to an address is made for one host name's certificate (SNI), and two names
    may share an address."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),
    )


async def send(
    client: httpx.AsyncClient,
    delivery: Delivery,
    body: bytes,
    signer: Signer,
    *,
    allow_private: bool,
    timeout_s: float,
) -> Outcome:
    """One attempt; never raises for anything the destination or the network does."""
    try:
        target = parse_url(delivery.url)
    except ValueError as err:
        return Outcome(False, refused=True, reason=str(err))
    try:
        async with asyncio.timeout(timeout_s):
            addresses = await resolve(target, allow_private)
            for address in addresses[:-1]:
                # the next address when one cannot be reached (a name with an IPv6 and an
                # IPv4 address, a receiver listening on one of them)
                with contextlib.suppress(httpx.ConnectError):
                    return await _post(client, target, address, delivery.id, body, signer)
            return await _post(client, target, addresses[-1], delivery.id, body, signer)
    except Refused as err:
        return Outcome(False, refused=True, reason=str(err))
    except TimeoutError:
        return Outcome(False, reason=f"no answer within {timeout_s:g} s")
    except (OSError, httpx.HTTPError) as err:
        return Outcome(False, reason=f"{type(err).__name__}: {err}")


async def _post(
    client: httpx.AsyncClient,
    target: Target,
    address: IPAddress,
    event_id: str,
    body: bytes,
    signer: Signer,
) -> Outcome:
    url = httpx.URL(target.url)
    headers = {
        # the name as written: the receiver's virtual host, though the connection goes to
        # the checked address
        "host": url.netloc.decode("ascii"),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signer.headers(event_id, body),
    }
    extensions = {}
    if target.scheme == "https" and literal_address(target.host) is None:
        # TLS is for the name: SNI and the certificate's check use it, not the address
        extensions["sni_hostname"] = target.host
    pinned = url.copy_with(host=str(address))
    async with client.stream(
        "POST", pinned, content=body, headers=headers, extensions=extensions
    ) as answer:
        status = answer.status_code
    if 200 <= status < 300:
        return Outcome(True, reason=f"HTTP {status}")
    return Outcome(False, reason=f"HTTP {status}")
