import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def _cuda_status() -> tuple[bool, bool, str]:
    """(a GPU is present, GPU tests can run, why not)."""
    build_cuda, devices = False, 0
    try:
        from dgtalker._engine import engine
        build_cuda = bool(engine().build_config()["cuda"])
        devices = engine().cuda_device_count() if build_cuda else 0
    except ImportError as exc:
        return False, False, f"dgtalker's engine cannot be imported ({exc})"
    present = torch.cuda.is_available() or devices > 0 or Path("/dev/nvidia0").exists()
    if not present:
        return False, False, "needs a CUDA device and a CUDA build of dgtalker"
    if not build_cuda:
        return True, False, "this machine has a GPU but dgtalker was built without CUDA (rebuild with DGTALKER_CUDA=ON)"
    if not torch.cuda.is_available():
        return True, False, "this machine has a GPU but torch cannot use it (a CPU-only torch?)"
    if devices == 0:
        return True, False, "torch sees a GPU but dgtalker's CUDA build sees none (driver/runtime mismatch?)"
    return True, True, ""


GPU_PRESENT, CUDA_READY, CUDA_WHY = _cuda_status()


def cuda_ready() -> bool:
    return CUDA_READY


def pytest_collection_modifyitems(config, items):
    """GPU tests: skipped on a machine without a GPU; on a machine with one they must
    run, so a build or torch that cannot use it fails them (pytest_runtest_setup)."""
    if CUDA_READY or GPU_PRESENT:
        return
    skip = pytest.mark.skip(reason=CUDA_WHY)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and GPU_PRESENT and not CUDA_READY:
        pytest.fail(CUDA_WHY, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With DGTALKER_NO_SKIPS=1 (set by .ci/run) a skipped test fails, except GPU tests
    on a machine without a GPU: CI must not report green for tests it did not run."""
    outcome = yield
    rep = outcome.get_result()
    if (rep.skipped and os.environ.get("DGTALKER_NO_SKIPS", "") not in ("", "0")
            and "gpu" not in item.keywords and not hasattr(rep, "wasxfail")):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped, which DGTALKER_NO_SKIPS=1 does not allow: {reason}"
