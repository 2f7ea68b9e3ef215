#!/usr/bin/env bash
# Identity training on one GPU machine that has no network, from a packed clip:
#   bash benchmarks/train_talker_gpu.sh PACK MINUTES [train options...]
# PACK is benchmarks/clip_pack.py's output (e.g. .pack/id007); wheels the machine
# lacks (librosa, soundfile, soxr, ...) are expected in .whl/. Writes OUT_DIR (default
# $OUT or ./out): talker.safetensors (float16), its history and preview, train.log.
# (train_talkers_gpu.sh with one configuration, its run0/ moved up.)
set -euo pipefail
PACK=$1; MINUTES=$2; shift 2
OUT_DIR=${OUT:-out}
OUT=$OUT_DIR bash "$(dirname "$0")/train_talkers_gpu.sh" "$PACK" "$MINUTES" "$*"
mv "$OUT_DIR"/run0/* "$OUT_DIR"/ && rmdir "$OUT_DIR/run0"
ls -la "$OUT_DIR"
