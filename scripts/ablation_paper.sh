#!/usr/bin/env bash
# The paper-size ablation (experiments/ablation_paper.py: CIFAR-10, plain and residual 20/32/44/56/110, 3 seeds) on
# every GPU of this machine: sets up .venv with the gpu extra, runs one worker per GPU (CUDA_VISIBLE_DEVICES=i), then
# writes the report (device, date, commit, wall time) to experiments/results/ablation_paper. Safe to run again:
# finished runs are skipped, interrupted ones resume. Extra arguments go to every worker, e.g.
#   bash scripts/ablation_paper.sh --axis config=plain20,resnet20,plain56,resnet56 --seeds 0
#   bash scripts/ablation_paper.sh --set data.source=cifar data.path=/data/cifar-10-batches-py   # offline
# Environment: GPUS (default: all that nvidia-smi lists), RUNS (default runs/ablation_paper; workers log there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-$ROOT/runs/ablation_paper}"
OUT="$ROOT/experiments/results/ablation_paper"
PY="${RESNET_JAX_VENV:-$ROOT/.venv}/bin/python"
bash "$ROOT/scripts/setup.sh" gpu
cd "$ROOT"

GPUS="${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}"
if [ "${GPUS:-0}" -lt 1 ]; then
  echo "no GPU found by nvidia-smi -L; set GPUS=N to run N workers anyway" >&2
  exit 1
fi
mkdir -p "$RUNS"
case " $* " in
  *" data.source="*) ;;  # local files: nothing to download
  *) "$PY" -m resnet_jax.data cifar10 --source tfds ;;  # download and prepare once, not in every worker at the same time
esac

echo "ablation: $GPUS worker(s), logs in $RUNS/worker-*.log"
pids=()
for ((i = 0; i < GPUS; i++)); do
  CUDA_VISIBLE_DEVICES=$i "$PY" scripts/ablation.py run --config experiments/ablation_paper.py --root "$RUNS" \
    --workers "$GPUS" --worker-index "$i" "$@" >"$RUNS/worker-$i.log" 2>&1 &
  pids+=("$!")
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "worker $i failed: see $RUNS/worker-$i.log" >&2; failed=1; }
done
"$PY" scripts/ablation.py report --root "$RUNS" --out "$OUT"
exit "$failed"
