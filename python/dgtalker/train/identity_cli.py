"""``dgtalker train``: a talking clip -> a talker checkpoint."""
from __future__ import annotations

import argparse
import math
import sys

from ..cli import positive_int
from .config import NOVEL_VIEWS, IdentityTrainConfig

EPILOG = """\
examples:
  dgtalker synth --identity 7 --seconds 60 --out data/id007
  dgtalker train data/id007 --out id007.safetensors --minutes 10          # one GPU
  dgtalker train data/id007 --out id007.safetensors --steps 20 --res 128  # a quick look on a CPU

The run writes OUT (the talker; dgtalker.load_talker(OUT)), OUT.state.safetensors
(everything needed to resume) and OUT.preview.png (training frames, their renders,
and the cross latent). Running the same command again resumes; Ctrl-C saves first. A resume with other
options or another dataset is refused unless --force-resume is given. The train split
(splits.json) must not be empty: the talker trains on those frames only and records
which they were.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = IdentityTrainConfig()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("data", metavar="DATA", help="a talking-clip dataset directory (dgtalker synth or preprocess)")
    p.add_argument("--out", required=True, metavar="OUT", help="talker checkpoint to write (.safetensors)")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"training steps (default {d.steps})")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="wall-clock budget in minutes, inversion included; stops at --steps or here, "
                        "whichever comes first (default: none)")
    p.add_argument("--res", type=positive_int, default=d.resolution, dest="resolution",
                   help=f"training image size in pixels (default {d.resolution}; frames are resized)")
    p.add_argument("--pairs", type=positive_int, default=d.pairs,
                   help=f"frame pairs per step, 4 rendered images each (default {d.pairs})")
    p.add_argument("--k-exp", type=int, default=d.k_exp, help=f"expression (upper face) blendshapes (default {d.k_exp})")
    p.add_argument("--k-lip", type=int, default=d.k_lip, help=f"lip blendshapes (default {d.k_lip})")
    p.add_argument("--no-cross-view", action="store_true",
                   help="train without masked cross-view supervision (the ablation)")
    p.add_argument("--leak", type=float, default=d.leak_weight,
                   help="weight of the disentanglement loss on the Gaussians: each branch's change on the face "
                        "region it must not move (expression: the lower face; lips: the upper face) over its change "
                        f"on its own region (0: off; default {d.leak_weight})")
    p.add_argument("--no-frontend", action="store_true",
                   help="the audio encoders read the log-mel alone, not the shipped speech front end "
                        "(dgtalker.lipsync's network, speaker-independent) beside it")
    p.add_argument("--raw-mel", action="store_true",
                   help="the audio encoders read the log-mel as recorded; by default they read it with each band's "
                        "speech mean removed, as the front end does, so a voice recorded louder, quieter or through "
                        "another microphone than the clip reaches them as the clip's did (docs/talker.md)")
    p.add_argument("--encoder-context", type=int, default=d.encoder_context, metavar="N",
                   help="video frames before and after each frame whose audio the encoder mixes (coarticulation; "
                        f"the streaming encoder keeps its look-ahead bound; default {d.encoder_context})")
    p.add_argument("--lip-target", type=float, default=d.lip_target, metavar="W",
                   help="weight pinning the first two lip coefficients to the tracked mouth opening and width of "
                        f"each frame (its landmarks; 0 = photometric lips only; default {d.lip_target})")
    p.add_argument("--lip-batch", type=positive_int, default=d.lip_batch, metavar="N",
                   help=f"training frames per step of that target, through the audio encoder alone (default {d.lip_batch})")
    p.add_argument("--ssim-weight", type=float, default=d.ssim_weight, metavar="W",
                   help=f"share of 1 - SSIM in the image loss, the rest L1 (default {d.ssim_weight})")
    p.add_argument("--grad-weight", type=float, default=d.grad_weight, metavar="W",
                   help="weight of an L1 on the image's gradients beside it: asks for the clip's edges and fine "
                        f"texture (default {d.grad_weight})")
    p.add_argument("--mouth-weight", type=float, default=d.mouth_weight, metavar="W",
                   help="weight of an extra L1 term inside a square around each frame's tracked lips, whose "
                        f"pixels are too few for the frame-wide loss to see (default {d.mouth_weight})")
    p.add_argument("--lip-concordance", type=float, default=d.lip_concordance, metavar="W",
                   help="weight of 1 - concordance of that batch's pinned coefficients with the tracked mouth: asks "
                        "for the tracked spread too, where squared error alone shrinks unheard audio's mouth "
                        f"towards the mean (default {d.lip_concordance})")
    p.add_argument("--encoder-noise", type=float, default=d.encoder_noise, metavar="STD",
                   help="Gaussian noise, in standard deviations of each input channel, added to the audio encoder's "
                        "input while it trains, so it leans less on the training clip's exact sound (in "
                        "benchmarks/lip_probe.py on two real clips its effect on held-out lips was within the "
                        "spread of seeds; not yet measured in a trained talker: docs/benchmarks.md, runs J; "
                        f"default {d.encoder_noise})")
    p.add_argument("--level-window", type=float, default=d.level_window, metavar="SECONDS",
                   help="the trained talker reads the speech that drives it passage by passage (this long) at "
                        "that speech's own level, within 12 dB: a softly spoken stretch otherwise reads as a "
                        "half-shut mouth (on a real clip whose held-out speech is 3.7 dB softer, inner-lip "
                        "correlation 0.770 -> 0.785, open and closed mouths 3.3 -> 1.7 dB apart: "
                        "docs/benchmarks.md, runs P). Training reads its clip as spoken. 0 = the whole clip's "
                        f"level only (default {d.level_window})")
    p.add_argument("--motion-window", type=float, default=d.motion_window, metavar="SECONDS",
                   help="over each passage this long, the trained talker's mouth opening moves as much as the "
                        "person's did in the clip (the tracked opening's typical spread there): an encoder's "
                        "prediction of unfamiliar speech (softer, another voice or microphone) moves less, or "
                        "more; the passage's timing and mean opening stay. Needs the lip target. 0 = off "
                        f"(default {d.motion_window})")
    p.add_argument("--encoder-members", type=int, default=d.encoder_members, metavar="K",
                   help="an ensemble of K audio encoders from different initial weights, each trained on the "
                        "tracked mouth on its own; the talker uses their mean, which follows unheard speech better "
                        "than one encoder (on a real clip, held-out inner-lip correlation 0.77 with 4 against 0.66 "
                        f"with 1: docs/benchmarks.md, runs N; default {d.encoder_members})")
    p.add_argument("--encoder-steps", type=int, default=d.encoder_steps, metavar="N",
                   help="train the audio encoders for the first N steps only, then keep them while the rest trains "
                        "on: they specialise to the clip's one voice as they train, and on a real clip the lips "
                        "from a run's step-2,500 encoders beat those of its end on held-out and unseen speech "
                        f"(docs/benchmarks.md, runs K; 0 = all steps; default {d.encoder_steps})")
    p.add_argument("--lip-holdback", type=float, default=d.lip_holdback, metavar="SHARE",
                   help="share of the training frames (in 2 s blocks) whose tracked mouth the lip target leaves out: "
                        "the encoder's spread there, on audio it never learned, sets the gain that widens the "
                        "predicted mouth back to the tracked range (squared error shrinks it towards the mean); "
                        f"0 = no calibration (default {d.lip_holdback})")
    p.add_argument("--open-share", type=float, default=d.open_share, metavar="SHARE",
                   help="share (0-1) of lip frames drawn among the clip's wide-open-mouth frames (tracked opening a "
                        f"standard deviation above its mean; about a sixth of them; default {d.open_share})")
    p.add_argument("--adapt-frontend", type=int, default=d.adapt_frontend, metavar="STEPS",
                   help="before training, fit the speech front end's output layers to the person's tracked mouth for "
                        "up to STEPS steps, keeping the step that predicts the held-back blocks (--lip-holdback) best; "
                        f"0 = the shipped, speaker-independent front end (default {d.adapt_frontend})")
    p.add_argument("--mouth-interior", action="store_true",
                   help="add teeth, tongue and a dark cavity behind the lips, placed from the clip's tracked mouth "
                        "and on a jaw that opens with the tracked mouth opening, and part the face at the lips as the "
                        "mouth opens so that they show (needs --lip-target > 0; on a real clip it has shown no teeth "
                        "yet: off by default, docs/benchmarks.md runs N)")
    p.add_argument("--lips-from-picture", action="store_true",
                   help="let the photometric losses train the pinned lip coefficients too (by default only the "
                        "tracked mouth does, which generalises better to unheard audio)")
    p.add_argument("--locality", type=float, default=d.locality,
                   help=f"weight of the locality regulariser that keeps the tuned synthesis close to the prior's "
                        f"for other heads (more: better novel views, less: closer fit; default {d.locality})")
    p.add_argument("--novel-views", action="store_true",
                   help="favour cameras the clip never shows over its own: a slower output bias and more random "
                        f"backgrounds ({', '.join(f'{k} {v}' for k, v in NOVEL_VIEWS.items())}); on the synthetic "
                        "clip +0.3 dB at 30 degrees and +0.9 at 45, on a real clip 1.2 dB less of head at its own "
                        "cameras")
    p.add_argument("--lr-output-bias", type=float, default=None,
                   help=f"learning rate of the per-texel output bias, the person's free detail layer "
                        f"(default {d.lr_output_bias}; {NOVEL_VIEWS['lr_output_bias']} with --novel-views)")
    p.add_argument("--lr-residual", type=float, default=d.lr_residual,
                   help=f"learning rate of the per-frame expression residual codes; each code is only updated "
                        f"when its frame is drawn, so it needs a large one (default {d.lr_residual})")
    p.add_argument("--lr-lip-layer", type=float, default=d.lr_lip_layer,
                   help=f"learning rate of the lip layer, raw-map offsets on the mouth that follow the tracked "
                        f"opening and width (0: off, lips from the latent blendshapes alone; default {d.lr_lip_layer})")
    p.add_argument("--focus", type=float, default=d.focus,
                   help="share (0-1) of expression frames drawn in proportion to their last upper-face error, so "
                        f"rare events such as blinks are seen often (default {d.focus}: uniform)")
    p.add_argument("--blink-share", type=float, default=d.blink_share,
                   help="share (0-1) of expression frames drawn among the clip's closed-eye frames (from its "
                        f"eyelid landmarks), so the eyelid layer sees enough blinks (default {d.blink_share})")
    p.add_argument("--aniso", type=float, default=d.aniso_reg,
                   help="weight of the penalty on needle-like Gaussians (largest/middle axis > 4), which "
                        f"the training views cannot see but side views do (default {d.aniso_reg})")
    p.add_argument("--side-silhouette", type=float, default=d.side_silhouette, metavar="W",
                   help="weight of the prior's outlines at side views 20-45 degrees beyond the clip's cameras "
                        f"(the tuned head's outline drifts there; default {d.side_silhouette})")
    p.add_argument("--random-background", type=float, default=None, metavar="SHARE",
                   help="share (0-1) of steps whose frames are composited over a random colour (by their "
                        "foreground masks) instead of the background plate, so no Gaussian can pass for "
                        f"background at the silhouette (default {d.random_background}; "
                        f"{NOVEL_VIEWS['random_background']} with --novel-views)")
    p.add_argument("--prior", metavar="PATH", help="prior checkpoint to start from (default: the shipped prior)")
    p.add_argument("--half", action="store_true", help="store OUT's weights in float16 (about half the size)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the frame sampling and initial weights")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--preview-every", type=positive_int, default=d.preview_every, help="steps between preview images")
    p.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--validate-every", type=int, default=0, metavar="STEPS",
                   help="every STEPS steps, log the PSNR of a few held-out frames rendered from audio alone "
                        "(in OUT.state.safetensors' history; default: off)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume OUT even if its options or its dataset (path, frame count, splits, content) differ "
                        "from this run's; the new options are used from the saved step on (the blendshape counts "
                        "cannot change) and the talker's source records the change. Without it such a resume is "
                        "refused")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def train_config(args) -> IdentityTrainConfig:
    """The training options of parsed ``dgtalker train`` arguments."""
    # an explicit rate wins over the --novel-views preset, which wins over the default
    preset = NOVEL_VIEWS if args.novel_views else {}
    rates = {k: getattr(args, k) if getattr(args, k) is not None else preset.get(k, getattr(IdentityTrainConfig, k))
             for k in NOVEL_VIEWS}
    return IdentityTrainConfig(steps=args.steps, minutes=args.minutes, resolution=args.resolution, pairs=args.pairs,
                               k_exp=args.k_exp, k_lip=args.k_lip, cross_view=not args.no_cross_view, seed=args.seed,
                               half=args.half, preview_every=args.preview_every,
                               checkpoint_every=args.checkpoint_every, validate_every=args.validate_every,
                               locality=args.locality, lr_output_bias=rates["lr_output_bias"],
                               aniso_reg=args.aniso, lr_residual=args.lr_residual, lr_lip_layer=args.lr_lip_layer,
                               focus=args.focus, leak_weight=args.leak,
                               random_background=rates["random_background"], blink_share=args.blink_share,
                               side_silhouette=args.side_silhouette, lip_target=args.lip_target,
                               lip_batch=args.lip_batch,
                               lip_concordance=args.lip_concordance, lip_holdback=args.lip_holdback,
                               encoder_noise=args.encoder_noise, encoder_steps=args.encoder_steps,
                               adapt_frontend=args.adapt_frontend, open_share=args.open_share,
                               mouth_weight=args.mouth_weight, ssim_weight=args.ssim_weight,
                               grad_weight=args.grad_weight,
                               encoder_context=args.encoder_context, encoder_members=args.encoder_members,
                               level_window=args.level_window, motion_window=args.motion_window,
                               lips_from_picture=args.lips_from_picture, mouth_interior=args.mouth_interior,
                               frontend=not args.no_frontend, normalised_mel=not (args.raw_mel or args.no_frontend))


def run(args) -> int:
    from pathlib import Path

    from ..checkpoint import CheckpointError
    from ..cli import check_device
    from ..data import DatasetError
    from .identity import train_identity

    cfg = train_config(args)
    prior = None
    try:
        cfg.validate()
        device = check_device(args.device)
        if not Path(args.data).is_dir():
            raise FileNotFoundError(f"DATA {args.data}: no such dataset directory")
        if args.prior:
            from ..prior import load_prior

            prior = load_prior(args.prior)
        metrics = train_identity(args.data, Path(args.out), cfg, prior=prior, device=device,
                                 progress=not args.quiet, force_resume=args.force_resume)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, DatasetError, CheckpointError) as exc:
        print(f"dgtalker train: {exc}", file=sys.stderr)
        return 2
    psnr = metrics.get("psnr", math.nan)
    print(f"trained {metrics['step']} steps in {metrics['minutes']:.1f} min; last training PSNR {psnr:.2f} dB; "
          f"wrote {args.out}")
    return 0
