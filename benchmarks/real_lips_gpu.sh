#!/usr/bin/env bash
# Real-clip lip sync on one GPU machine without network: builds dgtalker with CUDA, then
# trains several talkers on one real clip AT THE SAME TIME on the same GPU (so each gets
# the same share of it), the GPU render tests running beside them, for MINUTES each:
#   bash benchmarks/real_lips_gpu.sh PACK MINUTES [extra train options for all...]
# VARIANTS (environment) holds one talker per line, "TAG [its own train options]"; by default
# the current defaults ("new") and the talker before the lip work ("base": log-mel only,
# photometric lips: --no-frontend --lip-target 0). At most 4 variants (what comes back).
# A variant trains on another packed clip with "TAG pack=PATH [options]" (a synthetic
# regression beside the real clip: both packs travel in one call). CEILING=TAG then runs
# benchmarks/face_ceiling.py on that variant's talker and clip (CEILING_OPTS, CEILING_S:
# its time bound, default 150 s), into $OUT/ceiling_TAG.json.
# SNAPSHOT=STEP also keeps each variant's talker as saved at its first checkpoint at or after
# STEP (NAME_TAG_stepN.safetensors): how a shorter run of the same options ends, from one run.
# PACK is a benchmarks/clip_pack.py output (pack --video) of a `dgtalker preprocess`
# dataset; wheels the machine lacks go in .whl/. Writes to $OUT (or ./out): NAME_TAG.safetensors
# (float16; one over 16 MB comes back as NAME_TAG.safetensors.part.aa, .ab: cat them) per variant, the GPU test log and NAME_logs.tar (training logs and histories).
# Evaluate the talkers on the original dataset with `dgtalker eval` (benchmarks/README.md).
set -uo pipefail
shopt -s extglob
PACK=$1; MINUTES=$2; shift 2
OUT_DIR=${OUT:-out}; mkdir -p "$OUT_DIR"
name=$(basename "$PACK")
VARIANTS=${VARIANTS:-$'new\nbase --no-frontend --lip-target 0'}
source benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu_tests.log"
packs=("$PACK")
while read -r _ first _; do
  [[ ${first:-} == pack=* ]] && packs+=("${first#pack=}")
done <<< "$VARIANTS"
for p in $(printf '%s\n' "${packs[@]}" | sort -u); do
  python3 benchmarks/clip_pack.py unpack "$p" "/tmp/$(basename "$p")" | tail -1 &
done
wait
mkdir -p /tmp/run
pids=(); tags=()
while read -r tag opts; do
  [ -z "$tag" ] && continue
  clip=$name
  if [[ $opts == pack=* ]]; then
    clip=$(basename "${opts%% *}"); opts=${opts##pack=*([^ ])}
  fi
  # shellcheck disable=SC2086  # the options are meant to split into words
  dgtalker train "/tmp/$clip" --out "/tmp/run/${name}_$tag.safetensors" --minutes "$MINUTES" --half --quiet \
    $opts "$@" > "/tmp/run/${name}_$tag.log" 2>&1 &
  pids+=($!); tags+=("$tag")
done <<< "$VARIANTS"
if [ -n "${SNAPSHOT:-}" ]; then
  for tag in "${tags[@]}"; do
    (f="/tmp/run/${name}_$tag.safetensors"
     while kill -0 "${pids[@]}" 2>/dev/null; do  # the history is written after the talker it describes
       s=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[-1]['step'])" "$f.history.json" 2>/dev/null)
       if [ -n "$s" ] && [ "$s" -ge "$SNAPSHOT" ]; then cp "$f" "$OUT_DIR/${name}_${tag}_step$s.safetensors"; break; fi
       sleep 5
     done) &
  done
fi
(cd /tmp && timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$OLDPWD/tests/test_render.py" \
  "$OLDPWD/tests/test_eval.py" "$OLDPWD/tests/test_mouth.py" 2>&1) | tail -6 >> "$OUT_DIR/gpu_tests.log"
wait "${pids[@]}"
for tag in "${tags[@]}"; do
  f="/tmp/run/${name}_$tag.safetensors"
  # a file comes back from the machine only up to 16 MiB: a larger talker (four audio
  # encoders: 18.9 MB) comes back in parts; join them with cat NAME.part.* > NAME
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 16000000 ]; then
    split -b 16000000 "$f" "$OUT_DIR/$(basename "$f").part."
  else
    cp "$f" "$OUT_DIR/" 2>/dev/null
  fi
  python3 - "$tag" "/tmp/run/${name}_$tag.safetensors.history.json" <<'PY' | tee -a "/tmp/run/${name}_$tag.log"
import json, sys
h = json.load(open(sys.argv[2]))
last = h[-1]
print(sys.argv[1], "steps", last["step"], "minutes", last["minutes"], {k: v for k, v in last.items() if k not in ("step", "minutes")})
PY
done
if [ -n "${CEILING:-}" ]; then
  clip=$name
  while read -r tag first _; do
    [[ $tag == "$CEILING" && ${first:-} == pack=* ]] && clip=$(basename "${first#pack=}")
  done <<< "$VARIANTS"
  # shellcheck disable=SC2086
  timeout "${CEILING_S:-150}" python3 benchmarks/face_ceiling.py "/tmp/$clip" "/tmp/run/${name}_$CEILING.safetensors" \
    --json "$OUT_DIR/ceiling_$CEILING.json" ${CEILING_OPTS:-} 2>&1 | tail -14
fi
(cd /tmp/run && tar cf "$OUT_DIR/${name}_logs.tar" ./*.log ./*.history.json 2>/dev/null)
ls -la "$OUT_DIR"
