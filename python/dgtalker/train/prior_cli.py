"""`dgtalker pretrain-prior`: train the Gaussian generative prior on a multi-identity
corpus (`dgtalker synth --multi N`). Resumes when OUT exists; Ctrl-C saves first.

Several GPUs of one host: `torchrun --nproc_per_node=2 -m dgtalker pretrain-prior ...`
(same global --batch, split across the processes)."""
from __future__ import annotations

import json
import os


def add_arguments(p) -> None:
    p.description = __doc__
    p.add_argument("--data", required=True, help="multi-identity corpus directory (dgtalker synth --multi N)")
    p.add_argument("--out", required=True,
                   help="prior checkpoint to write (safetensors); OUT.state.safetensors holds the training state")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps (default 2000)")
    p.add_argument("--batch", type=int, default=8, help="global batch of images per step (default 8)")
    p.add_argument("--res", type=int, default=128, help="training image size in pixels (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="generator learning rate (default 2e-3)")
    p.add_argument("--code-lr", type=float, default=1e-2, help="latent code learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--preview-every", type=int, default=200, help="steps between OUT.preview.png updates")
    p.add_argument("--generator", default="{}",
                   help='GeneratorConfig overrides as JSON, e.g. \'{"resolution": 64, "gaussians_per_texel": 1}\'')
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: CUDA when available)")
    p.add_argument("--no-amp", action="store_true", help="float32 synthesis on CUDA (default: bf16 autocast)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    import torch
    import torch.distributed as dist

    from .prior import PriorTrainConfig, local_device, pretrain_prior

    try:
        gen_cfg = json.loads(args.generator)
        if not isinstance(gen_cfg, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise SystemExit(f"dgtalker pretrain-prior: --generator must be a JSON object: {exc}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dev = local_device()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    device = torch.device(args.device) if args.device else local_device()
    cfg = PriorTrainConfig(steps=args.steps, batch=args.batch, resolution=args.res, lr=args.lr,
                           code_lr=args.code_lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
                           preview_every=args.preview_every, amp=not args.no_amp, generator=gen_cfg)
    try:
        result = pretrain_prior(args.data, args.out, cfg, device=device, progress=not args.quiet)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise SystemExit(f"dgtalker pretrain-prior: {exc}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"step {result['step']}: loss {result.get('loss', float('nan')):.4f}, "
              f"psnr {result.get('psnr', float('nan')):.2f} dB -> {args.out}")
    return 0
