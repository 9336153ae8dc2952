#!/usr/bin/env bash
# Writes the contract and every file it or a client's error decoding imports to OUT_DIR, one
# include root for protoc or buf in any language: llmgateway/v1, google/api/field_behavior,
# google/rpc/{status,error_details,code} and google/protobuf/{struct,timestamp,any,duration}.
# Usage: proto-bundle.sh OUT_DIR   (make proto-bundle writes build/proto-bundle)
set -euo pipefail
out=$(realpath -m "${1:?usage: proto-bundle.sh OUT_DIR}")
cd "$(dirname "$0")/.."
rm -rf "$out"
mkdir -p "$out"
cp -r proto/. "$out/"  # our contract and the Google protos in proto/google
rm -f "$out/google/README.md"
# protoc's own well-known types, as grpcio-tools ships them.
wkt=$(.venv/bin/python -c 'import pathlib, grpc_tools; print(pathlib.Path(grpc_tools.__file__).parent / "_proto")')
for f in struct timestamp any duration; do
  install -D -m 0644 "$wkt/google/protobuf/$f.proto" "$out/google/protobuf/$f.proto"
done
echo "proto bundle: $out"
