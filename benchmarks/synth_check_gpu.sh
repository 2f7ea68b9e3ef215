#!/usr/bin/env bash
# The synthetic regression of a talker configuration on one GPU machine without network:
# builds dgtalker with CUDA, trains a talker on a packed synthetic clip (identity 7),
# evaluates it there (held-out frames, novel views) and times its audio -> frame path with
# the speech front end (bench_render.py on the new talker):
#   bash benchmarks/synth_check_gpu.sh PACK MINUTES [train options...]
# PACK: benchmarks/clip_pack.py's output of `dgtalker synth` (e.g. .pack/id007); wheels the
# machine lacks go in .whl/. Writes to $OUT (or ./out): NAME.safetensors (float16), the
# training log, render.json (bench_render) and NAME_eval.tar (dgtalker eval's report).
set -uo pipefail
PACK=$1; MINUTES=$2; shift 2
OUT_DIR=${OUT:-out}; mkdir -p "$OUT_DIR"
name=$(basename "$PACK")
source benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 benchmarks/clip_pack.py unpack "$PACK" "/tmp/$name" | tail -1
dgtalker train "/tmp/$name" --out "$OUT_DIR/$name.safetensors" --minutes "$MINUTES" --half --quiet "$@" \
  > "$OUT_DIR/${name}_train.log" 2>&1
tail -2 "$OUT_DIR/${name}_train.log"
rm -f "$OUT_DIR/$name.safetensors.state.safetensors" "$OUT_DIR/$name.safetensors.preview.png"
mv "$OUT_DIR/$name.safetensors.history.json" /tmp/ 2>/dev/null
dgtalker eval --data "/tmp/$name" --talker "$OUT_DIR/$name.safetensors" --out "/tmp/${name}_eval" 2>&1 | tail -25
python3 benchmarks/bench_render.py --talker "$OUT_DIR/$name.safetensors" --json "$OUT_DIR/render.json" 2>&1 | tail -25
cp "/tmp/$name.safetensors.history.json" "/tmp/${name}_eval/" 2>/dev/null
tar cf "$OUT_DIR/${name}_eval.tar" -C /tmp "${name}_eval"
ls -la "$OUT_DIR"
