#!/usr/bin/env bash
# Build the Dockerfile without a Docker engine and run the smoke preset inside the image.
#
#   docker/build_and_smoke.sh                 # base image made here from Debian packages (debootstrap)
#   BASE_IMAGE=python:3.11-slim-bookworm docker/build_and_smoke.sh   # where a registry can be pulled from
#   SMOKE_TARGETS=compose docker/build_and_smoke.sh   # only the stages up to `compose` (dvc repro TARGETS)
#
# Needs root and Debian's buildah, podman (with runc) and debootstrap:
#   apt-get install -y buildah podman runc debootstrap
# Steps: 1. the base image: Debian bookworm minbase + python3-venv from debootstrap, imported with podman
# (base images cannot be pulled here); 2. buildah builds the Dockerfile (chroot isolation); 3. podman runs
# `character preset smoke && dvc repro` in the image with no network at all, as the image's non-root user.
# The build needs the package registries. Where this machine reaches them through a TLS-inspecting proxy
# (its CA in the host bundle) or keeps wheels in /opt/wheels, both are bind-mounted read-only for the
# RUN steps only: nothing of them is left in the image.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/character:latest}
WORK=${WORK:-.cache/docker}
mkdir -p "$WORK"
start=$(date +%s)
log() { echo "[$(($(date +%s) - start))s] $*"; }

# ---- 1. base image -------------------------------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=localhost/character-base:bookworm
  if ! podman image exists "$BASE_IMAGE"; then
    log "debootstrap Debian bookworm into $WORK/rootfs"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" \
      http://deb.debian.org/debian > "$WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | podman import -q - "$BASE_IMAGE"
    rm -rf "$WORK/rootfs"
  fi
fi
log "base image: $BASE_IMAGE"

# ---- 2. build ------------------------------------------------------------------------------------------
mounts=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$WORK/pip.conf"
fi
if [ -d /opt/wheels ]; then  # a local CPU torch wheel: PyPI's own torch is the multi-GB CUDA build
  mounts+=(-v /opt/wheels:/opt/wheels:ro)
  printf 'find-links = /opt/wheels\n' >> "$WORK/pip.conf"
fi
[ -f "$WORK/pip.conf" ] && mounts+=(-v "$PWD/$WORK/pip.conf:/etc/pip.conf:ro")
log "buildah build -> $IMAGE"
buildah build --layers --isolation chroot --network host "${mounts[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  -t "$IMAGE" . > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
log "built: $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1 / 1e9}')"

# ---- 3. smoke run inside the image -----------------------------------------------------------------------
# --ulimit: runc here may only lower the process limit, not raise it to podman's default.
TARGETS=${SMOKE_TARGETS:-}
log "podman run (no network): character preset smoke && dvc repro $TARGETS"
podman run --rm --network none --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
  -e TARGETS="$TARGETS" "$IMAGE" sh -c 'set -e; echo "uid $(id -u) ($(id -un))"; character preset smoke;
    dvc repro $TARGETS; dvc repro $TARGETS | tail -1; dvc metrics show --json' > "$WORK/smoke.log" 2>&1 \
  || { tail -40 "$WORK/smoke.log"; log "FAILED"; exit 1; }
grep -E "^uid |didn't change|up to date" "$WORK/smoke.log" || true
log "smoke passed in the image (log: $WORK/smoke.log)"
