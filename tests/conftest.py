import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from dgtalker._engine import engine
        return bool(engine().build_config()["cuda"]) and engine().cuda_device_count() > 0
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_ready():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and a CUDA build of dgtalker")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
