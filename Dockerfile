# syntax=docker/dockerfile:1
#
# The base image of tidings: the library, its dependencies and the `tidings` console script, nothing of
# any application. An application image extends it (examples/bank/Dockerfile is one):
#
#   ARG TIDINGS_IMAGE=tidings
#   FROM ${TIDINGS_IMAGE}
#   COPY myapp/ /app/myapp/
#   ENV PYTHONPATH=/app
#   WORKDIR /app
#
# COPY leaves files owned by root, so the runtime user (10001) can read the code but never change it.
# docs/docker.md is the guide; tests/deploy/test_dockerfile.py checks this file and rebuilds its wheel.

# Both stages use the same image, so the virtualenv's interpreter symlinks resolve in the second one.
# A release pins the digest as well as the tag:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
RUN python -m venv /opt/venv

COPY pyproject.toml README.md ./
COPY eventstore/ eventstore/
COPY tidings/ tidings/
COPY workers/ workers/

# The wheel holds exactly what a `pip install tidings` would: the packages, their data (migrations) and
# the console script. Installing it (not the source tree) keeps /src out of the runtime image.
RUN python -m pip wheel --no-deps -w /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl

FROM ${PYTHON_IMAGE} AS runtime

# A global ARG is visible to FROM only; declared again, it names the base in the labels too.
ARG PYTHON_IMAGE
# The distribution's version (pyproject.toml); a test keeps the two equal.
ARG TIDINGS_VERSION=0.1.0
LABEL org.opencontainers.image.title="tidings" \
      org.opencontainers.image.description="Event-sourced, CQRS applications on PostgreSQL and Apache Kafka" \
      org.opencontainers.image.version="${TIDINGS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

RUN groupadd --system --gid 10001 tidings \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tidings

COPY --from=build /opt/venv /opt/venv

# The code is compiled at install time and read-only afterwards: nothing to write next to it, so the
# container runs with a read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Numeric, so that Kubernetes' runAsNonRoot can verify it without looking the name up.
USER 10001

# The probes of `tidings worker --port` and `tidings relay --port` (/healthz, /readyz, /metrics).
EXPOSE 8000

ENTRYPOINT ["tidings"]
CMD ["--help"]
