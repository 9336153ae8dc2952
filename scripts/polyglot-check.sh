#!/usr/bin/env bash
# make polyglot-check: installs Debian's Go toolchain and gRPC/protobuf Go packages when missing
# (apt, as root), then runs the Go client tests (tests/clients/test_go_client.py, marker
# `polyglot`). GOPATH mode: module mode cannot resolve offline.
set -euo pipefail
cd "$(dirname "$0")/.."
# golang-github-golang-protobuf-1-5-dev, not 1-3: with the 1-3 runtime the first reply panics.
packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler)
./scripts/apt-ensure.sh --as polyglot-check --with-recommends "${packages[@]}"
exec .venv/bin/pytest -q -m polyglot tests/clients/test_go_client.py
