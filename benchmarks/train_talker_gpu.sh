#!/usr/bin/env bash
# Identity training on one GPU machine that has no network, from a packed clip:
#   bash benchmarks/train_talker_gpu.sh PACK MINUTES [train options...]
# PACK is benchmarks/clip_pack.py's output (e.g. .pack/id007); wheels the machine
# lacks (librosa, soundfile, soxr, ...) are expected in .whl/. Writes OUT_DIR (default
# $OUT or ./out): talker.safetensors (float16), its preview and the training log.
set -euo pipefail
PACK=$1; MINUTES=$2; shift 2
OUT_DIR=${OUT:-out}; mkdir -p "$OUT_DIR"
source benchmarks/gpu_setup.sh
python3 benchmarks/clip_pack.py unpack "$PACK" /tmp/clip
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
dgtalker train /tmp/clip --out "$OUT_DIR/talker.safetensors" --minutes "$MINUTES" --half "$@" 2>&1 \
  | tr '\r' '\n' | awk 'NR % 50 == 0 || /trained|Error|error|Traceback/' | tee "$OUT_DIR/train.log"
rm -f "$OUT_DIR"/talker.safetensors.state.safetensors   # float32 state: too large to bring back
ls -la "$OUT_DIR"
