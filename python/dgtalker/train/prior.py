"""Training the Gaussian generative prior on a multi-identity corpus.

The prior is trained as an **auto-decoder**: every (identity, expression) pair of the
corpus owns a latent code z (an embedding, pulled towards N(0, I) by an L2 penalty),
the mapping network turns it into w, and the generator's Gaussians are rendered by
``dgtalker.rasterize`` from the item's own camera and compared with the photo
(L1 + SSIM on the foreground composited over a fixed background, plus an L1 on the
alpha against the foreground mask). The views of one pair share its code, so the
code has to explain the head in 3D. The Gaussian prior on z, behind the mapping
network, is what later lets inversion start from the mean and stay in a smooth
region (docs/training.md).

Runs on CPU or CUDA, on one process or under ``torchrun`` (DDP; NCCL on GPUs, gloo
on the CPU). The global batch of every step is drawn from a seeded RNG and split
across ranks, so one process and N processes see exactly the same samples.
Checkpoints: ``OUT`` (the prior, safetensors; ``dgtalker.load_prior(OUT)``) and
``OUT.state.safetensors`` (codes, optimizer, step, history), both written atomically;
a run resumes from them, and Ctrl-C saves before exiting. Neither is a pickle: the
state's tensors are safetensors entries, everything else JSON in its metadata.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..camera import view_tensors
from ..io import atomic_write_bytes, encode_image
from ..metrics import photometric_loss, psnr

STATE_SUFFIX = ".state.safetensors"
STATE_FORMAT = "dgtalker-prior-train-state"
STATE_VERSION = 2  # 1 was a torch pickle (OUT.state.pt), no longer read
_OLD_STATE_SUFFIX = ".state.pt"


@dataclass
class PriorTrainConfig:
    steps: int = 2000
    batch: int = 8                 # global batch (split across ranks)
    resolution: int = 128          # training image size (square), corpus images are resized
    lr: float = 2e-3               # generator (mapping gets its own lr_mul inside)
    code_lr: float = 1e-2
    code_reg: float = 1e-3         # weight of mean ||z||^2
    ssim_weight: float = 0.2
    mask_weight: float = 0.5
    background: tuple = (1.0, 1.0, 1.0)
    amp: bool = True               # bf16 synthesis on CUDA
    seed: int = 0
    checkpoint_every: int = 200
    preview_every: int = 200
    generator: dict = field(default_factory=dict)  # GeneratorConfig overrides

    def validate(self) -> None:
        for name in ("steps", "batch", "resolution", "checkpoint_every", "preview_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("lr", "code_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not isinstance(self.generator, dict):
            raise ValueError(f"generator must be a dict of GeneratorConfig overrides, got {self.generator!r}")
        from ..models.generator import GeneratorConfig

        GeneratorConfig.from_dict(dict(self.generator))  # bounded: raises ValueError naming the field


def _require_multiview(root) -> None:
    """Refuses a dataset of another kind by its meta.json alone, before loading it (a
    talking clip would otherwise first have its audio and frames checked)."""
    import json as _json

    try:
        kind = _json.loads((Path(root) / "meta.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return  # missing or unreadable: dgtalker.data.load reports it
    if kind != "multiview":
        raise ValueError(f"{root}: prior training needs a multiview corpus (dgtalker synth --multi N), "
                         f"got a {kind!r} dataset")


class CorpusImages:
    """The training items of a multiview corpus, resized once and kept in memory as
    uint8 (a few thousand 128^2 items take a few hundred MB)."""

    def __init__(self, root, resolution: int, progress: bool = True):
        from tqdm import tqdm

        from ..data import load

        _require_multiview(root)
        ds = load(root)
        if ds.kind != "multiview":
            raise ValueError(f"{root}: prior training needs a multiview corpus (dgtalker synth --multi N), "
                             f"got a {ds.kind!r} dataset")
        if not ds.gt or "identity" not in ds.gt or "expression" not in ds.gt:
            raise ValueError(f"{root}: gt.npz must hold 'identity' and 'expression' per item")
        items = list(ds.splits.get("train", range(len(ds))))
        if not items:
            raise ValueError(f"{root}: the split has no training items")
        ident, expr = np.asarray(ds.gt["identity"]), np.asarray(ds.gt["expression"])
        pairs = sorted({(int(ident[i]), int(expr[i])) for i in items})
        self.pair_index = {p: k for k, p in enumerate(pairs)}
        self.code = torch.tensor([self.pair_index[(int(ident[i]), int(expr[i]))] for i in items])
        n, R = len(items), resolution
        self.rgb = torch.empty(n, R, R, 3, dtype=torch.uint8)
        self.fg = torch.empty(n, R, R, dtype=torch.uint8)
        self.K = torch.empty(n, 3, 3)
        self.w2c = torch.empty(n, 4, 4)
        for j, i in enumerate(tqdm(items, desc="loading corpus", disable=not progress, unit="img")):
            fr = ds[i]
            img = torch.from_numpy(np.ascontiguousarray(fr.image)).permute(2, 0, 1)[None].float()
            fg = torch.from_numpy(np.ascontiguousarray(fr.masks[..., 3]))[None, None].float()
            self.rgb[j] = F.interpolate(img, size=(R, R), mode="area")[0].permute(1, 2, 0).round().to(torch.uint8)
            self.fg[j] = (F.interpolate(fg, size=(R, R), mode="area")[0, 0] * 255).round().to(torch.uint8)
            v, k = view_tensors(fr.w2c, fr.K, ds.width, ds.height, R)
            self.w2c[j], self.K[j] = v[0], k[0]
        self.root = str(root)

    def __len__(self) -> int:
        return self.rgb.shape[0]

    @property
    def num_codes(self) -> int:
        return len(self.pair_index)

    def batch(self, idx: torch.Tensor, device) -> dict:
        return {"rgb": self.rgb[idx].to(device).float() / 255, "fg": self.fg[idx].to(device).float() / 255,
                "K": self.K[idx].to(device), "w2c": self.w2c[idx].to(device), "code": self.code[idx].to(device)}


class PriorModel(nn.Module):
    """Generator + per-pair latent codes: the module DDP wraps."""

    def __init__(self, generator, num_codes: int, seed: int = 0):
        super().__init__()
        self.generator = generator
        g = torch.Generator().manual_seed(seed + 1)
        # small initial codes: every pair starts near the mean head
        self.codes = nn.Parameter(0.1 * torch.randn(num_codes, generator.config.z_dim, generator=g))

    def forward(self, code_idx: torch.Tensor, amp: bool):
        z = self.codes[code_idx]
        w = self.generator.map(z)
        use_amp = amp and w.is_cuda
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            raw = self.generator(w)
        return self.generator.decode(raw.float()), z, w


def sample_indices(step: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """The global batch of a step: the same on every rank and in every run."""
    rng = np.random.default_rng([seed, step])
    return torch.from_numpy(rng.choice(n, size=batch, replace=n < batch))


def train_step(model, opt, data: CorpusImages, step: int, cfg: PriorTrainConfig, device, rank: int = 0,
               world: int = 1) -> dict:
    import dgtalker

    if cfg.batch % world:
        raise ValueError(f"batch ({cfg.batch}) must be divisible by the number of processes ({world})")
    local = cfg.batch // world
    idx = sample_indices(step, len(data), cfg.batch, cfg.seed)[rank * local:(rank + 1) * local]
    b = data.batch(idx, device)
    (means, quats, scales, opac, colors), z, w = model(b["code"], cfg.amp)
    bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
    R = cfg.resolution
    # checked: on CUDA this waits for the forward's status, so a forward that ran out of
    # intersection room is redone before any gradient exists, and a step is never taken
    # from an image that missed Gaussians (the CPU backend always works this way)
    image, alpha, _ = dgtalker.rasterize(means, quats, scales, opac, colors, b["w2c"], b["K"], R, R,
                                         background=bg, checked=True)
    target = b["rgb"] * b["fg"][..., None] + bg * (1 - b["fg"][..., None])
    photo = photometric_loss(image, target, ssim_weight=cfg.ssim_weight)
    mask = (alpha - b["fg"]).abs().mean()
    reg = (z ** 2).sum(-1).mean()
    loss = photo + cfg.mask_weight * mask + cfg.code_reg * reg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    gen = model.module.generator if hasattr(model, "module") else model.generator
    w_mean = w.detach().mean(0, keepdim=True)
    if world > 1:  # the global batch's mean, so w_avg does not depend on the process count
        import torch.distributed as dist
        dist.all_reduce(w_mean)
        w_mean /= world
    gen.update_w_avg(w_mean)
    with torch.no_grad():
        p = psnr(image, target)
    return {"loss": float(loss.detach()), "photo": float(photo.detach()), "mask": float(mask.detach()),
            "psnr": float(p)}


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def save_training(out: Path, model: PriorModel, opt, step: int, cfg: PriorTrainConfig, data: CorpusImages,
                  history: list) -> None:
    """Training state first, then the prior: a crash between the two leaves a state
    that is ahead of the prior, and resuming uses the state.

    The state file holds the model's tensors as ``model/<name>``, the optimizer's
    per-parameter tensors as ``optimizer/<index>/<key>``, and in the metadata entry
    ``state`` a JSON object with the step, the run's config, the corpus, its
    (identity, expression) pairs, the loss history, the optimizer's param groups and
    any non-tensor per-parameter values."""
    from ..checkpoint import save_prior, write_checkpoint

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    scalars: dict = {}
    for idx, st in osd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer/{idx}/{key}"] = v
            else:
                scalars.setdefault(str(idx), {})[key] = v
    state = {"step": step, "config": asdict(cfg), "corpus": data.root, "pairs": [list(p) for p in data.pair_index],
             "history": history[-10000:], "optimizer": {"param_groups": osd["param_groups"], "scalars": scalars}}
    write_checkpoint(_state_path(out), tensors, format=STATE_FORMAT, version=STATE_VERSION,
                     meta={"state": json.dumps(state)})
    save_prior(out, model.generator, extra={"trained_steps": step, "corpus": data.root,
                                             "train_config": asdict(cfg)})


def load_training_state(out: Path) -> dict | None:
    """The training state saved next to ``out`` (None when there is none) as a dict:
    ``step``, ``config``, ``corpus``, ``pairs``, ``history``, ``model`` (a state dict of
    ``PriorModel``) and ``optimizer`` (a state dict for ``torch.optim.Adam``). A bad
    file raises ``CheckpointError`` (a ValueError) naming it."""
    from ..checkpoint import CheckpointError, read_checkpoint

    path = _state_path(out)
    if not path.exists():
        old = out.with_name(out.name + _OLD_STATE_SUFFIX)
        if old.exists():
            raise CheckpointError(f"{old} is a training state of an older dgtalker (a pickle, which is not loaded); "
                                  f"train to a new --out, or start from the prior {out} with a fresh run")
        if out.exists():
            raise FileExistsError(f"{out} exists but has no training state ({path.name}); choose another --out "
                                  f"or remove it to train from scratch")
        return None
    tensors, meta, _ = read_checkpoint(path, format=STATE_FORMAT, max_version=STATE_VERSION)
    try:
        state = json.loads(meta["state"])
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        step, config, pairs, history = state["step"], state["config"], state["pairs"], state["history"]
        groups, scalars = state["optimizer"]["param_groups"], state["optimizer"]["scalars"]
        if not (isinstance(step, int) and step >= 0 and isinstance(config, dict) and isinstance(history, list)
                and isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)
                and isinstance(groups, list) and all(isinstance(g, dict) for g in groups)
                and isinstance(scalars, dict)):
            raise ValueError("fields of the wrong type")
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable training state metadata ({type(exc).__name__}: {exc})") from None
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optimizer/"):
            parts = k.split("/")
            if len(parts) != 3 or not parts[1].isdigit():
                raise CheckpointError(f"{path}: unexpected tensor {k!r}")
            opt_state.setdefault(int(parts[1]), {})[parts[2]] = v
        elif not k.startswith("model/"):
            raise CheckpointError(f"{path}: unexpected tensor {k!r}")
    for idx, st in scalars.items():
        if not (isinstance(idx, str) and idx.isdigit() and isinstance(st, dict)):
            raise CheckpointError(f"{path}: unreadable optimizer values for parameter {idx!r}")
        opt_state.setdefault(int(idx), {}).update(st)
    # JSON has no tuples; Adam's betas (and any other pair) were tuples
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()} for g in groups]
    return {"version": STATE_VERSION, "step": step, "config": config, "corpus": state.get("corpus"),
            "pairs": pairs, "history": history, "model": model,
            "optimizer": {"state": opt_state, "param_groups": groups}}


def save_preview(path: Path, model: PriorModel, data: CorpusImages, cfg: PriorTrainConfig, device) -> None:
    """Targets (top) and renders (bottom) of the first few training items."""
    import dgtalker

    n = min(4, len(data))
    with torch.no_grad():
        b = data.batch(torch.arange(n), device)
        (means, quats, scales, opac, colors), _, _ = model(b["code"], cfg.amp)
        bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
        R = cfg.resolution
        image, _, _ = dgtalker.rasterize(means, quats, scales, opac, colors, b["w2c"], b["K"], R, R, background=bg)
        target = b["rgb"] * b["fg"][..., None] + bg * (1 - b["fg"][..., None])
    grid = torch.cat([torch.cat(list(target), 1), torch.cat(list(image.clamp(0, 1)), 1)], 0)
    atomic_write_bytes(path, encode_image((grid * 255).round().to(torch.uint8).cpu().numpy(), "png"))


def _dist_info():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pretrain_prior(data_dir, out, cfg: PriorTrainConfig, *, device=None, progress: bool = True,
                   log=print) -> dict:
    """Trains (or resumes training of) a prior; returns the last step's metrics.

    Under ``torchrun`` call ``torch.distributed.init_process_group`` first (the
    command does); every rank then runs this with the same arguments.
    """
    from tqdm import tqdm

    from ..checkpoint import CheckpointError
    from ..models.generator import Generator, GeneratorConfig

    cfg.validate()
    out = Path(out)
    rank, world = _dist_info()
    if device is None:
        device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    state = load_training_state(out)
    if state is not None:
        try:
            saved = PriorTrainConfig(**{**state["config"], "background": tuple(state["config"]["background"])})
            saved.validate()
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{_state_path(out)}: invalid training config ({exc})") from None
        # the run's shape comes from the checkpoint; only the length may change
        cfg = PriorTrainConfig(**{**asdict(saved), "steps": cfg.steps})
    data = CorpusImages(data_dir, cfg.resolution, progress=progress and rank == 0)
    if state is not None and [tuple(p) for p in state["pairs"]] != list(data.pair_index):
        raise ValueError(f"{out}: it was trained on a corpus with other identities/expressions than {data_dir}")
    generator = Generator(GeneratorConfig.from_dict(dict(cfg.generator)), seed=cfg.seed)
    model = PriorModel(generator, data.num_codes, seed=cfg.seed)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{_state_path(out)} does not match the model it describes: {exc}") from None
    model.to(device)
    gen_params = [p for n, p in model.named_parameters() if n != "codes"]
    opt = torch.optim.Adam([{"params": gen_params, "lr": cfg.lr},
                            {"params": [model.codes], "lr": cfg.code_lr}], betas=(0.9, 0.99))
    if state is not None:
        try:
            opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{_state_path(out)}: optimizer state does not match the model: {exc}") from None
    start = state["step"] if state is not None else 0
    history = state["history"] if state is not None else []
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = model
    if rank == 0 and start:
        log(f"resuming {out} at step {start} of {cfg.steps}")
    metrics: dict = {}
    step = start
    bar = tqdm(total=cfg.steps, initial=start, desc="prior", disable=not progress or rank != 0, unit="step")
    try:
        while step < cfg.steps:
            metrics = train_step(ddp, opt, data, step, cfg, device, rank, world)
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(f"loss became {metrics['loss']} at step {step}; lower --lr")
            step += 1
            history.append({"step": step, **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", psnr=f"{metrics['psnr']:.2f}")
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_training(out, model, opt, step, cfg, data, history)
            if rank == 0 and step % cfg.preview_every == 0:
                save_preview(out.with_name(out.name + ".preview.png"), model, data, cfg, device)
    except KeyboardInterrupt:
        if rank == 0:
            save_training(out, model, opt, step, cfg, data, history)
            log(f"\ninterrupted: saved step {step} to {out}; run the same command again to resume")
        raise
    finally:
        bar.close()
    return {"step": step, **metrics}


def local_device() -> torch.device:
    """The device of this process: LOCAL_RANK's GPU under torchrun, else cuda:0 or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
