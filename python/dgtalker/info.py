"""`dgtalker info`: how the engine was built and what runs here."""
from __future__ import annotations

import json


def build_info() -> dict:
    """Build configuration of the compiled engine plus what this process can use."""
    from dgtalker._engine import engine

    C = engine()
    info = dict(C.build_config())
    info["cuda_devices"] = C.cuda_device_count()
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda_available"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    return info


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args) -> int:
    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:22s} {v}")
    return 0
