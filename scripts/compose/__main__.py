"""`make test-compose`: build berth's images and run deploy/compose.yaml for real.

Makes (or reuses) a Debian base image, starts a private dockerd when none runs, builds
the API/scheduler and CPU worker images (and a local Valkey image), runs the compose
file's `cpu` profile, checks the images (non-root, healthy, no vLLM in the API image),
drives the stack with the official `openai` client, crashes the worker and sees compose's
restart policy bring back one that serves, and tears it all down. Prints each step's time
and the image sizes.

    python -m scripts.compose [--keep-images] [--state DIR]
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from scripts.compose import drive
from scripts.compose.base import BASE_IMAGE, ensure_base
from scripts.compose.build import (
    Image,
    add_build_options,
    berth_images,
    build,
    pip_conf_for_build,
    valkey_image,
)
from scripts.compose.docker import Docker, engine
from scripts.compose.stack import Stack
from scripts.compose.timing import Timer, timed_run

log = logging.getLogger("scripts.compose")

VALKEY_IMAGE = "local/berth-valkey:latest"
PROJECT = "berth-compose-test"
NON_ROOT_UID = "10001"
# imported by `berth api`, `berth scheduler` and `berth check`; none may pull in the model stack
CONTROL_PLANE_IMPORT = (
    "import sys, importlib.util, berth.cli, berth.check, berth.api.app, berth.scheduler.service;"
    "loaded = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules];"
    "installed = importlib.util.find_spec('vllm') is not None;"
    "sys.exit(f'loaded {loaded}, vllm installed: {installed}' if loaded or installed else 0)"
)


def check_images(docker: Docker, tags: list[str]) -> None:
    for tag in tags:
        user = docker.output("image", "inspect", "--format", "{{.Config.User}}", tag)
        if user in ("", "0", "root"):
            raise RuntimeError(f"{tag} runs as root")
    # the API image: vLLM neither installed nor imported by the control plane's modules
    docker.run("run", "--rm", "berth-api:latest", "python", "-c", CONTROL_PLANE_IMPORT)


def check_running_users(stack: Stack) -> None:
    for service in ("api", "scheduler-1", "worker-cpu"):
        uid = stack.user_of(service)
        if uid != NON_ROOT_UID:
            raise RuntimeError(f"{service} runs as uid {uid}, not {NON_ROOT_UID}")


def run(args: argparse.Namespace, timer: Timer) -> None:
    with tempfile.TemporaryDirectory(prefix="berth-compose-") as tmp:
        run_dir = Path(tmp)
        with ExitStack() as running:
            with timer.step("docker engine"):
                docker = running.enter_context(engine(args.state))
            images = berth_images(args.base_image)
            tags = [image.tag for image in images] + [VALKEY_IMAGE]
            stack = Stack(docker, PROJECT, args.api_port, run_dir, valkey_image=VALKEY_IMAGE)
            try:
                _build_and_drive(docker, stack, images, args, run_dir, timer)
            finally:
                with timer.step("tear down"):
                    stack.down()
                    if not args.keep_images:
                        docker.run("image", "rm", *tags, check=False)


def _build_and_drive(
    docker: Docker,
    stack: Stack,
    images: list[Image],
    args: argparse.Namespace,
    run_dir: Path,
    timer: Timer,
) -> None:
    with timer.step(f"base image {args.base_image}"):
        if args.base_image == BASE_IMAGE:
            ensure_base(docker)
    with pip_conf_for_build(run_dir / "pip.conf") as pip_conf:
        for image in [valkey_image(args.base_image, VALKEY_IMAGE), *images]:
            with timer.step(f"build {image.tag}"):
                build(docker, image, pip_conf, args.log_dir)
    with timer.step("image checks (non-root, no vLLM in the API image)"):
        check_images(docker, [image.tag for image in images])
    with timer.step("compose up until every container is healthy"):
        stack.up()
        stack.wait_healthy()
        stack.wait_ready()
    check_running_users(stack)
    api = drive.client(stack.url, stack.api_key)
    checks: list[tuple[str, Callable[[], None]]] = [
        ("models listed", lambda: drive.models(api)),
        ("streamed chat", lambda: drive.streamed_chat(api)),
        ("chat with a LoRA adapter", lambda: drive.adapter_chat(api)),
        ("job", lambda: drive.job(stack.url, stack.api_key)),
        ("batch of 3", lambda: drive.batch(api)),
    ]
    for name, check in checks:
        with timer.step(name):
            check()
    with timer.step("worker killed, restarted by compose, serving again"):
        restarts = stack.restart_count("worker-cpu")
        stack.crash("worker-cpu")
        stack.wait_restarted("worker-cpu", restarts + 1)
        stack.wait_healthy(("worker-cpu",))
        stack.wait_ready()
        drive.serves(stack.url, stack.api_key)
    report_sizes(docker, [VALKEY_IMAGE, *(image.tag for image in images)])


def report_sizes(docker: Docker, tags: list[str]) -> None:
    print("\nimage sizes:")
    for tag in tags:
        print(f"  {tag:32} {docker.image_size(tag) / 1e6:8.0f} MB")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.compose", description=__doc__)
    parser.add_argument(
        "--keep-images", action="store_true", help="keep the images built (the base is kept)"
    )
    add_build_options(parser)
    parser.add_argument("--api-port", type=int, default=0, help="host port of the API")
    args = parser.parse_args(argv)
    if args.api_port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.api_port = int(sock.getsockname()[1])
    args.log_dir.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return timed_run(
        lambda timer: run(args, timer), "compose stack: passed", (RuntimeError, drive.CheckFailed)
    )


if __name__ == "__main__":
    sys.exit(main())
