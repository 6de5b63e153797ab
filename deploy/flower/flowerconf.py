"""Flower's Celery configuration: berth's broker, through the sentinels.

compose.yaml gives Flower the REDIS_URL every berth role gets (``redis+sentinel://`` or
``rediss+sentinel://``, or a plain ``redis://``). This module turns it into what kombu's
sentinel transport takes, as berth's roles do (``berth/plumbing/redisconn.py:
celery_broker``): one ``sentinel://`` URL per sentinel joined by ``;``, the primary's name
and the sentinels' password in the transport options, and TLS options for
``rediss+sentinel://``. Flower's image has no berth, so these lines stand alone here;
tests/deploy holds them to berth's own for the same URLs.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def broker(url: str) -> dict[str, Any]:
    """Celery settings for berth's Redis URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis+sentinel", "rediss+sentinel"):
        return {"broker_url": url}
    auth, _, hosts = parts.netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) if auth else ""
    master, _, db = parts.path.strip("/").partition("/")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    sentinel_password = query.get("sentinel_password", password)
    prefix = f"{auth}@" if auth else ""
    sentinels = [h if h.rpartition(":")[2].isdigit() else f"{h}:26379" for h in hosts.split(",")]
    sentinel_kwargs: dict[str, Any] = {"password": sentinel_password} if sentinel_password else {}
    settings: dict[str, Any] = {
        "broker_url": ";".join(f"sentinel://{prefix}{h}/{db or 0}" for h in sentinels),
        "broker_transport_options": {
            "master_name": unquote(master),
            "sentinel_kwargs": sentinel_kwargs,
        },
    }
    if scheme == "rediss+sentinel":
        tls: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": False}
        tls |= {k: query[k] for k in _TLS_OPTIONS if k in query}
        if "ssl_check_hostname" in query:
            tls["ssl_check_hostname"] = query["ssl_check_hostname"].lower() == "true"
        settings["broker_use_ssl"] = tls
        sentinel_kwargs |= {"ssl": True, **tls}
    return settings


globals().update(broker(os.environ["REDIS_URL"]))
