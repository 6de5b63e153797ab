"""The Docker engine the run talks to: the machine's own, or a private `dockerd` started for it.

A private daemon keeps its own data root (kept between runs, so the base image and the
build cache survive), its own exec root and socket; it is stopped when the run ends.
Builds need BuildKit (for build secrets): the `docker` CLI chosen is one with buildx, or
a 20.10 CLI, whose BuildKit client is built in.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/run/docker.sock")
DEFAULT_STATE = Path("/var/lib/berth-compose-docker")


@dataclass
class Docker:
    """A `docker` CLI bound to one engine (``host``, a DOCKER_HOST value)."""

    cli: str
    host: str
    env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.host, DOCKER_BUILDKIT="1", **self.env)

    def run(
        self, *args: str, stdin: IO[bytes] | None = None, capture: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args],
            env=self.environment(),
            stdin=stdin,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            text=True,
            check=check,
        )

    def output(self, *args: str) -> str:
        return self.run(*args, capture=True).stdout.strip()

    def image_exists(self, image: str) -> bool:
        return self.run("image", "inspect", image, capture=True, check=False).returncode == 0

    def image_size(self, image: str) -> int:
        return int(self.output("image", "inspect", "--format", "{{.Size}}", image))

    def alive(self) -> bool:
        done = subprocess.run(
            [self.cli, "version", "--format", "{{.Server.Version}}"],
            env=self.environment(),
            capture_output=True,
            check=False,
        )
        return done.returncode == 0


def buildkit_cli() -> str:
    """A docker CLI that builds with BuildKit: one with the buildx plugin, else a 20.10 CLI."""
    candidates = [c for c in (shutil.which("docker"), "/usr/bin/docker") if c and Path(c).exists()]
    for cli in dict.fromkeys(candidates):
        if subprocess.run([cli, "buildx", "version"], capture_output=True).returncode == 0:
            return cli
    for cli in dict.fromkeys(candidates):
        version = subprocess.run(
            [cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True
        ).stdout.strip()
        # before 23.0 the CLI's BuildKit client is built in; later ones need buildx
        if version and int(version.split(".")[0]) < 23:
            return cli
    raise RuntimeError(
        "no docker CLI that builds with BuildKit: install buildx, or Debian's docker.io"
    )


@contextmanager
def engine(state: Path = DEFAULT_STATE) -> Iterator[Docker]:
    """The machine's running engine if there is one, else a private dockerd for the run."""
    cli = buildkit_cli()
    default = Docker(cli, os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}"))
    if default.alive():
        log.info("using the running Docker engine at %s", default.host)
        yield default
        return
    with private_daemon(cli, state) as docker:
        yield docker


@contextmanager
def private_daemon(cli: str, state: Path, timeout_s: float = 60.0) -> Iterator[Docker]:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("no Docker engine runs and dockerd is not installed (docker.io)")
    state.mkdir(parents=True, exist_ok=True)
    socket = state / "docker.sock"
    docker = Docker(cli, f"unix://{socket}")
    args = [
        dockerd,
        f"--data-root={state / 'data'}",
        f"--exec-root={state / 'exec'}",
        f"--pidfile={state / 'dockerd.pid'}",
        f"--host={docker.host}",
    ]
    # dockerd makes its bridge and leaves it behind when it stops: remove it then, unless
    # it was there before
    bridge_before = Path("/sys/class/net/docker0").exists()
    log.info("starting a private dockerd (data root %s)", state / "data")
    with open(state / "dockerd.log", "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not docker.alive():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {state / 'dockerd.log'}")
            time.sleep(0.5)
        yield docker
    finally:
        _stop(process)
        if not bridge_before and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "delete", "docker0"], check=False)


def _stop(process: subprocess.Popen[Any], timeout_s: float = 60.0) -> None:
    if process.poll() is not None:
        return
    log.info("stopping the private dockerd")
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
