"""The compose stack's berth services run as local processes, exactly as compose.yaml says.

Each service's `command` runs with its `environment` (and nothing of the test process's
own) after three rewrites a container would not need: REDIS_URL points at the test
Valkey (keeping the compose URL's database), the listen and metrics ports are free
ones, and `berth` is the virtualenv's. The API and schedulers run without the packages
their image leaves out (it installs berth's `api` extra, deploy/docker/api.Dockerfile),
so an import of the model stack there fails here too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from berth.local import Stack, wait_ready
from tests.deploy import roles
from tests.deploy.compose import LocalService, berth_services
from tests.deploy.distribution import build_wheel, closure, top_level_modules, wheel_requirements

_BLOCKER = """\
import sys

class _NotInImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"{{name}} is not in the control-plane image", name=name)
        return None

sys.meta_path.insert(0, _NotInImage())
"""


def _control_plane_blocked(wheel_dir: Path) -> set[str]:
    """The modules berth[cpu] installs and berth[api], the control-plane image's, does not."""
    requirements = wheel_requirements(build_wheel(wheel_dir))
    everything = top_level_modules(closure(requirements, ["cpu"]))
    return everything - top_level_modules(closure(requirements, ["api"]))


def local_services(redis_url: str) -> dict[str, LocalService]:
    """The API, every scheduler and the CPU profile's workers of compose.yaml."""
    chosen = {}
    for name, spec in berth_services().items():
        role = roles.role_of(spec["command"])
        if role != "worker" or spec.get("profiles") == ["cpu"]:
            chosen[name] = LocalService.from_compose(name, redis_url)
    return chosen


@dataclass
class ComposeStack:
    services: dict[str, LocalService]
    logs: Path
    stack: Stack = field(default_factory=Stack)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.services['api'].port(8000)}"

    def start(self, blocker_dir: Path) -> None:
        # the worker first: loading its engine is the long pole on a 2-core machine
        order = sorted(self.services.values(), key=lambda s: roles.role_of(s.command) != "worker")
        for svc in order:
            extra = {}
            if roles.role_of(svc.command) != "worker":
                # the blocker first; then the code under test, as process_env passes it
                extra["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [str(blocker_dir), os.environ.get("PYTHONPATH")])
                )
            with open(self.logs / f"{svc.name}.log", "wb") as log:
                proc = subprocess.Popen(
                    svc.command,
                    env=svc.process_env(**extra),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.stack.processes.append((svc.name, proc))

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
            for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture(scope="package")
def compose_stack(
    redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeStack]:
    redis.Redis.from_url(redis_server_url).flushdb()
    blocker = tmp_path_factory.mktemp("control-plane")
    (blocker / "sitecustomize.py").write_text(
        _BLOCKER.format(blocked=sorted(_control_plane_blocked(tmp_path_factory.mktemp("wheel"))))
    )
    running = ComposeStack(local_services(redis_server_url), tmp_path_factory.mktemp("logs"))
    try:
        running.start(blocker)
        if not wait_ready(running.api_url, 240, running.stack):
            raise AssertionError(f"the compose services did not serve:\n{running.log_tails()}")
        yield running
    finally:
        running.stack.stop(grace_s=20)
