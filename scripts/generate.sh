#!/usr/bin/env bash
# Regenerates the contract's Python code in the client package (clients/python/src/llmgateway/v1):
# messages and gRPC stubs (grpcio-tools) with mypy-protobuf type stubs for both the sync and the
# async API (a stub on a grpc.Channel is typed sync, on a grpc.aio.Channel async). The server
# uses the same package. Usage: generate.sh [OUT_DIR]   (OUT_DIR receives llmgateway/v1/...)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-clients/python/src}"
venv_bin=".venv/bin"
mkdir -p "$out/llmgateway/v1"
find "$out/llmgateway/v1" -name '*_pb2*' -delete
# google/api/field_behavior.proto is found in proto/google; only our own files are compiled,
# so the generated code imports google.api.field_behavior_pb2 from the wheel.
"$venv_bin/python" -m grpc_tools.protoc \
  -Iproto \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy="$venv_bin/protoc-gen-mypy" \
  --mypy_out="$out" \
  --plugin=protoc-gen-mypy_grpc="$venv_bin/protoc-gen-mypy_grpc" \
  --mypy_grpc_out="$out" \
  $(find proto/llmgateway -name '*.proto' | sort) 2>&1 | { grep -v "^Writing mypy" || true; }
printf '"""Generated from proto/llmgateway/v1 by scripts/generate.sh; do not edit."""\n' \
  >"$out/llmgateway/v1/__init__.py"
