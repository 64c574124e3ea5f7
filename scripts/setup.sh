#!/usr/bin/env bash
# Creates .venv (once) and installs resnet-jax with the pinned stack in constraints.txt.
# Sourced by quickstart.sh, test.sh and the benchmarks; safe to run again (it skips work already done).
# Extra pip extras may be passed, e.g. `bash scripts/setup.sh bench`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RESNET_JAX_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="dev${1:+,$1}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "resnet-jax needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

stamp="$VENV/.resnet-jax-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16) $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing resnet-jax[$EXTRAS] into $VENV (pinned by constraints.txt) ..."
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$ROOT[$EXTRAS]"
  echo "$want" > "$stamp"
fi
