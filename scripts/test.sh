#!/usr/bin/env bash
# One command for the test suite on a fresh machine: sets up .venv, then runs pytest (CPU only, offline) on every
# core, one test module per worker at a time (module fixtures are built once). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -n auto --dist loadscope "$@"
