"""deploy/compose.yaml as Compose itself resolves it, and its berth services as local processes.

`docker-compose config` does the interpolation (with deploy/.env.example as the env
file), the YAML merges and the normalisation, so the tests see exactly what Compose
would run. Nothing here needs a Docker engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from berth.plumbing.redisconn import is_sentinel_url, parse_sentinel_url
from tests.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
VENV_BIN = Path(sys.executable).parent


def docker_compose() -> str:
    """The docker-compose binary; its absence is a failure, not a skip (`make install` adds it)."""
    found = shutil.which("docker-compose")
    if found is None:
        raise AssertionError(
            "docker-compose is not installed: `make install` installs it "
            "(apt-get install docker-compose)"
        )
    return found


# what an operator must set before compose starts anything (deploy/.env.example leaves it
# empty on purpose): the API key of the tenant the compose tests speak as
TEST_ENV = {"API_KEYS": "compose-test:unused"}


def run_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # a clean environment: variables of the test process must not leak into interpolation
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path.home()),
        **(TEST_ENV if env is None else env),
    }
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE_FILE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def unescape(value: Any) -> Any:
    """Compose's `$$` (a literal `$` in the container) as the process sees it."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    return value


@cache
def resolved() -> dict[str, Any]:
    """The compose file after interpolation from .env.example, merges and normalisation."""
    done = run_compose("--env-file", str(ENV_EXAMPLE), "config")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = resolved()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    result: dict[str, Any] = unescape(services[name])
    return result


def berth_services() -> dict[str, dict[str, Any]]:
    """Services whose command is a berth role, by name."""
    return {
        name: service(name)
        for name, spec in resolved()["services"].items()
        if (spec.get("command") or [None])[0] == "berth"
    }


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def healthcheck_argv(spec: dict[str, Any]) -> list[str]:
    test = spec["healthcheck"]["test"]
    if test[0] == "CMD":
        return list(test[1:])
    assert test[0] == "CMD-SHELL", test
    return ["sh", "-c", test[1]]


def with_netloc(url: str, other: str) -> str:
    """``url`` with the scheme, credentials, host and port of ``other``; its database kept
    (a sentinel URL's, whose path also names the primary)."""
    mine, theirs = urlsplit(url), urlsplit(other)
    if is_sentinel_url(url):
        return urlunsplit((theirs.scheme, theirs.netloc, f"/{parse_sentinel_url(url).db}", "", ""))
    return urlunsplit((theirs.scheme, theirs.netloc, mine.path, mine.query, ""))


@dataclass
class LocalService:
    """A compose service rewritten to run here: local Redis, free ports, venv's `berth`."""

    name: str
    command: list[str]
    environment: dict[str, str]
    healthcheck: list[str]
    # container port -> local port
    ports: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_compose(cls, name: str, redis_url: str) -> LocalService:
        spec = service(name)
        env = {k: str(v) for k, v in spec.get("environment", {}).items()}
        env["REDIS_URL"] = with_netloc(env["REDIS_URL"], redis_url)
        ports = {}
        for var in ("BERTH_PORT", "BERTH_METRICS_PORT"):
            if var in env:
                ports[int(env[var])] = free_port()
                env[var] = str(ports[int(env[var])])
        check = healthcheck_argv(spec)
        for inside, outside in ports.items():
            check = [arg.replace(f":{inside}", f":{outside}") for arg in check]
        return cls(name, list(spec["command"]), env, check, ports)

    def process_env(self, **extra: str) -> dict[str, str]:
        """The compose environment and nothing of the test process's own, as in a container."""
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(Path.home())}
        # the model cache a container keeps on a volume
        if "BERTH_CACHE_DIR" in os.environ:
            env["BERTH_CACHE_DIR"] = os.environ["BERTH_CACHE_DIR"]
        # the code under test: a checkout's own, not the one the virtualenv installed
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        env.update(self.environment)
        env.update(extra)
        return env

    def port(self, inside: int) -> int:
        return self.ports[inside]
