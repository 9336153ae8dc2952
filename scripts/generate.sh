#!/usr/bin/env bash
# Regenerates generated/ from proto/: Python messages and gRPC stubs (grpcio-tools) with
# mypy-protobuf type stubs whose servicers are async-only. Usage: generate.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-generated}"
venv_bin=".venv/bin"
mkdir -p "$out"
find "$out" -name '*_pb2*' -delete
# google/api/field_behavior.proto comes from googleapis-common-protos; only our own files are
# compiled, so the generated code imports google.api.field_behavior_pb2 from that wheel.
include=$(mktemp -d)
trap 'rm -rf "$include"' EXIT
./scripts/proto-include.sh "$include"
"$venv_bin/python" -m grpc_tools.protoc \
  -Iproto \
  -I"$include" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy="$venv_bin/protoc-gen-mypy" \
  --mypy_out="$out" \
  --plugin=protoc-gen-mypy_grpc="$venv_bin/protoc-gen-mypy_grpc" \
  --mypy_grpc_out=only_async:"$out" \
  $(find proto -name '*.proto' | sort) 2>&1 | { grep -v "^Writing mypy" || true; }
# Packages, so that `from llmgateway.v1 import ...` works from an installed wheel too.
for dir in "$out/llmgateway" "$out/llmgateway/v1"; do
  [ -f "$dir/__init__.py" ] || printf '"""Generated from proto/ by scripts/generate.sh; do not edit."""\n' >"$dir/__init__.py"
done
touch "$out/llmgateway/py.typed"
