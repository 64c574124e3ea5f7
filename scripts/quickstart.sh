#!/usr/bin/env bash
# One command from a fresh clone to a trained model: sets up .venv, makes sure the real Fashion-MNIST files are
# there (Debian's dataset-fashion-mnist; no network needed beyond the package mirror), then trains
# experiments/quickstart.py into runs/quickstart. Extra arguments go to resnet_jax.train (e.g. --config.num_epochs=1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA=/usr/share/datasets/fashion-mnist
bash "$ROOT/scripts/setup.sh"

if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST not found in $DATA: installing Debian's dataset-fashion-mnist ..."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get install -y -q dataset-fashion-mnist || { $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist; }; }; then
    echo "Could not install dataset-fashion-mnist. Install it by hand (apt-get install dataset-fashion-mnist), or put" >&2
    echo "the four Fashion-MNIST IDX files in a folder and pass --config.data.path=/that/folder." >&2
    exit 1
  fi
fi

cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m resnet_jax.train --config experiments/quickstart.py --workdir runs/quickstart "$@"
