"""compose.yaml's API, schedulers and CPU worker, run from their `command` and `environment`
(see conftest.py), serve a chat request, and their healthchecks pass."""

from __future__ import annotations

import subprocess

import openai
import pytest

from berth.workers import tinymodel
from tests.deploy import roles
from tests.deploy.conftest import ComposeStack

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


def test_chat_through_the_compose_services(compose_stack: ComposeStack) -> None:
    client = openai.OpenAI(
        base_url=f"{compose_stack.api_url}/v1", api_key="unused", max_retries=0, timeout=120
    )
    assert tinymodel.MODEL_NAME in {model.id for model in client.models.list()}
    reply = client.chat.completions.create(
        model=tinymodel.MODEL_NAME,
        messages=[{"role": "user", "content": "Hello from compose"}],
        max_completion_tokens=8,
        temperature=0,
    )
    assert reply.model == tinymodel.MODEL_NAME
    assert reply.choices[0].finish_reason == "length"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and reply.usage.completion_tokens == 8


def _check(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def test_every_healthcheck_passes(compose_stack: ComposeStack) -> None:
    assert {roles.role_of(s.command) for s in compose_stack.services.values()} == {
        "api",
        "scheduler",
        "worker",
    }
    for svc in compose_stack.services.values():
        done = _check(svc.healthcheck, svc.process_env())
        assert done.returncode == 0, (svc.name, svc.healthcheck, done.stdout, done.stderr)


def test_healthchecks_look_at_their_own_process(compose_stack: ComposeStack) -> None:
    # the same check, for an id no process has: it must fail, so a pass above means
    # the service itself is alive
    for svc in compose_stack.services.values():
        role = roles.role_of(svc.command)
        if role in roles.ID_VARIABLE:
            env = svc.process_env(**{roles.ID_VARIABLE[role]: "nobody"})
            assert _check(svc.healthcheck, env).returncode == 1, svc.name
