# Runs the pipeline on the embedded default model. The base image is a build argument.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

RUN apt-get update && apt-get install -y --no-install-recommends git=1:2.39.* && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 character
USER character
WORKDIR /home/character/app
COPY --chown=character:character . .
RUN ./setup.sh
ENV PATH=/home/character/app/.venv/bin:$PATH
# No secrets in the image: pass TINKER_API_KEY (or others) with `docker run -e` when a stage needs one.
CMD ["dvc", "repro"]
