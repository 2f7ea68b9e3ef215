#!/usr/bin/env bash
# Train the lip-sync front end on one GPU (larger batches, a few minutes). Not run yet:
# the shipped python/dgtalker/models/assets/lipsync_frontend.safetensors was trained on
# one CPU core (docs/lipsync.md gives that command).
#
# Before (on any machine with espeak-ng and flite; about a minute on one core):
#   python -m dgtalker.audio.tts_corpus --out corpus.npz --minutes 150 --seed 0 --flite-share 0.3
#   python -c "import numpy as np; np.savez('.lipsync_corpus/corpus.npz', **np.load('corpus.npz'))"
#   xz -6 .lipsync_corpus/corpus.npz        # ~45 MB for 150 min: mind the 64 MB the working tree may carry
# Then, on the GPU machine, from the repository root (OUT: where results go):
#   bash benchmarks/train_frontend_gpu.sh .lipsync_corpus/corpus.npz.xz
# Two configurations train side by side on the one GPU for MINUTES each (default 4):
#   A  the default FrontEndConfig (look-ahead 10 mel frames, 122.5 ms)
#   B  look-ahead 17 mel frames (192.5 ms)
set -euo pipefail
CORPUS=${1:-.lipsync_corpus/corpus.npz.xz}
OUT=${OUT:-/tmp/frontend_out}
MINUTES=${MINUTES:-4}
mkdir -p "$OUT"
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open('/tmp/corpus.npz', 'wb'))" "$CORPUS"
export PYTHONPATH=python PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader || true
python3 -m dgtalker.audio.frontend_train --corpus /tmp/corpus.npz --out "$OUT/frontend_A.safetensors" \
    --steps 200000 --minutes "$MINUTES" --batch 128 --seed 0 --log "$OUT/train_A.json" > "$OUT/train_A.log" 2>&1 &
A=$!
python3 -m dgtalker.audio.frontend_train --corpus /tmp/corpus.npz --out "$OUT/frontend_B.safetensors" \
    --steps 200000 --minutes "$MINUTES" --batch 128 --seed 0 --log "$OUT/train_B.json" \
    --config '{"blocks": [[1, 1], [2, 2], [4, 4], [8, 7], [16, 0], [1, 1]]}' > "$OUT/train_B.log" 2>&1 &
B=$!
wait $A; wait $B
tail -n 3 "$OUT/train_A.log" "$OUT/train_B.log"
