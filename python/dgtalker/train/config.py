"""The options of identity training (``dgtalker train``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields


# `dgtalker train --novel-views`: the rates that favour cameras the clip never shows over
# the clip's own (chosen on the synthetic clip's novel views; a real clip scored 1.2 dB
# lower on the head at its own cameras with them, docs/benchmarks.md runs I)
NOVEL_VIEWS = {"lr_output_bias": 2e-4, "random_background": 0.5}


@dataclass
class IdentityTrainConfig:
    steps: int = 6000
    minutes: float = 0.0              # wall-clock budget (0: none); stops at whichever comes first
    resolution: int = 512             # training image size (square crops of the clip are resized)
    pairs: int = 2                    # frame pairs per step (3 latents and 4 images each)
    k_exp: int = 8
    k_lip: int = 8
    cross_view: bool = True
    lr_synthesis: float = 5e-4
    lr_output_bias: float = 1e-3      # slower than the network: the free per-texel layer (NOVEL_VIEWS: slower still)
    lr_w: float = 1e-3
    lr_blendshapes: float = 3e-3
    lr_encoder: float = 5e-4
    lr_residual: float = 5e-2          # per-frame codes: each is drawn only every few hundred steps
    lr_eyelid: float = 1e-2           # the eyelid layer (raw-map offsets on the eye texels)
    lr_lip_layer: float = 1e-2        # the lip layer (raw-map offsets on the mouth texels; 0: off)
    lr_mouth: float = 1e-2            # the mouth interior's colours, opacities, shift and jaw
    mouth_interior: bool = False      # teeth, tongue and cavity on a jaw that follows the tracked opening
    open_share: float = 0.0           # share of lip frames drawn among the clip's wide-open-mouth frames
    blink_share: float = 0.1          # share of expression frames drawn among the clip's closed-eye frames
    ssim_weight: float = 0.2
    grad_weight: float = 0.0          # weight of an L1 on image gradients (metrics.gradient_l1) beside L1 + SSIM
    mask_weight: float = 0.5
    mouth_weight: float = 1.0         # extra L1 inside a square around the tracked lips (its mean, like the frame's)
    cross_weight: float = 1.0
    encoder_context: int = 6          # video frames before and after a frame the audio encoder mixes
    encoder_members: int = 4          # networks in the audio encoder, each trained on the lip target alone; it
                                      # outputs their mean (AudioEncoder members; docs/benchmarks.md runs N)
    frontend: bool = True             # the encoders read the shipped speech front end's channels beside the log-mel
    normalised_mel: bool = True       # ... and that log-mel normalised as the front end reads it
                                      # (TalkerConfig.normalised_mel; without the front end: no effect)
    level_window: float = 4.0         # seconds: the trained talker reads speech passage by passage at its
                                      # own level (TalkerConfig.level_window; training reads the clip as
                                      # spoken; 0: the whole clip's level only; docs/benchmarks.md runs P)
    motion_window: float = 4.0        # seconds: the trained talker's mouth opening moves as much as the person's
                                      # over each passage this long (TalkerConfig.motion_window; needs the lip
                                      # target's tracked mouth; 0: off)
    lip_target: float = 0.5           # the first two lip coefficients against the tracked mouth opening and width
    lip_batch: int = 64               # training frames per step of that target (the encoder alone, no rendering)
    lips_from_picture: bool = False   # the pinned lip coefficients also learn from the photometric losses
    lip_concordance: float = 0.0      # weight of 1 - concordance (Lin's CCC) of that batch: counters shrinkage
    encoder_noise: float = 0.0        # Gaussian noise on the audio encoder's normalised input while it trains (std)
    encoder_steps: int = 2500         # steps the audio encoders train (then kept while the rest trains on; 0: all):
                                      # they specialise to the clip's voice as they train (docs/benchmarks.md runs K)
    adapt_frontend: int = 0           # steps fitting the front end's output layers to the tracked mouth (0: as shipped)
    lip_holdback: float = 0.1         # share of training frames (2 s blocks) the lip target leaves out, to measure
                                      # and undo the encoder's shrinkage on unheard audio (0: no lip calibration)
    leak_weight: float = 0.05         # each branch's change on the wrong face region over its change on its own
    residual_reg: float = 1e-3        # mean ||residual||^2
    residual_smooth: float = 1e-3     # mean ||residual_t - residual_t+1||^2 (blinks last ~4 frames)
    coef_smooth: float = 1e-2         # mean ||c_t - c_t+1||^2 of the speech-driven coefficients
    coef_reg: float = 1e-4            # mean ||c||^2 (keeps coefficients O(1); the scales carry the size)
    locality: float = 1.0             # weight of the pivotal-tuning locality regulariser
    locality_every: int = 4
    distill_weight: float = 1.0       # causal encoder -> main encoder
    focus: float = 0.0                # share of expression frames drawn by their upper-face error (0: uniform)
    aniso_reg: float = 0.0            # penalty on needles (largest / middle axis above 4, or above 3 cm)
    side_silhouette: float = 0.0      # weight of the prior's silhouettes at side views the clip does not show
    side_resolution: int = 128        # image size of those side views
    random_background: float = 0.2    # share of steps composited over a random colour instead of the plate
    invert_steps: int = 150
    invert_resolution: int = 256
    invert_views: int = 16
    amp: bool = True                  # bf16 synthesis on CUDA
    seed: int = 0
    checkpoint_every: int = 500
    preview_every: int = 500
    half: bool = False                # store OUT's generator in float16 (the state stays float32)
    validate_every: int = 0           # steps between held-out checks (PSNR from audio alone; 0: off)
    validate_frames: int = 8          # held-out frames used by that check

    def speech_reading(self) -> dict:
        """How the talker this run makes reads speech (its ``TalkerConfig`` fields): the
        log-mel normalised as the front end reads it, and the level window; neither
        without the front end."""
        return {"normalised_mel": bool(self.normalised_mel and self.frontend),
                "level_window": self.level_window if self.frontend else 0.0}

    def validate(self) -> None:
        for name in ("steps", "resolution", "pairs", "checkpoint_every", "preview_every", "locality_every",
                     "side_resolution", "lip_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.encoder_context, int) or isinstance(self.encoder_context, bool) \
                or not 0 <= self.encoder_context <= 16:
            raise ValueError(f"encoder_context must be an int in [0, 16], got {self.encoder_context!r}")
        if not isinstance(self.encoder_members, int) or isinstance(self.encoder_members, bool) \
                or not 1 <= self.encoder_members <= 16:
            raise ValueError(f"encoder_members must be an int in [1, 16], got {self.encoder_members!r}")
        for name in ("k_exp", "k_lip", "invert_steps", "invert_views", "validate_every", "validate_frames",
                     "adapt_frontend", "encoder_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if self.resolution > 2048 or self.invert_resolution > 2048 or self.invert_resolution < 8:
            raise ValueError("resolution and invert_resolution must be in [8, 2048]")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and (not math.isfinite(v) or v < 0):
                raise ValueError(f"{f.name} must be a finite number >= 0, got {v!r}")
        if self.mouth_interior and self.lip_target <= 0:
            raise ValueError("mouth_interior needs lip_target > 0: its jaw follows the first lip coefficient, "
                             "which the tracked mouth opening pins")
        if self.motion_window > 60:  # checked now: the talker takes it only when training saves
            raise ValueError(f"motion_window must be seconds in [0, 60], got {self.motion_window!r}")
        if self.lip_holdback > 0.5:
            raise ValueError(f"lip_holdback is a share of the training frames, in [0, 0.5]; got {self.lip_holdback!r}")
        if self.ssim_weight > 1:
            raise ValueError(f"ssim_weight is SSIM's share of the image loss, in [0, 1]; got {self.ssim_weight!r}")
        for name in ("focus", "random_background", "blink_share", "open_share"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} is a share of steps or frames, in [0, 1]; got {getattr(self, name)!r}")
