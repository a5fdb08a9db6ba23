# The pipeline in an image: `docker run IMAGE` runs `dvc repro` on params.yaml (the embedded SmolLM2-135M,
# no network needed at run time). Build: docker build -t character .  (docker/build_and_smoke.sh builds and
# tests it with buildah where there is no Docker engine.)
# The base image is a build argument; it must provide python3 3.11 with the venv module.
# No secrets: .dockerignore keeps out .git, .dvc/config.local, .env and key files; pass keys at run time
# (docker run -e TINKER_API_KEY -e AWS_ACCESS_KEY_ID ...).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

RUN useradd --create-home --uid 1000 --user-group character
USER 1000:1000
WORKDIR /home/character/app
# PIP_NO_CACHE_DIR: keep pip's wheel cache (GBs) out of the image.
ENV PIP_NO_CACHE_DIR=1
# Dependencies first, in their own layer: a code change then rebuilds only the layers below.
COPY --chown=1000:1000 setup.sh requirements.txt ./
RUN SETUP_DEPS_ONLY=1 ./setup.sh
# core.no_scm: .git is not copied, and DVC runs without Git (`dvc exp` needs one: git init first).
COPY --chown=1000:1000 . .
RUN ./setup.sh && .venv/bin/dvc config --local core.no_scm true
ENV PATH=/home/character/app/.venv/bin:$PATH
CMD ["dvc", "repro"]
