"""Does a talker close its eyes? On a synthetic clip's training frames with the eyes
shut (ground-truth ``blink_left`` and ``blink_right`` >= 0.7) and as many with them
open (<= 0.05), each frame is rendered at its camera with its own coefficients
(speech + its residual code + its eyelid amount from the clip's landmarks, as in
training), and mediapipe's eyelid gap over eye width is measured on the render and on
the ground truth. Also: the open frames with the eyelid layer at 1.0 (what
``render(..., blink=1)`` does) and the closed frames with it at 0 (what the latent
blendshapes alone do).

    python benchmarks/blink_check.py --talker T.safetensors --data data/id007 [--json OUT] \
        [--sheet docs/images/talker_blink.png]

The sheet shows the eyes of three shut frames and one open frame (columns); rows:
ground truth, render with the frame's blink amount, the same with the eyelid layer
off, and with ``blink=1``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# mediapipe face mesh: (upper lid, lower lid, outer corner, inner corner) per eye
EYES = ((159, 145, 33, 133), (386, 374, 263, 362))


def openness(lm: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(lm[u] - lm[d]) / max(np.linalg.norm(lm[a] - lm[b]), 1e-6)
                          for u, d, a, b in EYES]))


def sheet(path: Path, data, T, idx, ce, cl, res, size: int) -> None:
    """Eye crops: truth, with the frame's blink, layer off, blink=1 (rows) of ``idx``."""
    from dgtalker.eval.evaluate import view_cameras
    from dgtalker.io import atomic_write_bytes, encode_image

    w2c, K = view_cameras(data, idx, size, data.width, data.height, "cpu")
    rows = [torch.stack([torch.from_numpy(np.asarray(Image.fromarray(data.image(int(i))).resize((size, size),
                                                                                                Image.BOX)))
                         .float() / 255 for i in idx])]
    for blink in (T.blink_track.cpu()[idx], torch.zeros(len(idx)), torch.ones(len(idx))):
        with torch.no_grad():
            img, _ = T.clip_frames(ce[idx] + res[idx], cl[idx], w2c, K, size, size, blink=blink)
        rows.append(img)
    y0, y1, x0, x1 = (int(size * f) for f in (0.23, 0.59, 0.19, 0.81))  # the eyes in the clip's framing
    grid = torch.cat([torch.cat([im[y0:y1, x0:x1] for im in r], 1) for r in rows], 0)
    atomic_write_bytes(path, encode_image((grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "png"))
    print("wrote", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--talker", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=24, help="closed-eye frames (and as many open ones)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sheet", type=Path, help="write the eye crops here (PNG)")
    a = ap.parse_args()

    from dgtalker.data import load
    from dgtalker.eval.evaluate import clip_coefficients, view_cameras
    from dgtalker.eval.landmarks import FaceLandmarks
    from dgtalker.talker import load_talker

    data = load(a.data)
    T = load_talker(a.talker, device="cpu")
    train = np.asarray(data.splits["train"])
    gt = np.load(Path(a.data) / "gt.npz")
    shut = np.minimum(gt["blink_left"], gt["blink_right"])[train]
    closed = train[shut >= 0.7][: a.frames]
    opened = train[np.maximum(gt["blink_left"], gt["blink_right"])[train] <= 0.05][:: 7][: len(closed)]
    ce, cl = clip_coefficients(T, data)
    res = T.residual_track.detach().cpu()
    det = FaceLandmarks()
    out = {"closed_frames": closed.tolist(), "open_frames": opened.tolist()}
    sheet_idx = np.concatenate([closed[:3], opened[:1]])
    track = T.blink_track.cpu()
    for name, idx, blink in (("closed", closed, track[closed]), ("closed, layer off", closed, torch.zeros(len(closed))),
                             ("open", opened, track[opened]), ("open+blink", opened, torch.ones(len(opened)))):
        w2c, K = view_cameras(data, idx, a.size, data.width, data.height, "cpu")
        with torch.no_grad():
            img, _ = T.clip_frames(ce[idx] + res[idx], cl[idx], w2c, K, a.size, a.size, blink=blink)
        rend, truth = [], []
        for k, i in enumerate(idx):
            r = det.detect((img[k].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
            frame = data.image(int(i))
            if frame.shape[0] != a.size:
                frame = np.asarray(Image.fromarray(frame).resize((a.size, a.size), Image.BOX))
            g = det.detect(frame)
            if r is not None and g is not None:
                rend.append(openness(r))
                truth.append(openness(g))
        out[name] = {"render_openness": float(np.mean(rend)), "truth_openness": float(np.mean(truth)),
                     "frames_measured": len(rend)}
        print(f"{name:17s} frames {len(rend):3d}  eyelid gap / eye width: render {np.mean(rend):.3f}, "
              f"ground truth {np.mean(truth):.3f}")
    det.close()
    if a.sheet:
        sheet(a.sheet, data, T, sheet_idx, ce, cl, res, a.size)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
