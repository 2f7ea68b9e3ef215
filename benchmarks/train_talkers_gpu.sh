#!/usr/bin/env bash
# Several identity trainings at once, one per GPU, from one packed clip:
#   bash benchmarks/train_talkers_gpu.sh PACK MINUTES "OPTIONS A" "OPTIONS B" ...
# Same as train_talker_gpu.sh (the same build, wheels and outputs), but run k goes on
# GPU k and writes OUT_DIR/run<k>/ (talker.safetensors, its history and preview, train.log).
set -euo pipefail
PACK=$1; MINUTES=$2; shift 2
OUT_DIR=${OUT:-out}; mkdir -p "$OUT_DIR"
source benchmarks/gpu_setup.sh
python3 benchmarks/clip_pack.py unpack "$PACK" /tmp/clip
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
k=0
for opts in "$@"; do
  mkdir -p "$OUT_DIR/run$k"
  echo "run$k: $opts" | tee "$OUT_DIR/run$k/train.log"
  # shellcheck disable=SC2086  # the options are meant to split into words
  ( CUDA_VISIBLE_DEVICES=$k dgtalker train /tmp/clip --out "$OUT_DIR/run$k/talker.safetensors" \
      --minutes "$MINUTES" --half $opts 2>&1 | tr '\r' '\n' \
      | awk 'NR % 50 == 0 || /trained|Error|error|Traceback/' >> "$OUT_DIR/run$k/train.log"
    rm -f "$OUT_DIR/run$k"/talker.safetensors.state.safetensors ) &
  k=$((k + 1))
done
wait
tail -n 3 "$OUT_DIR"/run*/train.log
ls -la "$OUT_DIR"/run*
