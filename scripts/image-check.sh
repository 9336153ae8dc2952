#!/usr/bin/env bash
# `make image-check`: builds the Dockerfile with buildah (Debian's package) and runs the image:
# health SERVING, a Complete against the built-in simulator, the metrics endpoint, SIGTERM and
# the drain (tests/deploy/image_check.py). Needs no Docker engine and no image registry: when
# the base image cannot be pulled, an equivalent is bootstrapped from Debian's packages
# (scripts/bootstrap-base-image.sh). Installs buildah and mmdebstrap with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
base="docker.io/library/python:3.11-slim-bookworm"   # the Dockerfile's FROM
image="${IMAGE:-localhost/llm-gateway:check}"
began=$SECONDS
step() { echo "image-check: $1 ($((SECONDS - began)) s)" >&2; }

./scripts/apt-ensure.sh --as image-check buildah:buildah mmdebstrap:mmdebstrap

if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  if timeout 120 buildah pull --quiet "$base" >/dev/null 2>&1; then
    step "pulled $base"
  else
    step "cannot pull $base: bootstrapping an equivalent base with mmdebstrap"
    ./scripts/bootstrap-base-image.sh "$base"
  fi
fi
step "base image ready; building the Dockerfile"
# Docker format: OCI images drop HEALTHCHECK. chroot isolation: no user namespaces needed.
buildah bud --quiet --isolation chroot --pull=never --format docker --layers -t "$image" . >/dev/null
step "built $image ($(buildah images --format '{{.Size}}' "$image" | head -1)); running it"
IMAGE="$image" .venv/bin/pytest -q tests/deploy/image_check.py
step "done"
