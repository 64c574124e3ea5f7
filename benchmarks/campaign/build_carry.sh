#!/usr/bin/env bash
# Build .carry/, what a GPU session carries beside the working tree (benchmarks/README.md, "The GPU campaign"):
#   .carry/wheels/         wheels of the Python packages the GPU image lacks (ml_collections), for its Python 3.12
#   .carry/fashion-mnist/  the four Fashion-MNIST IDX .gz files (from Debian's dataset-fashion-mnist)
#   .carry/COMMIT          the commit the working tree is at (the device's copy has no .git)
# then check that the working tree plus .carry stay under the device's 64 MiB. Re-run it before each GPU session
# (downloads are kept; COMMIT and the size are renewed). Environment: PYTHON (any Python with pip; default .venv's).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CARRY="$ROOT/.carry"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
FASHION_MNIST="${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
LIMIT=$((64 * 1024 * 1024))
WHEELS=(ml_collections)  # what resnet-jax imports that the GPU image (KINDS.md's package list) does not have
cd "$ROOT"

mkdir -p "$CARRY/wheels" "$CARRY/fashion-mnist"
for name in "${WHEELS[@]}"; do
  pin="$(grep -i "^${name//_/[-_]}==" constraints.txt || true)"  # the version the project pins
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" "${pin:-$name}"
done
for stem in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ ! -f "$FASHION_MNIST/$stem.gz" ]; then
    echo "missing $FASHION_MNIST/$stem.gz: install Debian's dataset-fashion-mnist or set FASHION_MNIST=DIR" >&2
    exit 1
  fi
  cp -u "$FASHION_MNIST/$stem.gz" "$CARRY/fashion-mnist/"
done
commit="$(git rev-parse --short HEAD)"
if [ -n "$(git status --porcelain -uno)" ]; then commit="$commit+dirty"; fi
echo "$commit" >"$CARRY/COMMIT"

# What travels: tracked files and untracked ones git does not ignore (the device README), plus .carry.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
carry=$(find "$CARRY" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "carry folder: $(mib "$carry") ($(ls "$CARRY/wheels" | tr '\n' ' ')+ Fashion-MNIST);" \
  "working tree: $(mib "$tree");" \
  "together $(mib $((tree + carry))) of the device's 64 MiB; commit $commit"
if [ $((tree + carry)) -ge $LIMIT ]; then
  echo "over the device's 64 MiB limit: carry less, or ignore large untracked files" >&2
  exit 1
fi
