#!/usr/bin/env bash
# The residual lab's instruments on the trainability study's nets (experiments/trainability_cpu.py), CPU-sized:
#   bash experiments/trainability_lab.sh [RUNS=runs/trainability_cpu] [OUT=experiments/results/trainability_cpu]
# At initialisation (zoo nets at the study's widths and 14x14 inputs): signal propagation of the five variants at
# depth 56, shattered gradients at depths 20/56/110. On the trained seed-0 nets of depth 56 (RUNS/<variant>56-seed0):
# their signal, the lesion study, and filter-normalised landscapes (21x21 grid, 1,000 test images) of resnet56 and
# plain56. On those of depth 110: their signal, and the lesion study of resnet110 (Veit et al.'s own net: 54
# blocks). Steps whose outputs exist are skipped, so the script resumes.
set -euo pipefail
RUNS="${1:-runs/trainability_cpu}"
OUT="${2:-experiments/results/trainability_cpu}"
PY="${PYTHON:-.venv/bin/python}"
AT_INIT=(--widths 8,16,32 --image-size 14)
VARIANTS56=(plain56 resnet56 resnet56:block=skipinit_basic resnet56:block=fixup_basic resnet56:stochastic_depth=0.5)
TRAINED56=(plain56-seed0 resnet56-seed0 skipinit56-seed0 fixup56-seed0 stochdepth56-seed0)
TRAINED110=("${TRAINED56[@]//56/110}")

step() {  # step NAME OUTPUT_FILE COMMAND...: run COMMAND unless OUTPUT_FILE exists, timing it into OUT/costs.txt
  local name="$1" output="$2"
  shift 2
  if [ -e "$output" ]; then echo "== $name: done before ($output)"; return; fi
  echo "== $name: $*"
  local start=$SECONDS
  "$@"
  echo "$name: $((SECONDS - start)) s" >> "$OUT/costs.txt"
}

mkdir -p "$OUT"
step "signal at init" "$OUT/signal_init/signal.json" \
  "$PY" -m resnet_jax.lab signal "${VARIANTS56[@]/#/--model=}" "${AT_INIT[@]}" --out "$OUT/signal_init"
for depth in 20 56 110; do
  step "shattered at init, depth $depth" "$OUT/shattered/shattered$depth.json" \
    "$PY" -m resnet_jax.lab shattered --model "plain$depth" --model "resnet$depth" \
    --model "resnet$depth:block=skipinit_basic" --model "resnet$depth:stochastic_depth=0.5" "${AT_INIT[@]}" \
    --points 256 --pairs 4 --name "shattered$depth" --out "$OUT/shattered"
done
step "signal trained" "$OUT/signal_trained/signal.json" \
  "$PY" -m resnet_jax.lab signal "${TRAINED56[@]/#/--workdir=$RUNS/}" --out "$OUT/signal_trained"
step "lesion" "$OUT/lesion/lesion.json" \
  "$PY" -m resnet_jax.lab lesion "${TRAINED56[@]/#/--workdir=$RUNS/}" --ks 0,1,2,4,8,16 --draws 3 --out "$OUT/lesion"
step "signal trained, depth 110" "$OUT/signal_trained110/signal.json" \
  "$PY" -m resnet_jax.lab signal "${TRAINED110[@]/#/--workdir=$RUNS/}" --out "$OUT/signal_trained110"
step "lesion, resnet110" "$OUT/lesion110/lesion.json" \
  "$PY" -m resnet_jax.lab lesion --workdir "$RUNS/resnet110-seed0" --ks 0,1,2,4,8,16,32 --draws 2 --out "$OUT/lesion110"
for net in resnet56 plain56; do
  step "landscape $net" "$OUT/landscape/${net}_landscape.npz" \
    "$PY" -m resnet_jax.lab landscape --workdir "$RUNS/$net-seed0" --examples 1000 --points 21 --name "$net" \
    --out "$OUT/landscape"
done
"$PY" -m resnet_jax.lab landscape --plot "$OUT/landscape/resnet56_landscape.npz" \
  "$OUT/landscape/plain56_landscape.npz" --out "$OUT/landscape"
