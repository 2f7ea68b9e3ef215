"""The training state of a talker run: optimiser, save, load and resume (no pickle).

``OUT.state.safetensors`` holds the talker in float32, the optimiser, the step, the
history, the options and what the run was trained on; it is written before ``OUT``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..io import atomic_write_json
from .config import IdentityTrainConfig

STATE_SUFFIX = ".state.safetensors"
STATE_FORMAT = "dgtalker-talker-training"
STATE_VERSION = 1


def make_optimizer(talker, cfg: IdentityTrainConfig):
    groups = talker.parameter_groups()
    lrs = {"synthesis": cfg.lr_synthesis, "output_bias": cfg.lr_output_bias, "w_can": cfg.lr_w,
           "blendshapes": cfg.lr_blendshapes, "encoder": cfg.lr_encoder, "causal_encoder": cfg.lr_encoder,
           "residual": cfg.lr_residual, "eyelid": cfg.lr_eyelid, "lip_layer": cfg.lr_lip_layer,
           "mouth": cfg.lr_mouth}
    # a part with no parameters, or a rate of 0 (a layer switched off), gets no group: it stays as it is
    return torch.optim.Adam([{"params": groups[k], "lr": lrs[k], "name": k} for k in lrs if groups[k] and lrs[k] > 0],
                            betas=(0.9, 0.99))


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def save_training(out: Path, talker, opt, step: int, cfg: IdentityTrainConfig, history: list, elapsed: float,
                  data=None) -> None:
    """The training state (no pickle), then the talker."""
    from ..checkpoint import write_checkpoint
    from ..talker import save_talker

    tensors = {f"talker.{k}": v for k, v in talker.state_dict().items()}
    if data is not None:
        tensors["sampler.upper_error"] = data.upper_error
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(v).reshape(-1) if name == "step" else v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"step": str(step), "config": json.dumps(asdict(cfg), sort_keys=True),
            "param_groups": json.dumps(groups), "history": json.dumps(history[-5000:]),
            "elapsed": repr(float(elapsed)), "talker_config": json.dumps(talker.config.to_dict()),
            "residual_frames": str(talker.residual_track.shape[0]), "source": json.dumps(talker.source)}
    write_checkpoint(_state_path(out), tensors, format=STATE_FORMAT, version=STATE_VERSION, meta=meta)
    save_talker(out, talker, half=cfg.half)
    atomic_write_json(out.with_name(out.name + ".history.json"), history)


def load_training_state(out: Path):
    """(tensors, meta) of a run's state, or None if there is none."""
    from ..checkpoint import read_checkpoint

    path = _state_path(out)
    if not path.exists():
        if out.exists():
            raise FileExistsError(f"{out} exists but has no training state ({path.name}); choose another --out "
                                  "or remove it to train from scratch")
        return None
    tensors, meta, _ = read_checkpoint(path, format=STATE_FORMAT, max_version=STATE_VERSION)
    return tensors, meta


def restore_optimizer(opt, tensors: dict, meta: dict) -> None:
    groups = json.loads(meta["param_groups"])
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.reshape(()) if name == "step" else v
    opt.load_state_dict({"state": state, "param_groups": groups})


# what a resume must find unchanged (beyond the budget: steps and minutes)
BUDGET_OPTIONS = ("steps", "minutes")
# what even a forced resume cannot change: the saved tensors' shapes depend on them
# options fixed when the talker is made (its TalkerConfig and tensor shapes): no resume can change them
LAYOUT_OPTIONS = ("k_exp", "k_lip", "mouth_interior", "frontend", "encoder_context", "normalised_mel")
# options that only change how the finished talker reads speech, not what training does: a
# resume takes this run's (``identity.train_identity`` sets them on the resumed talker)
READING_OPTIONS = ("level_window", "motion_window")


def dataset_provenance(dataset) -> dict:
    """What a run records of the dataset it trains on (and a resume compares): its
    resolved path, frame count, split sizes, a hash of the splits and content hashes
    (``Dataset.fingerprint``; ``Dataset.clip_fingerprint``, which a re-encoded copy keeps)."""
    import hashlib

    splits = {k: [int(i) for i in v] for k, v in dataset.splits.items()}
    return {"dataset": str(Path(dataset.root).resolve()), "num_frames": len(dataset),
            "train_frames": len(splits["train"]), "heldout_frames": len(splits["heldout"]),
            "splits_sha256": hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest(),
            "dataset_sha256": dataset.fingerprint(), "clip_sha256": dataset.clip_fingerprint()}


def resume_changes(meta: dict, cfg: IdentityTrainConfig, provenance: dict) -> list[str]:
    """How this run's options and dataset differ from a saved run's (``meta`` of its
    state), one phrase each; empty when it may resume as it is. Raises ValueError for a
    change no resume can take (blendshape counts, frame count)."""
    from ..talker import TalkerConfig

    saved = json.loads(meta["config"])
    now = asdict(cfg)
    # how it reads speech is what the saved talker has (one saved before an option has its default)
    made = json.loads(meta.get("talker_config", "{}"))
    layout = {k: (made.get(k, TalkerConfig.__dataclass_fields__[k].default), v) for k, v in cfg.speech_reading().items()
              if k not in READING_OPTIONS}
    layout |= {k: (saved[k], now[k]) for k in LAYOUT_OPTIONS if k in saved and k not in layout}
    shape = [f"{k} {a!r} -> {b!r}" for k, (a, b) in layout.items() if a != b]
    if int(meta["residual_frames"]) != provenance["num_frames"]:
        shape.append(f"frame count {meta['residual_frames']} -> {provenance['num_frames']}")
    if shape:
        raise ValueError(f"cannot resume the saved run with another talker layout ({'; '.join(shape)}); "
                         "run it with the options it was trained with, or choose another --out")
    changes = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items()
               if k not in BUDGET_OPTIONS + READING_OPTIONS and saved.get(k) != v]
    source = json.loads(meta.get("source", "{}"))
    if source.get("dataset") is not None and Path(source["dataset"]).resolve() != Path(provenance["dataset"]):
        changes.append(f"dataset {source['dataset']} -> {provenance['dataset']}")
    for key, what in (("train_frames", "train frames"), ("heldout_frames", "held-out frames"),
                      ("splits_sha256", "splits"), ("dataset_sha256", "dataset content")):
        if key in source and source[key] != provenance[key]:
            changes.append(f"{what} changed" if key.endswith("sha256") else f"{what} {source[key]} -> {provenance[key]}")
    return changes
