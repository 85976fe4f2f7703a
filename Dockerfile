# syntax=docker/dockerfile:1
#
# Base image for tidings: the library, its dependencies and the `tidings` console script.
# An application image extends it:
#
#   FROM tidings
#   COPY myapp/ /app/myapp/
#   ENV PYTHONPATH=/app
#
# COPY leaves the files owned by root, so the runtime user (10001) cannot modify the code.

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
RUN python -m venv /opt/venv

COPY pyproject.toml README.md ./
COPY eventstore/ eventstore/
COPY tidings/ tidings/
COPY workers/ workers/
COPY schemas/ schemas/

RUN pip wheel --no-deps -w /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl

FROM python:3.11-slim-bookworm

RUN groupadd --system --gid 10001 tidings \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tidings

# Same base image and path as the build stage, so the venv's interpreter symlinks still resolve.
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

USER 10001

ENTRYPOINT ["tidings"]
CMD ["--help"]
