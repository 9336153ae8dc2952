#!/usr/bin/env bash
# Refreshes proto/google: the Google protos the contract imports
# (google/api/field_behavior) and those a client needs to decode the gateway's errors
# (google/rpc status, error_details, code), copied out of the installed googleapis-common-protos
# wheel. They are committed, so buf, protoc and every language's tooling find them in a plain
# checkout, offline (the Buf Schema Registry is unreachable, so buf.yaml declares no `deps`).
# tests/test_vendored_protos.py fails when the wheel's copies differ from the committed ones.
# Usage: vendor-googleapis.sh [OUT_DIR]   (default proto: the files go to proto/google/...)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-proto}"
files=(google/api/field_behavior.proto google/rpc/status.proto google/rpc/error_details.proto
  google/rpc/code.proto)
# The .proto sources sit next to their _pb2 modules in the wheel.
src=$(.venv/bin/python -c 'import pathlib, google.api.field_behavior_pb2 as m; print(pathlib.Path(m.__file__).parents[2])')
for f in "${files[@]}"; do
  install -D -m 0644 "$src/$f" "$out/$f"
done
