#!/usr/bin/env bash
# Regenerates gen/ from proto/: Python modules, gRPC stubs, mypy stubs, and the
# descriptor set Envoy's gRPC-JSON transcoder reads. `make proto` runs it; the test
# suite runs it into a temporary folder and fails if gen/ differs (stale gen/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/gen}"
third_party="${2:-$root/third_party/proto}"
py="$root/.venv/bin/python"

"$py" "$root/scripts/proto_third_party.py" "$third_party"
rm -rf "$out/python" "$out/descriptors.binpb"
mkdir -p "$out/python"

mapfile -t ours < <(cd "$root/proto" && find interpay -name '*.proto' | sort)
"$py" -m grpc_tools.protoc \
  -I "$root/proto" -I "$third_party" \
  --python_out="$out/python" --grpc_python_out="$out/python" \
  --mypy_out="$out/python" --mypy_grpc_out="$out/python" \
  --plugin=protoc-gen-mypy="$root/.venv/bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$root/.venv/bin/protoc-gen-mypy_grpc" \
  "${ours[@]}" buf/validate/validate.proto

# Envoy needs every file a service imports, and the google.rpc detail types so
# it can render error details as JSON.
"$py" -m grpc_tools.protoc \
  -I "$root/proto" -I "$third_party" \
  --include_imports --descriptor_set_out="$out/descriptors.binpb" \
  "${ours[@]}" google/rpc/error_details.proto google/rpc/status.proto

# Make every generated folder a regular package so mypy and imports agree.
find "$out/python" -mindepth 1 -type d -exec touch {}/__init__.py \;
