# berth's control plane: `berth api` (default) and `berth scheduler`, from one image.
# Build from the repository root (BuildKit):
#   docker build -f deploy/docker/api.Dockerfile -t berth-api .
# BASE_IMAGE is any Debian-family image with python3 (3.11 or later) and its venv module;
# `make test-compose` builds on a Debian base made with debootstrap where no registry of
# images is reachable. Two optional build secrets reach pip and stay out of the layers:
# `pip.conf` (a pip configuration: index, find-links, proxy) and `ca.crt` (a CA bundle).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY berth ./berth
# berth's `api` extra: the API and scheduler never import the model stack (transformers,
# peft, torch, vLLM), most of a gigabyte; tests/deploy/test_extras.py holds them to it
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
    && pip install ".[api]"

FROM ${BASE_IMAGE}
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin berth
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/berth
EXPOSE 8000
# a Python CLI: slow to start on busy cores, hence the long timeout; for `berth api` on its default port; a scheduler container overrides it with
# `berth check scheduler` (see deploy/compose.yaml)
HEALTHCHECK --interval=10s --timeout=15s --start-period=10s --retries=3 \
    CMD ["berth", "check", "api", "--url", "http://127.0.0.1:8000"]
CMD ["berth", "api"]
