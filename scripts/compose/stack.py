"""deploy/compose.yaml's `cpu` profile under Debian's docker-compose: up, health, crash, down.

Only berth's services and Valkey run: Flower, Prometheus and Grafana are public images a
machine without a registry cannot pull. Valkey's image is swapped for a local one through
an override file when asked; everything else is compose.yaml as users run it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from scripts.compose.docker import Docker

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
SERVICES = ("valkey", "api", "scheduler-1", "scheduler-2", "worker-cpu")


@dataclass
class Stack:
    docker: Docker
    project: str
    api_port: int
    run_dir: Path
    valkey_image: str | None = None
    # compose.yaml refuses to start the API without keys: the run makes its own
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def compose(self, *args: str, capture: bool = False) -> str:
        compose = shutil.which("docker-compose")
        if compose is None:
            raise RuntimeError("docker-compose is not installed (apt-get install docker-compose)")
        # compose.yaml's defaults, not those of a deploy/.env the user may have made
        env_file = self.run_dir / "empty.env"
        env_file.touch()
        files = ["--env-file", str(env_file), "-f", str(COMPOSE_FILE)]
        if self.valkey_image is not None:
            override = self.run_dir / "compose.override.yaml"
            override.write_text(json.dumps({"services": {"valkey": {"image": self.valkey_image}}}))
            files += ["-f", str(override)]
        # the settings are compose.yaml's defaults, but for the host port of the API
        env = dict(self.docker.environment(), API_PORT=str(self.api_port))
        for name in ("VALKEY_PASSWORD", "API_KEYS", "ADMIN_KEYS"):
            env.pop(name, None)
        env["API_KEYS"] = f"compose-test:{self.api_key}"
        done = subprocess.run(
            [compose, "--project-name", self.project, *files, "--profile", "cpu", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE if capture else None,
            text=True,
            check=True,
        )
        return done.stdout or ""

    def up(self) -> None:
        self.compose("up", "--detach", "--no-build", *SERVICES)

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30")

    def container(self, service: str) -> str:
        found = self.compose("ps", "--quiet", service, capture=True).split()
        if len(found) != 1:
            raise RuntimeError(f"expected one container of {service}, found {found}")
        return found[0]

    def state(self, service: str) -> dict[str, object]:
        state: dict[str, object] = json.loads(
            self.docker.output("inspect", "--format", "{{json .State}}", self.container(service))
        )
        return state

    def restart_count(self, service: str) -> int:
        return int(
            self.docker.output("inspect", "--format", "{{.RestartCount}}", self.container(service))
        )

    def wait_healthy(self, services: tuple[str, ...] = SERVICES, timeout_s: float = 900) -> None:
        """Until each service's container reports healthy by its own health check."""
        deadline = time.monotonic() + timeout_s
        pending = list(services)
        while pending:
            for service in list(pending):
                state = self.state(service)
                health = state.get("Health")
                status = health.get("Status") if isinstance(health, dict) else None
                if status == "healthy":
                    log.info("%s is healthy", service)
                    pending.remove(service)
                elif status == "unhealthy" or time.monotonic() > deadline:
                    self.print_logs(service)
                    raise RuntimeError(f"{service} is {status}: {state}")
            time.sleep(2)

    def wait_ready(self, workers: int = 1, timeout_s: float = 300) -> None:
        """Until the API's /ready sees a scheduler and ``workers`` live workers."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=5) as answer:
                    body = json.loads(answer.read())
                    if body.get("workers", 0) >= workers:
                        return
                    last = str(body)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                last = str(error)
            time.sleep(1)
        raise RuntimeError(f"the API is not ready: {last}")

    def crash(self, service: str) -> None:
        """Kill the container's first process from the host, as a crash or OOM kill would.

        `docker kill` would count as a stop by hand, which a restart policy leaves stopped.
        """
        pid = int(self.state(service)["Pid"])  # type: ignore[call-overload]
        log.info("killing %s (host pid %d) with SIGKILL", service, pid)
        os.kill(pid, 9)

    def wait_restarted(self, service: str, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.restart_count(service) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service} was not restarted: {self.state(service)}")
            time.sleep(1)

    def user_of(self, service: str) -> str:
        """The user the service's container runs as, asked inside it."""
        return self.docker.output("exec", self.container(service), "id", "-u")

    def print_logs(self, service: str) -> None:
        self.compose("logs", "--no-color", "--tail", "60", service)
