"""How much of a synthetic clip's novel views is view-dependent shading, which Gaussians
with one colour each cannot follow.

The synthetic renderer lights the head with lights fixed in the world: only the
highlights (the specular term) change with the camera. This re-renders every novel
view twice from the clip's ground-truth geometry: as stored, and with the highlights
seen from the frame's own (training) camera, which is what a view-independent model
fitted at that camera would keep. Per |yaw|: the PSNR between the two (the
view-dependent part) and, with ``--talker``, the talker's PSNR against each. Both
sides are composited over one grey, as ``dgtalker eval`` does for novel views.

    python benchmarks/view_dependence.py --data data/id007 [--talker T.safetensors] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a synthetic clip (dgtalker synth) with novel/ views")
    ap.add_argument("--talker", type=Path, help="also score this talker against both versions")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    from dgtalker.data import load
    from dgtalker.data.synthetic.generate import intrinsics, studio_lighting
    from dgtalker.data.synthetic.head import STATE_KEYS, HeadModel, draw_identity
    from dgtalker.data.synthetic.raster import MeshRenderer
    from dgtalker.eval.evaluate import GroundTruth, clip_coefficients, novel_view_cameras
    from dgtalker.eval.metrics import psnr
    from dgtalker.talker import load_talker

    data = load(a.data)
    nv, src = data.novel, data.meta.get("source", {})
    if nv is None or src.get("generator") != "dgtalker.data.synthetic" or data.gt is None:
        raise SystemExit(f"{a.data} is not a synthetic clip with novel views")
    size = data.width
    ident = draw_identity(int(src["identity"]))
    head = HeadModel(ident)
    light = studio_lighting(np.random.default_rng([int(src["identity"]), 4]))  # as generate_talking draws it
    renderer = MeshRenderer(head.meshes, head.textures, size, size, background=ident.background)
    K = intrinsics(size)
    talker = load_talker(a.talker, device="cpu") if a.talker else None
    if talker is not None:
        ce, cl = clip_coefficients(talker, data)
    truth = GroundTruth(nv, size, "cpu")
    grey = torch.full((3,), 0.5)
    yaw = np.abs(np.asarray(nv.extra["yaw_deg"]))
    rows: dict = {}
    posed = None
    for i in range(len(nv)):
        f = int(nv.frame_index[i])
        H = np.asarray(data.gt["head_to_world"][f], np.float64)
        if f != posed:
            pos, _ = head.pose_geometry({k: float(data.gt[k][f]) for k in STATE_KEYS}, H)
            renderer.update(pos, head.normals(pos))
            posed = f
        w2c = np.asarray(nv.w2c[i], np.float64)
        gt, m = truth([i])
        fg = m[..., 3:4]
        over = lambda x: x * fg + grey * (1 - fg)  # noqa: E731
        images = {}
        for name, spec in (("rerendered", None), ("highlights_fixed", np.asarray(data.w2c[f], np.float64))):
            rgb = renderer.render(K, w2c, light, H[:3, :3], specular_from=spec)["rgb"]
            images[name] = over(torch.as_tensor(rgb).float()[None] / 255)
        r = rows.setdefault(int(yaw[i]), {})
        r.setdefault("stored_vs_rerendered", []).append(psnr(over(gt), images["rerendered"]))
        r.setdefault("view_dependent", []).append(psnr(images["rerendered"], images["highlights_fixed"]))
        if talker is not None:
            fi, w2ct, Kt, frame_w2c = novel_view_cameras(data, np.array([i]), size, "cpu")
            with torch.no_grad():
                img, _ = talker.rasterize(talker.clip_gaussians(ce[fi], cl[fi], frame_w2c), w2ct, Kt, size, size,
                                          background=grey)
            img = img.clamp(0, 1)
            r.setdefault("talker", []).append(psnr(img, images["rerendered"]))
            r.setdefault("talker_vs_highlights_fixed", []).append(psnr(img, images["highlights_fixed"]))
    renderer.release()
    out = {b: {k: float(np.mean(v)) for k, v in r.items()} | {"views": len(r["view_dependent"])}
           for b, r in sorted(rows.items())}
    cols = [k for k in out[min(out)] if k != "views"]
    print("| |yaw| | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for b, o in out.items():
        print(f"| {b}° | " + " | ".join(f"{o[k]:.2f}" for k in cols) + " |")
    if a.json:
        a.json.write_text(json.dumps({"data": str(a.data), "talker": str(a.talker) if a.talker else None,
                                      "psnr_per_yaw": out}, indent=1))


if __name__ == "__main__":
    main()
