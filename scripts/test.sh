#!/usr/bin/env bash
# The whole suite: contract checks, unit tests, then integration and end-to-end tests
# against a real mesh (profile `test`, its own ports and data) started here and stopped
# at the end whatever happens.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root:$root/gen/python"
py=.venv/bin/python

cleanup() { "$py" scripts/mesh.py down --profile test || true; }
trap cleanup EXIT

"$py" scripts/mesh.py up --profile test
"$py" -m pytest -p no:cacheprovider -q -ra "$@"
