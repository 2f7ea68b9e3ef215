#!/usr/bin/env bash
# Real-clip lip sync on one GPU machine without network: builds dgtalker with CUDA, then
# trains two talkers on one real clip AT THE SAME TIME on the same GPU (so both get the
# same share of it), the GPU render tests running beside them: the default configuration
# (speech front end + lip targets) and the earlier one (log-mel only, photometric lips:
# --no-frontend --lip-target 0), for MINUTES each:
#   bash benchmarks/real_lips_gpu.sh PACK MINUTES [extra train options for both...]
# BASE_OPTS (environment) replaces the second run's options, to compare another variant.
# PACK is a benchmarks/clip_pack.py output (pack --video) of a `dgtalker preprocess`
# dataset; wheels the machine lacks go in .whl/. Writes to $OUT (or ./out), at most 7 files:
# NAME_new.safetensors, NAME_base.safetensors (float16), their training logs, the GPU test
# log and NAME_extras.tar (histories, previews). Evaluate the talkers on the original
# dataset with `dgtalker eval` (benchmarks/README.md).
set -uo pipefail
PACK=$1; MINUTES=$2; shift 2
OUT_DIR=${OUT:-out}; mkdir -p "$OUT_DIR"
name=$(basename "$PACK")
source benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu_tests.log"
python3 benchmarks/clip_pack.py unpack "$PACK" "/tmp/$name" | tail -1
train() {  # tag, extra args
  dgtalker train "/tmp/$name" --out "/tmp/run/${name}_$1.safetensors" --minutes "$MINUTES" --half --quiet "${@:2}" \
    > "$OUT_DIR/${name}_$1.log" 2>&1
}
mkdir -p /tmp/run
train new "$@" & p1=$!
# shellcheck disable=SC2086  # the options are meant to split into words
train base ${BASE_OPTS:---no-frontend --lip-target 0} "$@" & p2=$!
(cd /tmp && timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$OLDPWD/tests/test_render.py" \
  "$OLDPWD/tests/test_eval.py" 2>&1) | tail -6 >> "$OUT_DIR/gpu_tests.log"
wait $p1 $p2
for tag in new base; do
  cp "/tmp/run/${name}_$tag.safetensors" "$OUT_DIR/" 2>/dev/null
  python3 - "$tag" "/tmp/run/${name}_$tag.safetensors.history.json" <<'PY' | tee -a "$OUT_DIR/${name}_$tag.log"
import json, sys
h = json.load(open(sys.argv[2]))
last = h[-1]
print(sys.argv[1], "steps", last["step"], "minutes", last["minutes"], {k: v for k, v in last.items() if k not in ("step", "minutes")})
PY
done
(cd /tmp/run && tar cf "$OUT_DIR/${name}_extras.tar" ./*.history.json ./*.preview.png 2>/dev/null)
ls -la "$OUT_DIR"
