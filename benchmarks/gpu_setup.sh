# Sourced by the GPU-machine scripts: installs the wheels the machine lacks (from .whl/,
# onto PYTHONPATH) and builds dgtalker with CUDA for Hopper; prints the build time.
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
_t0=$(date +%s)
DGTALKER_CUDA=ON DGTALKER_CUDA_ARCHITECTURES=${DGTALKER_CUDA_ARCHITECTURES:-90-real} \
  python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -3
echo "build: $(( $(date +%s) - _t0 )) s"
