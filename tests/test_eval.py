"""Evaluation metrics against hand-computed values, and `dgtalker eval` end to end."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from priors import TINY

from dgtalker.eval import metrics as M

# the evaluation's landmarks (LMD, mouth opening of renders) come from mediapipe's face
# mesh, an optional extra (pip install ".[eval]"); machines without it skip these
needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason="mediapipe is not installed (pip install '.[eval]')")

SAMPLE = Path(__file__).parent / "data" / "sample"


def test_region_box_is_a_square_around_the_mask_inside_the_image():
    import torch

    from dgtalker.eval.report import region_box

    m = torch.zeros(100, 80)
    m[60:70, 30:50] = 1.0  # 10 x 20 pixels
    top, left, side = region_box(m, pad=0.25)
    assert side == 30  # the larger extent, 20, padded by a quarter on each side
    assert top <= 60 and top + side >= 70 and left <= 30 and left + side >= 50  # around the mask
    assert abs(top + side / 2 - 65) <= 1 and abs(left + side / 2 - 40) <= 1  # centred on it
    m2 = torch.zeros(100, 80)
    m2[0:5, 70:80] = 1.0  # at the corner: the square is pushed inside
    top, left, side = region_box(m2, pad=0.25)
    assert top == 0 and left + side == 80 and side == 15
    assert region_box(torch.zeros(10, 10)) is None


def test_psnr_of_a_known_noise_level():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.8, (16, 16, 3))
    b = a + 0.1 * np.where(rng.uniform(size=a.shape) < 0.5, -1, 1)  # |error| = 0.1 everywhere
    assert M.psnr(a, b) == pytest.approx(20.0, abs=1e-9)  # -10 log10(0.01)
    mask = np.zeros((16, 16))
    mask[:4] = 1
    b2 = a.copy()
    b2[:4] += 0.01
    b2[4:] += 0.5  # outside the mask: ignored
    assert M.psnr(a, b2, mask) == pytest.approx(40.0, abs=1e-6)
    assert M.psnr(a, a) == math.inf
    assert math.isnan(M.psnr(a, b, np.zeros((16, 16))))


def test_ssim_identical_is_one_and_noise_is_less():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert M.ssim(a, np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)) < 0.9


def test_best_lag_of_a_shifted_sequence():
    rng = np.random.default_rng(2)
    x = np.convolve(rng.normal(size=200), np.ones(5) / 5, mode="same")
    late = np.concatenate([np.zeros(3), x[:-3]])  # the prediction is 3 frames late
    lag, corr = M.best_lag(x, late, max_lag=5)
    assert lag == 3 and corr > 0.99
    lag, corr = M.best_lag(x, x)
    assert lag == 0 and corr == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_landmark_distance_of_shifted_landmarks():
    rng = np.random.default_rng(3)
    L = rng.uniform(0, 100, (10, 20, 2))
    assert M.landmark_distance(L, L + np.array([3.0, 4.0])) == pytest.approx(5.0)
    vis = np.ones((10, 20), bool)
    vis[:, :10] = False
    shifted = L.copy()
    shifted[:, :10] += 100.0  # invisible landmarks do not count
    assert M.landmark_distance(L, shifted, vis) == pytest.approx(0.0)


@needs_mediapipe
def test_face_landmarks_find_a_synthetic_face_and_measure_a_shift():
    import torch
    from PIL import Image

    from dgtalker.data import load
    from dgtalker.eval.landmarks import FaceLandmarks, lip_gap

    img = np.asarray(Image.fromarray(load(SAMPLE).image(0)).resize((256, 256), Image.BICUBIC))
    det = FaceLandmarks()
    a = det.detect(img)
    b = det.detect(np.roll(img, 4, axis=1))  # the whole picture 4 px to the right
    assert a is not None and b is not None and a.shape == (478, 2) and len(det.lips) == 40
    assert M.landmark_distance(a[det.lips], b[det.lips]) == pytest.approx(4.0, abs=1.0)
    assert 0 <= lip_gap(a) < 40
    assert det.detect(np.full((256, 256, 3), 128, np.uint8)) is None  # no face
    det.close()


def test_mouth_opening_counts_dark_pixels_in_the_mask():
    img = np.full((20, 20, 3), 0.8, np.float32)
    img[8:12, 5:15] = 0.05  # a dark mouth: 40 pixels
    mask = np.zeros((20, 20), np.float32)
    mask[5:15, 5:15] = 1.0  # 100 pixels of lower face
    assert M.mouth_opening(img, mask) == pytest.approx(0.4)
    assert math.isnan(M.mouth_opening(img, np.zeros((20, 20))))


def test_eval_command_end_to_end(tmp_path):
    """Runs without mediapipe (only the landmark figures need it). The shipped talker was
    trained on identity 7, the sample's person: it must score well above an untrained
    talker on the same frames, and the report must say which frames it scored."""
    from dgtalker.cli import main
    from dgtalker.models.generator import Generator, GeneratorConfig
    from dgtalker.talker import Talker, TalkerConfig, save_talker

    T = Talker(Generator(GeneratorConfig(**TINY), seed=0), TalkerConfig(k_exp=2, k_lip=2, width=96, height=96),
               residual_frames=50)
    p = save_talker(tmp_path / "tiny.safetensors", T)
    out = tmp_path / "report"
    assert main(["eval", "--data", str(SAMPLE), "--talker", str(p), "--out", str(out), "--size", "96",
                 "--device", "cpu", "--ablation", str(p)]) == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("frames", "novel_views", "baselines", "speed", "command", "commit", "talker", "data"):
        assert key in rep, key
    # the held-out split (10 frames); the untrained talker records no training clip
    assert rep["frames"]["frames"] == 10 and rep["data"]["scored"]["frames"] == 10
    assert rep["data"]["split"] == "10 frames of a clip (the talker records no training clip)"
    assert "(10 frames of a clip" in (out / "report.md").read_text()
    # the ablation is the same file: the same numbers
    assert rep["baselines"]["ablation (no cross-view)"]["psnr"] == pytest.approx(rep["frames"]["psnr"])
    assert rep["speed"]["fps"] > 0 and rep["speed"]["device"] == "cpu"
    assert set(rep["loudness_lag"]) == {"lag_frames", "corr", "truth_lag_frames"}
    assert rep["spiral"] is None  # the sample has novel-view ground truth
    assert (out / "sheet.png").stat().st_size > 0
    # mouth and eyes of the worst, median and best frames, truth | render each, at full size
    assert rep["details_sheet"] is True and "details.png" in (out / "report.md").read_text()
    import torch
    from PIL import Image
    d = Image.open(out / "details.png")
    assert d.width == 4 * (d.height // 3) and d.height % 3 == 0
    if not importlib.util.find_spec("mediapipe"):
        assert rep["frames"]["lmd_px"] is None and "not measured" in rep["lmd_note"]
    # the shipped talker on its own person's held-out frames (the sample's camera is not its training
    # framing, so the pixels match loosely: 14.7 dB against 11.1, SSIM 0.67 against 0.45) and its mouth
    # follows the truth's (correlation 0.79; the untrained talker's mouth does not move: null)
    shipped = tmp_path / "shipped"
    assert main(["eval", "--data", str(SAMPLE), "--out", str(shipped), "--size", "96", "--device", "cpu",
                 "--no-novel"]) == 0
    good = json.loads((shipped / "report.json").read_text())["frames"]
    assert good["psnr"] > rep["frames"]["psnr"] + 2, (good["psnr"], rep["frames"]["psnr"])
    assert good["ssim"] > rep["frames"]["ssim"] + 0.1, (good["ssim"], rep["frames"]["ssim"])
    assert good["mouth_corr"] is not None and good["mouth_corr"] > 0.5, good["mouth_corr"]
    assert main(["eval", "--data", str(tmp_path / "missing"), "--talker", str(p), "--out", str(out)]) == 2


def test_eval_refuses_a_clip_without_heldout_frames_and_checks_arguments(tmp_path, capsys):
    """A clip without held-out frames was scored on every frame and labelled "held-out
    frames"; now it is refused unless --all-frames, which labels the frames as they are."""
    import shutil

    import torch

    from dgtalker.cli import main
    from dgtalker.data import load
    from dgtalker.eval.evaluate import evaluate
    from dgtalker.talker import load_talker

    clip = shutil.copytree(SAMPLE, tmp_path / "clip")
    (clip / "splits.json").write_text(json.dumps({"train": list(range(50)), "heldout": []}))
    assert main(["eval", "--data", str(clip), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert "no held-out frames" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no held-out frames"):
        evaluate(load_talker(device="cpu"), load(clip), size=32, novel=False, progress=False)
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(clip), "--size", "0"])
    if not torch.cuda.is_available():
        assert main(["eval", "--data", str(clip), "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_eval_training_frames_scores_frames_of_the_training_split(tmp_path, capsys):
    """--training-frames N scores N frames spread over the training split (fit, beside the
    held-out report's generalisation); with --all-frames it is refused."""
    from dgtalker.cli import main
    from dgtalker.data import load

    out = tmp_path / "r"
    assert main(["eval", "--data", str(SAMPLE), "--training-frames", "6", "--size", "32", "--no-novel",
                 "--device", "cpu", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    train = set(int(i) for i in load(SAMPLE).splits["train"])
    scored = rep["data"]["frame_indices"]
    assert rep["frames"]["frames"] == 6 and len(set(scored)) == 6 and set(scored) <= train
    assert max(scored) - min(scored) > len(train) // 2          # spread over the split, not its start
    assert "--training-frames 6" in rep["command"]
    assert main(["eval", "--data", str(SAMPLE), "--training-frames", "6", "--all-frames", "--device", "cpu",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "pass one of them" in capsys.readouterr().err


@pytest.mark.gpu
def test_eval_command_end_to_end_on_cuda(tmp_path):
    """The same command on the GPU (the clip's coefficients once crashed it there by
    reaching numpy from device memory)."""
    from dgtalker.cli import main
    from dgtalker.models.generator import Generator, GeneratorConfig
    from dgtalker.talker import Talker, TalkerConfig, save_talker

    T = Talker(Generator(GeneratorConfig(**TINY), seed=0), TalkerConfig(k_exp=2, k_lip=2, width=96, height=96),
               residual_frames=50)
    p = save_talker(tmp_path / "tiny.safetensors", T)
    out = tmp_path / "report"
    assert main(["eval", "--data", str(SAMPLE), "--talker", str(p), "--out", str(out), "--size", "96",
                 "--device", "cuda"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["frames"]["frames"] == 10 and rep["speed"]["device"] != "cpu"
    assert np.isfinite(rep["frames"]["psnr"]) and (out / "details.png").exists()


@needs_mediapipe
def test_loudness_and_spiral_consistency_without_novel_truth(tmp_path):
    from dgtalker.data import load
    from dgtalker.eval.evaluate import frame_loudness, spiral_consistency
    from dgtalker.talker import load_talker

    ds = load(SAMPLE)
    loud = frame_loudness(ds, np.arange(len(ds)))
    assert loud.shape == (50,) and np.all(np.isfinite(loud)) and loud.max() - loud.min() > 10  # speech and pauses
    # the shipped talker has a face from every side; 256 px: at 128 the mouth is ~10 px and
    # one pixel of landmark noise alone moves the ratio by 10-20%
    res = spiral_consistency(load_talker(), ds, views=6, size=256)
    assert res["found"] == 1.0 and res["lip_gap_cv"] is not None and 0 <= res["lip_gap_cv"] < 0.5


def test_region_scores_have_known_answers():
    """Regions from the mask channels, and PSNR / SSIM inside each: an error put only
    in the background shows only there, with the PSNR its size gives."""
    import torch

    from dgtalker.eval import metrics as M

    H = W = 64
    masks = torch.zeros(H, W, 4)
    masks[8:40, 16:48, 0] = 1          # head
    masks[28:40, 20:44, 1] = 1         # lower face (inside the head)
    masks[12:22, 20:44, 2] = 1         # upper face
    masks[8:60, 8:56, 3] = 1           # foreground: head + torso below it
    reg = M.region_masks(masks)
    assert float(reg["face"].sum()) == 12 * 24 + 10 * 24
    assert float(reg["head_rest"].sum()) == 32 * 32 - (12 * 24 + 10 * 24)
    assert float(reg["torso"].sum()) == 52 * 48 - 32 * 32
    assert float(reg["background"].sum()) == H * W - 52 * 48
    total = sum(float(reg[k].sum()) for k in ("face", "head_rest", "torso", "background"))
    assert total == H * W  # the four partition the frame
    truth = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    render = truth.clone()
    bg = reg["background"] > 0
    render[bg] += 0.1  # mse 0.01 in the background: 20 dB there, untouched elsewhere
    sc = M.region_scores(render, truth, masks)
    assert abs(sc["background"]["psnr"] - 20.0) < 1e-4
    for name in ("face", "lower_face", "upper_face", "head_rest"):
        assert sc[name]["psnr"] == float("inf"), name
        assert sc[name]["ssim"] > 0.999 or name == "head_rest", (name, sc[name])
    assert sc["background"]["ssim"] < 1.0
    empty = torch.zeros(H, W, 4)
    empty[..., 3] = 1
    assert np.isnan(M.region_scores(render, truth, empty)["face"]["psnr"])


def test_detail_ratio_sees_blur_and_sharpening():
    """The regions' detail ratio: 1 for the truth itself, well below 1 for a blurred copy,
    above 1 for an over-sharpened one; NaN where the truth is flat (nothing to compare)."""
    import torch

    from dgtalker.eval import metrics as M

    H = W = 64
    masks = torch.zeros(H, W, 4)
    masks[8:40, 16:48, 0] = 1
    masks[12:40, 20:44, 1] = 1
    masks[8:60, 8:56, 3] = 1
    truth = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    img = truth.permute(2, 0, 1)[None]
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(img, (1, 1, 1, 1), mode="replicate"), 3, 1)
    blurred = box[0].permute(1, 2, 0)
    sharpened = (truth + 0.5 * (truth - blurred)).clamp(0, 1)
    same = M.region_scores(truth, truth, masks)
    soft = M.region_scores(blurred, truth, masks)
    sharp = M.region_scores(sharpened, truth, masks)
    for name in ("lower_face", "head_rest", "torso", "background"):
        assert abs(same[name]["detail"] - 1.0) < 1e-6, name
        assert soft[name]["detail"] < 0.5, (name, soft[name])
        assert sharp[name]["detail"] > 1.2, (name, sharp[name])
    flat = torch.full((H, W, 3), 0.5)
    assert np.isnan(M.region_scores(flat, flat, masks)["face"]["detail"])
    assert M.region_scores(flat, flat, masks)["face"]["psnr"] == float("inf")


def test_a_reencoded_copy_of_the_training_clip_is_still_the_training_clip(tmp_path):
    import shutil
    from types import SimpleNamespace

    import torch
    from PIL import Image

    from dgtalker.data.format import load
    from dgtalker.eval.evaluate import scored_frames, trained_on
    from dgtalker.train.state import dataset_provenance

    src = load(SAMPLE)
    copy = tmp_path / "copy"
    shutil.copytree(SAMPLE, copy)
    for png in sorted(copy.glob("**/frames/*.png")):  # frames re-encoded as JPEG, here and in novel/
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "image_ext": "jpg"}))
    again = load(copy)
    assert again.fingerprint() != src.fingerprint()
    assert again.clip_fingerprint() == src.clip_fingerprint()
    talker = SimpleNamespace(source=dataset_provenance(src))
    assert trained_on(talker, src) is True and trained_on(talker, again) is True
    # an older talker without the clip hash takes the copy for another clip
    assert trained_on(SimpleNamespace(source={k: v for k, v in talker.source.items() if k != "clip_sha256"}),
                      again) is False
    # another split, or other ground truth: another clip
    splits = json.loads((copy / "splits.json").read_text())
    moved = splits["train"].pop()
    (copy / "splits.json").write_text(json.dumps({**splits, "heldout": sorted(splits["heldout"] + [moved])}))
    assert trained_on(talker, load(copy)) is False
    shutil.copy(SAMPLE / "splits.json", copy / "splits.json")
    assert load(copy).clip_fingerprint() == src.clip_fingerprint()
    gt = dict(np.load(SAMPLE / "gt.npz"))
    name = next(k for k, v in gt.items() if v.dtype.kind == "f")
    np.savez(copy / "gt.npz", **{**gt, name: gt[name] + 0.01})
    assert trained_on(talker, load(copy)) is False
    shutil.copy(SAMPLE / "gt.npz", copy / "gt.npz")
    # how the frames are labelled follows: the copy's held-out frames are the training clip's
    scored = scored_frames(SimpleNamespace(source=talker.source, train_mask=torch.zeros(0)), load(copy),
                           src.splits["heldout"])
    assert scored["clip"] == "the training clip" and scored["unseen_frames"] == len(src.splits["heldout"])
