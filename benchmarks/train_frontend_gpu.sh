#!/usr/bin/env bash
# Train the lip-sync front end on one GPU (larger batches, a few minutes). The shipped
# python/dgtalker/models/assets/lipsync_frontend.safetensors was trained on one CPU core
# (docs/lipsync.md gives that command and what this script's runs measured).
#
# Before (on any machine with espeak-ng and flite; about a minute on one core):
#   python -m dgtalker.audio.tts_corpus --out corpus.npz --minutes 150 --seed 0 --flite-share 0.3
#   python -c "import numpy as np; np.savez('.lipsync_corpus/corpus.npz', **np.load('corpus.npz'))"
#   xz -6 .lipsync_corpus/corpus.npz        # ~45 MB for 150 min: mind the 64 MB the working tree may carry
# (with the shipped prior and demo talker, 35 MB, the tree is too large beside it: they are
# not needed here and can stay out of the working tree during the call)
# Then, on the GPU machine, from the repository root (OUT: where results go):
#   bash benchmarks/train_frontend_gpu.sh .lipsync_corpus/corpus.npz.xz
# Two configurations train side by side on the one GPU for MINUTES each (default 4), BATCH
# crops a step (default 256):
#   A  the default FrontEndConfig (96 channels, look-ahead 10 mel frames, 122.5 ms)
#   B  twice as wide (192 channels), the same look-ahead (a talker's causal look-ahead
#      of <= 200 ms leaves the front end no more)
set -euo pipefail
CORPUS=${1:-.lipsync_corpus/corpus.npz.xz}
OUT=${OUT:-/tmp/frontend_out}
MINUTES=${MINUTES:-4}
BATCH=${BATCH:-256}
mkdir -p "$OUT"
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open('/tmp/corpus.npz', 'wb'))" "$CORPUS"
export PYTHONPATH=python PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader || true
python3 -m dgtalker.audio.frontend_train --corpus /tmp/corpus.npz --out "$OUT/frontend_A.safetensors" \
    --steps 200000 --minutes "$MINUTES" --batch "$BATCH" --seed 0 --log "$OUT/train_A.json" > "$OUT/train_A.log" 2>&1 &
A=$!
python3 -m dgtalker.audio.frontend_train --corpus /tmp/corpus.npz --out "$OUT/frontend_B.safetensors" \
    --steps 200000 --minutes "$MINUTES" --batch "$BATCH" --seed 0 --log "$OUT/train_B.json" \
    --config '{"channels": 192}' > "$OUT/train_B.log" 2>&1 &
B=$!
wait $A; wait $B
tail -n 3 "$OUT/train_A.log" "$OUT/train_B.log"
