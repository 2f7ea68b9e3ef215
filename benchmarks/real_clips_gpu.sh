#!/usr/bin/env bash
# Train talkers on real clips on one GPU machine without network, then drive each with
# a speaker it never heard, from its own framing and at +-20 degrees of yaw:
#   bash benchmarks/real_clips_gpu.sh SPEECH PACK:MINUTES [PACK:MINUTES ...]
# PACKs are benchmarks/clip_pack.py outputs (pack --video for real footage), made from
# `dgtalker preprocess` datasets; wheels the machine lacks go in .whl/. Writes to $OUT
# (or ./out): NAME.safetensors (float16), NAME_drive.png, the training preview and one log.
set -euo pipefail
SPEECH=$1; shift
OUT_DIR=${OUT:-out}; mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/real_clips.log"
source benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee -a "$LOG"
for spec in "$@"; do
  pack=${spec%%:*}; minutes=${spec##*:}; name=$(basename "$pack")
  python3 benchmarks/clip_pack.py unpack "$pack" "/tmp/$name" | tee -a "$LOG"
  t1=$(date +%s)
  dgtalker train "/tmp/$name" --out "$OUT_DIR/$name.safetensors" --minutes "$minutes" --half 2>&1 \
    | tr '\r' '\n' | awk 'NR % 50 == 0 || /trained|Error|error|Traceback/' | tee -a "$LOG"
  echo "$name: trained in $(( $(date +%s) - t1 )) s wall" | tee -a "$LOG"
  rm -f "$OUT_DIR/$name.safetensors.state.safetensors"
  python3 benchmarks/drive_talker.py "$OUT_DIR/$name.safetensors" "$SPEECH" --yaw 0,-20,20 \
    --out "$OUT_DIR/${name}_drive.png" 2>&1 | tail -2 | tee -a "$LOG"
done
ls -la "$OUT_DIR"
