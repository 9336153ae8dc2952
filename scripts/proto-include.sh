#!/usr/bin/env bash
# Copies the Google protos the contract imports (google/api/field_behavior) and those a client
# needs to decode the gateway's errors (google/rpc status, error_details, code) out of the
# installed googleapis-common-protos wheel into OUT_DIR, so that buf and protoc find them
# offline: the Buf Schema Registry is unreachable here, so buf.yaml declares no `deps`.
# Usage: proto-include.sh OUT_DIR
set -euo pipefail
out=$(realpath -m "${1:?usage: proto-include.sh OUT_DIR}")
cd "$(dirname "$0")/.."
files=(google/api/field_behavior.proto google/rpc/status.proto google/rpc/error_details.proto
  google/rpc/code.proto)
# The .proto sources sit next to their _pb2 modules in the wheel.
src=$(.venv/bin/python -c 'import pathlib, google.api.field_behavior_pb2 as m; print(pathlib.Path(m.__file__).parents[2])')
for f in "${files[@]}"; do
  install -D -m 0644 "$src/$f" "$out/$f"
done
