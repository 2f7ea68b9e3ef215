#!/usr/bin/env bash
# Build, test and measure on a CUDA machine in one go:
#   bash benchmarks/gpu_suite.sh [OUTDIR] [BENCH_ARGS...]
# 1. installs the wheels the machine lacks (.whl/, see gpu_setup.sh), builds and installs
#    dgtalker (DGTALKER_CUDA=ON; architectures from DGTALKER_CUDA_ARCHITECTURES, default
#    the native GPU's),
# 2. runs the whole test suite (the GPU tests included),
# 3. runs the GPU tests of the three kernel families under compute-sanitizer memcheck,
#    and the rasterizer's GPU tests under racecheck (shared-memory hazards),
# 4. runs the rasterizer benchmark against gsplat when gsplat is importable.
# OUTDIR/commit.txt records the commit measured (bench_raster.py's JSON has it too).
set -uo pipefail
out=${1:-benchmarks/results}; shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1
arch=${DGTALKER_CUDA_ARCHITECTURES:-$(python3 -c "import torch; m,n=torch.cuda.get_device_capability(); print(f'{m}{n}-real')")}
status=0
{ git rev-parse HEAD 2>/dev/null || echo unknown; git status --porcelain 2>/dev/null | grep -q . && echo "(with uncommitted changes)"; } > "$out/commit.txt"

echo "== build (CUDA $arch)"
DGTALKER_CUDA_ARCHITECTURES="$arch" source benchmarks/gpu_setup.sh || status=1  # wheels from .whl/, then the build
python3 -c "import dgtalker, json; print(json.dumps(dgtalker.build_info()))" || status=1

echo "== tests"
(cd /tmp && python3 -m pytest -q -p no:cacheprovider "$OLDPWD/tests" -rs 2>&1) | tee "$out/pytest.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== compute-sanitizer memcheck (GPU tests of the kernels)"
(cd /tmp && compute-sanitizer --tool memcheck --error-exitcode 99 --target-processes all \
  python3 -m pytest -q -p no:cacheprovider -m gpu "$OLDPWD/tests/test_raster_cuda.py" "$OLDPWD/tests/test_latent.py" \
  "$OLDPWD/tests/test_decode.py" -k "not graph and not at_scale and not threads" 2>&1) | tee "$out/memcheck.log" | tail -8
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== compute-sanitizer racecheck (GPU tests of the rasterizer)"
(cd /tmp && compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 99 --target-processes all \
  python3 -m pytest -q -p no:cacheprovider -m gpu "$OLDPWD/tests/test_raster_cuda.py" \
  -k "matches_reference or deterministic or invalid or overflow" 2>&1) | tee "$out/racecheck.log" | tail -8
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== benchmark"
peers=none
python3 -c "import gsplat" 2>/dev/null && peers=gsplat
python3 benchmarks/bench_raster.py --peers "$peers" --json "$out/raster.json" "$@" 2>&1 | tee "$out/bench.log" | tail -40
exit $status
