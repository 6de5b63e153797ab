"""Where a webhook may go: its URL's form, and the addresses its host resolves to.

A webhook is a request berth makes on a client's behalf, so a client could aim it inside the
cluster (Redis, a metadata service, an admin port). Unless private destinations are allowed,
every address the host resolves to must be global: not private, loopback, link-local,
shared (CGNAT), multicast, reserved or unspecified, also when written as an IPv4-mapped or
NAT64 IPv6 address. The check runs after DNS, on submission and again on every attempt, and
the attempt connects to the address that was checked (``sender.py``), so a name that
resolves elsewhere a moment later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from berth.protocol.errors import InvalidRequest

# longest URL taken; OpenAI's own webhook endpoints allow as much
MAX_URL_CHARS = 2048
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A destination berth will not send to; the message says why."""


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: ``host`` as written (a name, or an address without
    brackets), the port it implies."""

    url: str
    scheme: str
    host: str
    port: int


def is_forbidden(address: IPAddress) -> bool:
    """Whether an address is outside the global internet (see the module's docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_forbidden(address.ipv4_mapped)
        if address in _NAT64:
            return is_forbidden(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return not address.is_global or address.is_multicast


def parse_url(url: object) -> Target:
    """The URL's parts (parsed by httpx, as the sender sends it), or ValueError saying what
    a webhook URL must be."""
    if not isinstance(url, str) or not url:
        raise ValueError("webhook must be an http or https URL string")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"webhook must have at most {MAX_URL_CHARS} characters, got {len(url)}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise ValueError(f"webhook is not a valid URL: {err}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"webhook must be an http or https URL, got scheme {parsed.scheme!r}")
    if not parsed.host:
        raise ValueError("webhook must name a host")
    if parsed.userinfo:
        raise ValueError("webhook must not carry credentials (user:password@)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return Target(url=url, scheme=parsed.scheme, host=parsed.host, port=port)


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(target: Target, allow_private: bool) -> list[IPAddress]:
    """Every address the host resolves to, each checked (Refused when one is forbidden and
    private destinations are not allowed); OSError (socket.gaierror) when it does not
    resolve."""
    literal = literal_address(target.host)
    if literal is not None:
        found = [literal]
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM
        )
        found = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not allow_private:
        for address in found:
            if is_forbidden(address):
                raise Refused(
                    f"webhook host {target.host!r} resolves to {address}, a private, "
                    "loopback, link-local or otherwise non-global address"
                )
    return found


async def check_webhook(url: object, allow_private: bool, timeout_s: float = 2.0) -> str:
    """A job's or batch's webhook checked on submission: its form, and the addresses its
    host resolves to now. InvalidRequest (400, param ``webhook``) when refused; a name that
    does not resolve right now is taken (DNS may be slow or down for a moment) and judged
    again on every attempt."""
    try:
        target = parse_url(url)
        async with asyncio.timeout(timeout_s):
            await resolve(target, allow_private)
    except (ValueError, Refused) as err:
        raise InvalidRequest(_allowed(str(err), allow_private), param="webhook") from None
    except socket.gaierror as err:
        if err.errno == socket.EAI_NONAME:
            raise InvalidRequest(
                f"webhook host {target.host!r} does not resolve", param="webhook"
            ) from None
    except (OSError, TimeoutError):
        pass
    return str(url)


def _allowed(reason: str, allow_private: bool) -> str:
    if allow_private or "non-global" not in reason:
        return reason
    return reason + "; webhooks go to public addresses only (BERTH_WEBHOOK_ALLOW_PRIVATE)"
