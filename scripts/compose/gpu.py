"""`make test-gpu-image`: build the GPU worker image for real and check it without a GPU.

Builds deploy/docker/worker.Dockerfile with ENGINE=gpu on the Debian base `make
test-compose` uses (vLLM's CUDA build, CUDA torch and NVIDIA's runtime libraries, all from
PyPI), then, in the image: imports vLLM, CUDA torch and berth's worker and engine modules,
and runs `berth worker --help-engine` (vLLM's own parser of its engine flags). Serving
needs a GPU, which is not here: that part waits for one. Prints the build time and the
image size; removes the image and its build cache unless asked to keep them.

    python -m scripts.compose.gpu [--keep-image] [--state DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys

from scripts.compose.base import BASE_IMAGE, ensure_base
from scripts.compose.build import add_build_options, build, gpu_worker_image
from scripts.compose.docker import Docker, engine
from scripts.compose.timing import Timer, timed_run

log = logging.getLogger("scripts.compose.gpu")

NON_ROOT_UID = "10001"
# what the worker imports before its engine starts: vLLM's CUDA build and berth's wrapper
IMPORTS = (
    "import torch, vllm, vllm.engine.arg_utils, vllm.v1.engine.async_llm;"
    "import berth.workers.main, berth.workers.engine.vllm_engine, berth.workers.engine.mapping;"
    "assert torch.version.cuda, 'torch is not a CUDA build';"
    "print('vllm', vllm.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
)
# flags only vLLM's parser knows: they show that `berth worker` reaches it in the image
ENGINE_FLAGS = ("--max-num-seqs", "--kv-cache-dtype", "--quantization", "--enforce-eager")


def in_image(docker: Docker, tag: str, *command: str) -> str:
    """``command``'s output in a container of ``tag`` (no GPU, no network needed)."""
    done = docker.run("run", "--rm", tag, *command, capture=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {tag}:\n{done.stderr[-3000:]}")
    return done.stdout


def check_image(docker: Docker, tag: str) -> None:
    user = docker.output("image", "inspect", "--format", "{{.Config.User}}", tag)
    if user != NON_ROOT_UID:
        raise RuntimeError(f"{tag} runs as {user or 'root'}, not {NON_ROOT_UID}")
    log.info("%s", in_image(docker, tag, "python", "-c", IMPORTS).strip())
    engine_help = in_image(docker, tag, "berth", "worker", "--help-engine")
    missing = [flag for flag in ENGINE_FLAGS if flag not in engine_help]
    if missing:
        raise RuntimeError(f"`berth worker --help-engine` in {tag} lacks {missing}")
    in_image(docker, tag, "berth", "worker", "--help")


def run(args: argparse.Namespace, timer: Timer) -> None:
    image = gpu_worker_image(args.base_image)
    with engine(args.state) as docker:
        try:
            with timer.step(f"base image {args.base_image}"):
                if args.base_image == BASE_IMAGE:
                    ensure_base(docker)
            with timer.step(f"build {image.tag}"):
                # vLLM's CUDA build and its torch come from PyPI alone: the machine's own
                # pip configuration may offer a +cpu torch, which pip would prefer
                build(docker, image, None, args.log_dir)
            with timer.step("in the image: imports, berth worker --help-engine"):
                check_image(docker, image.tag)
            size = docker.image_size(image.tag)
            print(f"\nimage size: {image.tag} {size / 1e9:.1f} GB")
        finally:
            if not args.keep_image:
                with timer.step("remove the image and its build cache"):
                    docker.run("image", "rm", image.tag, check=False)
                    docker.run("builder", "prune", "--force", check=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.compose.gpu", description=__doc__)
    parser.add_argument(
        "--keep-image", action="store_true", help="keep the image and its build cache"
    )
    add_build_options(parser)
    args = parser.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return timed_run(
        lambda timer: run(args, timer),
        "gpu worker image: passed (serving waits for a GPU)",
        (RuntimeError,),
    )


if __name__ == "__main__":
    sys.exit(main())
