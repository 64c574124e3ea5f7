#!/usr/bin/env bash
# The GPU campaign (benchmarks/campaign/gpu_campaign.py; benchmarks/README.md gives the exact device commands):
#   bash benchmarks/campaign/gpu_campaign.sh OUT_DIR [--parts smoke,speed,pipeline,accuracy,ablation] [--tiny]
#                                            [--data DIR] [--budgets part=seconds,...] [--pack FILE.tar.gz]
# Installs the wheels carried in .carry/wheels (benchmarks/campaign/build_carry.sh: what the GPU image lacks) into a
# scratch folder on PYTHONPATH, puts the repository first on it, takes the commit from .carry/COMMIT when there is no
# .git, then runs the parts. Environment: PYTHON (default python3: the GPU image's), CAMPAIGN_SITE (the scratch folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
SITE="${CAMPAIGN_SITE:-${TMPDIR:-/tmp}/resnet-jax-site}"

if compgen -G "$ROOT/.carry/wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$ROOT"/.carry/wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -f "$ROOT/.carry/COMMIT" ]; then
  export RESNET_JAX_COMMIT="${RESNET_JAX_COMMIT:-$(cat "$ROOT/.carry/COMMIT")}"  # used where git knows no commit
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX shares the GPU with PyTorch (speed) and with other workers (ablation)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # torch on a shared CPU (benchmarks/README.md)
export PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/benchmarks/campaign/gpu_campaign.py" "$@"
