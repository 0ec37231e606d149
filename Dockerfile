# syntax=docker/dockerfile:1
# The ingestd image: one image for the daemon, the mirror and the publisher (the command chooses).
#   docker build -t ghcr.io/lsst-dm/ingestd:0.1.0 .
#   docker run --rm ghcr.io/lsst-dm/ingestd:0.1.0 run --config /etc/ingestd/daemon.yaml
# Stage 1 builds a virtual environment; stage 2 copies only that environment onto a slim base and
# runs it as an unprivileged user (UID/GID 10001, what the rendered Kubernetes manifests expect).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/ingestd
COPY pyproject.toml README.md ./
COPY ingestd ./ingestd
COPY butler_registry ./butler_registry
COPY mirror ./mirror
COPY publisher ./publisher
COPY monitoring ./monitoring
RUN /opt/ingestd/bin/pip install . \
    && /opt/ingestd/bin/python -m compileall -q /opt/ingestd/lib \
    && /opt/ingestd/bin/ingestd --version

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="ingestd" \
      org.opencontainers.image.description="Rucio transfer events to a Butler registry, for the Rubin Data Facilities" \
      org.opencontainers.image.source="https://github.com/lsst-dm/ingestd" \
      org.opencontainers.image.licenses="GPL-3.0-or-later"
RUN groupadd --system --gid 10001 ingestd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ingestd --no-create-home \
       --shell /usr/sbin/nologin ingestd \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/ingestd
COPY --from=build /opt/ingestd /opt/ingestd
ENV PATH=/opt/ingestd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INGESTD_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/ingestd
# Health and metrics ports of the daemon, the mirror and the publisher (site-file defaults).
EXPOSE 8080 8081 8082
ENTRYPOINT ["ingestd"]
CMD ["--help"]
