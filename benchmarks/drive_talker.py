"""Drive a trained talker with another voice from several cameras around its own
framing, and save a contact sheet (rows: cameras, columns: moments of the speech).

    python benchmarks/drive_talker.py TALKER SPEECH --yaw 0,-20,20 --out sheet.png [--mp4 DIR]

Used for the real-clip figures in docs/benchmarks.md (a talker trained on one person,
driven by a speaker it never heard)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("talker", type=Path)
    ap.add_argument("speech", type=Path, help="any audio file")
    ap.add_argument("--yaw", default="0,-20,20", help="camera yaws in degrees around the talker's framing")
    ap.add_argument("--columns", type=int, default=6, help="moments of the speech per row")
    ap.add_argument("--tile", type=int, default=192, help="tile size in pixels")
    ap.add_argument("--out", type=Path, required=True, help="contact sheet PNG")
    ap.add_argument("--mp4", type=Path, default=None, help="also write one mp4 per camera here")
    a = ap.parse_args()

    import dgtalker
    from dgtalker.camera import turn
    from dgtalker.io import atomic_write_bytes, encode_image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    talker = dgtalker.load_talker(a.talker, device=device)
    rows, timing = [], {}
    for yaw in (float(v) for v in a.yaw.split(",")):
        t0 = time.perf_counter()
        video = talker.render(a.speech, turn(talker.camera(), yaw), device=device)
        timing[f"yaw {yaw:+.0f}"] = round(time.perf_counter() - t0, 2)
        T = len(video.frames)
        idx = np.linspace(T * 0.05, T * 0.95, a.columns).round().astype(int)
        tiles = [torch.nn.functional.interpolate(video.frames[i].permute(2, 0, 1)[None].float(), size=(a.tile, a.tile),
                                                 mode="area")[0].permute(1, 2, 0) for i in idx]
        rows.append(torch.cat(tiles, 1))
        if a.mp4 is not None:
            a.mp4.mkdir(parents=True, exist_ok=True)
            video.save(a.mp4 / f"{a.talker.stem}_yaw{yaw:+.0f}.mp4")
    sheet = torch.cat(rows, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    atomic_write_bytes(a.out, encode_image(sheet, "png"))
    print(json.dumps({"talker": str(a.talker), "speech": str(a.speech), "frames": T, "seconds": timing,
                      "device": device}))


if __name__ == "__main__":
    main()
