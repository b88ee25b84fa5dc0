#!/usr/bin/env bash
# Trained rows of the quick CUB profile (128 px, batch 32, 4 epochs x 20 batches; paper preset at lr 0.01, official
# preset at its own recipe), one
# `python -m frpt train` per row; its last stdout line holds the full test-split metrics (evaluated after the last
# epoch). Each row's command, wall time and JSON land in runs/quick/<row>.json. Usage: bash bench/quick_rows.sh ROOT
set -u
ROOT=${1:-../shared/data/CUB_200_2011}
OUT=runs/quick
mkdir -p "$OUT"
row() {  # name, extra args...
  local name=$1; shift
  local preset_args=(--preset paper --lr 0.01)
  [[ $name == official-* ]] && preset_args=(--preset official)
  local cmd=(python -m frpt train --dataset cub --root "$ROOT" "${preset_args[@]}" --input-size 128 --batch-size 32
             --epochs 4 --limit-batches 20 --threads 2 --quiet --out "$OUT/$name" "$@")
  local start=$(date +%s)
  rm -rf "$OUT/$name"
  local result
  result=$(.venv/bin/"${cmd[@]}" 2>"$OUT/$name.err" | tail -1)
  local secs=$(( $(date +%s) - start ))
  printf '{"row": "%s", "seconds": %d, "command": "%s", "result": %s}\n' "$name" "$secs" "${cmd[*]}" "${result:-null}" \
    > "$OUT/$name.json"
}
row finetune --variant finetune
row frpt-dpp2e-4 --variant frpt --prompt-lr-scale 2e-4
row pt+cah --variant pt+cah
row frpt --variant frpt
row dpp+pt-dpp2e-4 --variant dpp+pt --prompt-lr-scale 2e-4
row no-in-dpp2e-4 --variant no-in --prompt-lr-scale 2e-4
row official-frpt --variant frpt
row official-finetune --variant finetune
row official-dpp+pt --variant dpp+pt
row official-pt+cah --variant pt+cah
row official-no-in --variant no-in
