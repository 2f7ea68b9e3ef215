"""The dgtalker dataset format: one directory per clip (see docs/data-format.md).

Reading: ``load(path)`` validates the directory and returns a :class:`Dataset` whose
frames and masks are decoded lazily (a small LRU cache keeps recent ones), so a few
thousand 512x512 frames never need to sit in memory at once.

Writing: :class:`DatasetWriter` fills a temporary sibling directory and renames it
into place on ``close()``, so an interrupted writer never leaves a half dataset
under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_NAME = "dgtalker-dataset"
FORMAT_VERSION = 1
KINDS = ("talking", "multiview")
MASK_CHANNELS = ("head", "lower_face", "upper_face", "foreground")
IMAGE_EXTS = ("png", "jpg")
# audio may be a little shorter or longer than the frames (encoder padding, rounding)
AUDIO_SLACK_FRAMES = 2.0


class DatasetError(ValueError):
    """A dataset directory is missing a piece or has a malformed one; the message
    names the file and what was expected."""


# small IO helpers live in dgtalker.io (shared with checkpoints and outputs)
from ..io import atomic_save_npz, atomic_write_bytes, atomic_write_json, encode_image  # noqa: E402,F401


def ffmpeg_exe() -> str:
    """The ffmpeg binary: the system one, else the one bundled by imageio-ffmpeg."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError("ffmpeg not found: install the Debian package ffmpeg "
                           "or pip install imageio-ffmpeg") from exc


# ----------------------------------------------------------------------------------
# reading


class _LRU:
    def __init__(self, size):
        self.size, self.d = size, OrderedDict()

    def get(self, key, make):
        if key in self.d:
            self.d.move_to_end(key)
            return self.d[key]
        val = make()
        self.d[key] = val
        if len(self.d) > self.size:
            self.d.popitem(last=False)
        return val


def _hash_part(h, name: str, data: bytes) -> None:
    """Adds ``data`` to the hash ``h`` under ``name``, with its length (no two parts run together)."""
    h.update(f"{name}:{len(data)}:".encode())
    h.update(data)


def _file_ends(path: Path, chunk: int) -> bytes:
    """The first and last ``chunk`` bytes of a file (all of it if shorter than both)."""
    with open(path, "rb") as f:
        head = f.read(chunk)
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - chunk, len(head)))
        return head + f.read(chunk)


def _frame_name(i: int, ext: str) -> str:
    return f"{i:06d}.{ext}"


def _read_image(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = {3: "RGB", 4: "RGBA"}[channels]
            if im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DatasetError(f"missing image file {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"corrupt or unreadable image {path}: {exc}") from None


def _check_header(path: Path, width: int, height: int) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # checks the file structure (and PNG chunk CRCs) without decoding
    except FileNotFoundError:
        raise DatasetError(f"missing image file {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"corrupt or unreadable image {path}: {exc}") from None
    if size != (width, height):
        raise DatasetError(f"image {path} is {size[0]}x{size[1]}, meta.json says {width}x{height}")


class _Mp4Frames:
    """Frames of an mp4, decoded once to an uncompressed memory-mapped cache
    (``.cache/frames_WxH.u8`` next to the video) and then read at random."""

    def __init__(self, path: Path, n: int, width: int, height: int):
        self.path, self.n, self.w, self.h = path, n, width, height
        self._mm = None

    def _open(self):
        if self._mm is not None:
            return self._mm
        cache_dir = self.path.parent / ".cache"
        try:
            cache_dir.mkdir(exist_ok=True)
        except OSError:  # read-only dataset: cache in the temp dir
            cache_dir = Path(tempfile.gettempdir()) / f"dgtalker-cache-{abs(hash(str(self.path)))}"
            cache_dir.mkdir(exist_ok=True)
        cache = cache_dir / f"frames_{self.w}x{self.h}_{self.path.stat().st_mtime_ns}.u8"
        frame_bytes = self.w * self.h * 3
        if not cache.exists() or cache.stat().st_size != frame_bytes * self.n:
            tmp = cache.with_suffix(".tmp")
            cmd = [ffmpeg_exe(), "-v", "error", "-i", str(self.path), "-f", "rawvideo",
                   "-pix_fmt", "rgb24", "-s", f"{self.w}x{self.h}", "-frames:v", str(self.n), str(tmp), "-y"]
            res = subprocess.run(cmd, capture_output=True)
            if res.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise DatasetError(f"could not decode video {self.path}: {res.stderr.decode(errors='replace').strip()[-300:]}")
            got = tmp.stat().st_size // frame_bytes
            if got != self.n:
                tmp.unlink(missing_ok=True)
                raise DatasetError(f"video {self.path} has {got} frames, meta.json says num_frames={self.n}")
            os.replace(tmp, cache)
        self._mm = np.memmap(cache, dtype=np.uint8, mode="r", shape=(self.n, self.h, self.w, 3))
        return self._mm

    def __getitem__(self, i):
        return np.array(self._open()[i])


@dataclass
class Frame:
    """One item of a dataset: an image with its masks, camera and time."""

    index: int
    image: np.ndarray  # uint8 [H, W, 3]
    masks: np.ndarray  # float32 [H, W, 4]: head, lower_face, upper_face, foreground in [0, 1]
    K: np.ndarray  # float64 [3, 3] pixel intrinsics
    w2c: np.ndarray  # float64 [4, 4] world (canonical head frame) -> OpenCV camera
    time: float | None  # seconds from the start of the audio (talking clips)


class ViewSet:
    """Images, masks and cameras of one directory level (the main sequence, or the
    ``novel/`` views). Images are decoded on access."""

    def __init__(self, root: Path, n: int, width: int, height: int, image_ext: str,
                 frames: str, cache_size: int, verify: str):
        self.root, self.n, self.width, self.height = root, n, width, height
        self.image_ext = image_ext
        if frames.endswith(".mp4"):
            vp = root / frames
            if not vp.is_file():
                raise DatasetError(f"missing video file {vp} (meta.json 'frames')")
            self._video = _Mp4Frames(vp, n, width, height)
        else:
            self._video = None
            fdir = root / frames
            if not fdir.is_dir():
                raise DatasetError(f"missing frames directory {fdir}")
        self._frames = frames
        mdir = root / "masks"
        if not mdir.is_dir():
            raise DatasetError(f"missing masks directory {mdir}")
        cam = root / "cameras.npz"
        if not cam.is_file():
            raise DatasetError(f"missing camera file {cam}")
        try:
            with np.load(cam) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - zip/pickle errors all mean "unreadable"
            raise DatasetError(f"unreadable camera file {cam}: {exc}") from None
        for key, shape in (("K", (3, 3)), ("w2c", (4, 4))):
            if key not in arrays:
                raise DatasetError(f"{cam} has no array {key!r} (found {sorted(arrays)})")
            a = arrays[key]
            if a.ndim != 3 or a.shape[1:] != shape:
                raise DatasetError(f"{cam}: {key} must have shape [N, {shape[0]}, {shape[1]}], got {list(a.shape)}")
            if a.shape[0] != n:
                raise DatasetError(f"{cam}: {key} has {a.shape[0]} cameras but there are {n} frames (num_frames)")
            if not np.all(np.isfinite(a)):
                raise DatasetError(f"{cam}: {key} contains NaN or inf")
        self.K = arrays["K"].astype(np.float64)
        self.w2c = arrays["w2c"].astype(np.float64)
        if not np.allclose(self.w2c[:, 3], [0, 0, 0, 1]):
            raise DatasetError(f"{cam}: w2c must be rigid 4x4 matrices with last row [0, 0, 0, 1]")
        rot = self.w2c[:, :3, :3]
        if not np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-4):
            raise DatasetError(f"{cam}: the rotation part of w2c is not orthonormal")
        self.extra = {k: v for k, v in arrays.items() if k not in ("K", "w2c")}
        if verify not in ("none", "header"):
            raise ValueError(f"verify must be 'none' or 'header', got {verify!r}")
        if verify == "header":
            for i in range(n):
                if self._video is None:
                    _check_header(self._image_path(i), width, height)
                _check_header(self._mask_path(i), width, height)
        self._cache = _LRU(cache_size)

    def _image_path(self, i):
        return self.root / self._frames / _frame_name(i, self.image_ext)

    def _mask_path(self, i):
        return self.root / "masks" / _frame_name(i, "png")

    def __len__(self):
        return self.n

    def _check_index(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame index must be an int, got {type(i).__name__}")
        if not -self.n <= i < self.n:
            raise IndexError(f"frame index {i} out of range for {self.n} frames")
        return int(i) % self.n

    def image(self, i) -> np.ndarray:
        """uint8 [H, W, 3]"""
        i = self._check_index(i)
        if self._video is not None:
            return self._cache.get(("img", i), lambda: self._video[i])
        return self._cache.get(("img", i), lambda: _read_image(self._image_path(i), 3))

    def masks(self, i) -> np.ndarray:
        """float32 [H, W, 4] in [0, 1]; channels ``MASK_CHANNELS``"""
        i = self._check_index(i)
        raw = self._cache.get(("mask", i), lambda: _read_image(self._mask_path(i), 4))
        return raw.astype(np.float32) / 255.0


class Dataset(ViewSet):
    """A validated dataset directory; ``len(ds)`` frames at ``ds.fps``.

    Attributes: ``K`` [N, 3, 3], ``w2c`` [N, 4, 4], ``fps`` (None for multiview
    corpora), ``splits`` {"train", "heldout"} -> int arrays, ``gt`` dict of per-frame
    arrays or None, ``novel`` a :class:`ViewSet` of held-out novel views or None,
    ``meta`` the parsed meta.json. ``audio`` loads (samples float32 [S], rate).
    """

    def __init__(self, root: Path, cache_size: int = 64, verify: str = "header"):
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset directory {root} does not exist")
        mp = root / "meta.json"
        if not mp.is_file():
            raise DatasetError(f"missing {mp}: not a dgtalker dataset directory")
        try:
            meta = json.loads(mp.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"malformed {mp}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise DatasetError(f"{mp}: 'format' must be {FORMAT_NAME!r}")
        if meta.get("version") != FORMAT_VERSION:
            raise DatasetError(f"{mp}: unsupported version {meta.get('version')!r} (this reader knows {FORMAT_VERSION})")
        kind = meta.get("kind")
        if kind not in KINDS:
            raise DatasetError(f"{mp}: 'kind' must be one of {KINDS}, got {kind!r}")
        for key in ("num_frames", "width", "height"):
            v = meta.get(key)
            if not isinstance(v, int) or v <= 0:
                raise DatasetError(f"{mp}: {key!r} must be a positive integer, got {v!r}")
        ext = meta.get("image_ext", "png")
        if ext not in IMAGE_EXTS:
            raise DatasetError(f"{mp}: 'image_ext' must be one of {IMAGE_EXTS}, got {ext!r}")
        self.meta, self.kind = meta, kind
        n = meta["num_frames"]
        super().__init__(root, n, meta["width"], meta["height"], ext, meta.get("frames", "frames"), cache_size, verify)
        # timing and audio
        self.fps = None
        self.audio_path, self.sample_rate = None, None
        if kind == "talking":
            fps = meta.get("fps")
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
                raise DatasetError(f"{mp}: 'fps' must be a positive number, got {fps!r}")
            self.fps = float(fps)
            au = meta.get("audio")
            if not isinstance(au, dict) or "path" not in au or "sample_rate" not in au:
                raise DatasetError(f"{mp}: 'audio' must be {{\"path\": ..., \"sample_rate\": ...}}, got {au!r}")
            self.audio_path = root / au["path"]
            if not self.audio_path.is_file():
                raise DatasetError(f"missing audio file {self.audio_path} (meta.json 'audio.path')")
            try:
                import soundfile as sf

                info = sf.info(str(self.audio_path))
            except Exception as exc:  # noqa: BLE001
                raise DatasetError(f"unreadable audio file {self.audio_path}: {exc}") from None
            if info.samplerate != au["sample_rate"]:
                raise DatasetError(f"audio file {self.audio_path} has sample rate {info.samplerate} Hz, "
                                   f"meta.json says {au['sample_rate']}")
            self.sample_rate = int(info.samplerate)
            dur = info.frames / info.samplerate
            expect = n / self.fps
            if abs(dur - expect) > AUDIO_SLACK_FRAMES / self.fps:
                raise DatasetError(
                    f"{mp}: fps={self.fps:g} with {n} frames means {expect:.3f} s, but the audio "
                    f"{self.audio_path.name} lasts {dur:.3f} s (that would be {n / dur:.3f} fps); "
                    "check 'fps' and 'num_frames'")
        # splits
        sp = root / "splits.json"
        if not sp.is_file():
            raise DatasetError(f"missing {sp}")
        try:
            splits = json.loads(sp.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"malformed {sp}: {exc}") from None
        self.splits = {}
        for key in ("train", "heldout"):
            v = splits.get(key) if isinstance(splits, dict) else None
            if not isinstance(v, list) or not all(isinstance(i, int) for i in v):
                raise DatasetError(f"{sp}: {key!r} must be a list of frame indices")
            a = np.asarray(v, dtype=np.int64)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise DatasetError(f"{sp}: {key!r} has indices outside [0, {n})")
            self.splits[key] = a
        if np.intersect1d(self.splits["train"], self.splits["heldout"]).size:
            raise DatasetError(f"{sp}: 'train' and 'heldout' share frames")
        # ground truth
        self.gt = None
        gp = root / "gt.npz"
        if gp.is_file():
            try:
                with np.load(gp) as z:
                    self.gt = {k: z[k] for k in z.files}
            except Exception as exc:  # noqa: BLE001
                raise DatasetError(f"unreadable ground truth {gp}: {exc}") from None
            for k, v in self.gt.items():
                if v.shape[:1] != (n,):
                    raise DatasetError(f"{gp}: {k!r} has leading size {v.shape[:1]}, expected {n} (one per frame)")
        self.landmark_names = tuple(meta.get("landmark_names", ()))
        # novel views
        self.novel = None
        nd = root / "novel"
        if nd.is_dir():
            nm = meta.get("novel")
            if not isinstance(nm, dict) or not isinstance(nm.get("num_views"), int):
                raise DatasetError(f"{mp}: a novel/ directory exists but 'novel.num_views' is missing")
            self.novel = ViewSet(nd, nm["num_views"], self.width, self.height, ext, "frames", cache_size, verify)
            fi = self.novel.extra.get("frame_index")
            if fi is None or fi.shape != (nm["num_views"],) or fi.min() < 0 or fi.max() >= n:
                raise DatasetError(f"{nd / 'cameras.npz'}: 'frame_index' must be [num_views] indices of frames")
            self.novel.frame_index = fi.astype(np.int64)
            self.novel.gt = None
            ngp = nd / "gt.npz"
            if ngp.is_file():
                with np.load(ngp) as z:
                    self.novel.gt = {k: z[k] for k in z.files}

    # -- access --------------------------------------------------------------------
    def __getitem__(self, i) -> Frame:
        i = self._check_index(i)
        t = None if self.fps is None else i / self.fps
        return Frame(i, self.image(i), self.masks(i), self.K[i], self.w2c[i], t)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def audio(self):
        """(samples float32 [S] mono, sample rate) of the clip's sound track."""
        if self.audio_path is None:
            return None
        from ..audio import load as load_audio

        return load_audio(self.audio_path, sample_rate=None)

    def fingerprint(self, samples: int = 8, chunk: int = 4096) -> str:
        """A cheap content hash (sha256 hex) of the dataset: meta.json, splits.json, the
        cameras and ground truth, the name and size of every file, and the first and last
        ``chunk`` bytes of the audio and of ``samples`` frames spread over the clip. Any
        edit of the metadata, the splits, the cameras, a frame count or a file size
        changes it; it reads about ``2 * chunk * (samples + 1)`` bytes of the media, so
        a re-encoded frame of the same size can slip through."""
        import hashlib

        h = hashlib.sha256()
        for name in ("meta.json", "splits.json", "cameras.npz", "gt.npz"):
            if (self.root / name).is_file():
                _hash_part(h, name, (self.root / name).read_bytes())
        listing = sorted((str(q.relative_to(self.root)), q.stat().st_size) for q in self.root.rglob("*")
                         if q.is_file() and not q.name.startswith(".") and "preview" not in q.relative_to(self.root).parts)
        _hash_part(h, "files", json.dumps(listing).encode())
        if self.audio_path is not None:
            _hash_part(h, "audio", _file_ends(self.audio_path, chunk))
        media = (self.root / self._frames) if self._video is not None else None
        for i in np.unique(np.linspace(0, self.n - 1, min(samples, self.n)).round().astype(int)):
            if media is None:
                _hash_part(h, f"frame{i}", _file_ends(self._image_path(int(i)), chunk))
            _hash_part(h, f"mask{i}", _file_ends(self._mask_path(int(i)), chunk))
        if media is not None:
            _hash_part(h, "video", _file_ends(media, chunk))
        return h.hexdigest()

    # meta.json keys that say how the clip is stored, not what it is
    STORAGE_KEYS = ("image_ext", "frames", "audio")

    def clip_fingerprint(self, chunk: int = 4096) -> str:
        """A content hash (sha256 hex) of what makes the clip this clip, however its frames
        are stored: meta.json without its storage keys, the splits, cameras and ground truth,
        the frame count and the audio's ends. A copy whose frames and masks were re-encoded
        (another image format, a video) keeps it; ``fingerprint`` does not."""
        import hashlib

        h = hashlib.sha256()
        meta = json.loads((self.root / "meta.json").read_text())
        meta = {k: v for k, v in meta.items() if k not in self.STORAGE_KEYS}
        _hash_part(h, "meta", json.dumps(meta, sort_keys=True).encode())
        for name in ("splits.json", "cameras.npz", "gt.npz"):
            if (self.root / name).is_file():
                _hash_part(h, name, (self.root / name).read_bytes())
        _hash_part(h, "frames", str(self.n).encode())
        if self.audio_path is not None:
            _hash_part(h, f"audio{self.audio_path.stat().st_size}", _file_ends(self.audio_path, chunk))
        return h.hexdigest()

    def __repr__(self):
        fps = f", fps={self.fps:g}" if self.fps else ""
        nov = f", novel={len(self.novel)}" if self.novel is not None else ""
        return f"Dataset({str(self.root)!r}, kind={self.kind}, frames={len(self)}{fps}, {self.width}x{self.height}{nov})"


def load(path, cache_size: int = 64, verify: str = "header") -> Dataset:
    """Open and validate a dataset directory.

    ``verify='header'`` (default) opens every image and mask file once to check that it
    is a valid image of the right size; ``'none'`` skips that (faster on huge sets).
    Raises :class:`DatasetError` naming the missing or malformed piece.
    """
    return Dataset(Path(path), cache_size=cache_size, verify=verify)


# ----------------------------------------------------------------------------------
# writing


def masks_to_uint8(masks: np.ndarray) -> np.ndarray:
    m = np.multiply(masks, np.float32(255.0), dtype=np.float32)  # a new array: rounded in place
    np.rint(m, out=m)
    np.clip(m, 0, 255, out=m)
    return m.astype(np.uint8)


def tail_splits(frames, heldout: float, *, min_train: int = 2) -> dict:
    """``{"train", "heldout"}`` of ``frames`` (indices in time order) with the last
    ``heldout`` fraction (rounded to whole frames) held out. Refused (ValueError) when
    the train split would have fewer than ``min_train`` frames, or when a non-zero
    fraction holds out no frame at all (``heldout=0`` asks for none)."""
    frames = [int(i) for i in frames]
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {heldout!r}")
    n_held = int(round(len(frames) * heldout))
    if heldout > 0 and n_held == 0:
        raise ValueError(f"holding out {heldout:g} of {len(frames)} frames holds out none; pass 0 to hold out "
                         f"nothing, or at least {0.5 / max(len(frames), 1):.3g} to hold out a frame")
    if len(frames) - n_held < min_train:
        raise ValueError(f"holding out {heldout:g} of {len(frames)} frames leaves {len(frames) - n_held} for "
                         f"training; at least {min_train} are needed (lower the held-out fraction)")
    return {"train": frames[:len(frames) - n_held], "heldout": frames[len(frames) - n_held:]}


def check_splits(splits: dict, n: int) -> dict:
    """``{"train": [...], "heldout": [...]}`` as lists of ints, checked for a dataset of
    ``n`` frames: indices in [0, n), none repeated or in both, and a train split that is
    not empty (an empty one would leave a trainer nothing to learn from, or tempt it to
    learn from every frame, held-out ones included). An empty held-out split is allowed:
    it means none are held out, and evaluation then says so."""
    if not isinstance(splits, dict) or set(splits) - {"train", "heldout"}:
        raise ValueError(f"splits must be a dict with keys 'train' and 'heldout', got {splits!r:.200}")
    out = {}
    for key in ("train", "heldout"):
        v = splits.get(key, [])
        a = np.asarray(v)
        if a.ndim != 1 or (a.size and not (np.issubdtype(a.dtype, np.integer) or bool(np.all(a == np.round(a))))):
            raise ValueError(f"splits[{key!r}] must be a list of frame indices, got {v!r:.200}")
        idx = [int(i) for i in a]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"splits[{key!r}] has indices outside [0, {n}): {bad[:5]}")
        if len(set(idx)) != len(idx):
            raise ValueError(f"splits[{key!r}] repeats frames")
        out[key] = idx
    if not out["train"]:
        raise ValueError(f"the train split is empty ({n} frames, {len(out['heldout'])} held out): "
                         "keep at least one frame for training")
    both = set(out["train"]) & set(out["heldout"])
    if both:
        raise ValueError(f"frames {sorted(both)[:5]} are in both the train and the held-out split")
    return out


class _ViewSetWriter:
    def __init__(self, root: Path, width: int, height: int, image_ext: str):
        self.root, self.width, self.height, self.ext = root, width, height, image_ext
        (root / "frames").mkdir(parents=True)
        (root / "masks").mkdir()
        self.K, self.w2c, self.gt, self.extra = [], [], {}, {}
        self.n = 0

    def encode(self, image, masks) -> tuple[bytes, bytes]:
        """Checked and encoded (frame bytes, mask PNG bytes); safe to call from threads."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != (self.height, self.width, 3):
            raise ValueError(f"image must be uint8 [{self.height}, {self.width}, 3], got {image.dtype} {list(image.shape)}")
        masks = np.asarray(masks)
        if masks.shape != (self.height, self.width, 4):
            raise ValueError(f"masks must be [{self.height}, {self.width}, 4] (head, lower, upper, foreground), got {list(masks.shape)}")
        if masks.dtype != np.uint8:
            masks = masks_to_uint8(masks)
        return encode_image(image, self.ext), encode_image(masks, "png")

    def add(self, image, masks, K, w2c, gt=None, encoded=None, **extra):
        frame_bytes, mask_bytes = encoded if encoded is not None else self.encode(image, masks)
        K, w2c = np.asarray(K, np.float64), np.asarray(w2c, np.float64)
        if K.shape != (3, 3) or w2c.shape != (4, 4):
            raise ValueError(f"K must be [3, 3] and w2c [4, 4], got {list(K.shape)} and {list(w2c.shape)}")
        i = self.n
        (self.root / "frames" / _frame_name(i, self.ext)).write_bytes(frame_bytes)
        (self.root / "masks" / _frame_name(i, "png")).write_bytes(mask_bytes)
        self.K.append(K)
        self.w2c.append(w2c)
        for store, d in ((self.gt, gt or {}), (self.extra, extra)):
            for k, v in d.items():
                store.setdefault(k, []).append(np.asarray(v))
        self.n += 1

    def finish(self):
        arrays = {"K": np.stack(self.K) if self.K else np.zeros((0, 3, 3)),
                  "w2c": np.stack(self.w2c) if self.w2c else np.zeros((0, 4, 4))}
        arrays.update({k: np.stack(v) for k, v in self.extra.items()})
        atomic_save_npz(self.root / "cameras.npz", **arrays)
        if self.gt:
            atomic_save_npz(self.root / "gt.npz", **{k: np.stack(v) for k, v in self.gt.items()})


class DatasetWriter:
    """Write a dataset directory frame by frame.

    >>> w = DatasetWriter(out, width=512, height=512, kind="talking", fps=25)
    >>> w.add_frame(image, masks, K, w2c, gt={"jaw_open": 0.3})   # repeat
    >>> w.add_novel_view(image, masks, K, w2c, frame_index=120)    # optional
    >>> w.close(audio=samples, sample_rate=22050, splits={"train": [...], "heldout": [...]})

    Everything goes to a temporary sibling directory that replaces ``out`` only when
    ``close()`` succeeds (``overwrite=True`` allows replacing an existing dataset).
    """

    def __init__(self, out, width: int, height: int, kind: str = "talking", fps: float | None = None,
                 image_ext: str = "png", overwrite: bool = False, meta: dict | None = None):
        self.out = Path(out)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "talking" and (fps is None or not np.isfinite(fps) or fps <= 0):
            raise ValueError(f"fps must be a positive number for a talking dataset, got {fps!r}")
        if image_ext not in IMAGE_EXTS:
            raise ValueError(f"image_ext must be one of {IMAGE_EXTS}, got {image_ext!r}")
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} already exists (pass overwrite=True / --overwrite to replace it)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.partial-"))
        self.kind, self.fps, self.ext = kind, fps, image_ext
        self.width, self.height = int(width), int(height)
        self.meta = dict(meta or {})
        self.main = _ViewSetWriter(self.tmp, self.width, self.height, image_ext)
        self.novel = None
        self.overwrite = overwrite

    def __len__(self):
        return self.main.n

    def add_frame(self, image, masks, K, w2c, gt: dict | None = None):
        self.main.add(image, masks, K, w2c, gt)

    def encode_frame(self, image, masks) -> tuple[bytes, bytes]:
        """The frame's checked, encoded files, for ``add_encoded_frame``: encoding (the
        slow part) can run in threads while frames are still added in order."""
        return self.main.encode(image, masks)

    def add_encoded_frame(self, encoded: tuple[bytes, bytes], K, w2c, gt: dict | None = None):
        self.main.add(None, None, K, w2c, gt, encoded=encoded)

    def add_novel_view(self, image, masks, K, w2c, frame_index: int, gt: dict | None = None, **extra):
        if self.novel is None:
            self.novel = _ViewSetWriter(self.tmp / "novel", self.width, self.height, self.ext)
        self.novel.add(image, masks, K, w2c, gt, frame_index=int(frame_index), **extra)

    def add_file(self, name: str, data: bytes):
        atomic_write_bytes(self.tmp / name, data)

    def close(self, audio=None, sample_rate: int | None = None, splits: dict | None = None,
              landmark_names=()):
        n = self.main.n
        if n == 0:
            self.abort()
            raise ValueError("no frames were added")
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": self.kind, "num_frames": n,
                "width": self.width, "height": self.height, "frames": "frames", "image_ext": self.ext,
                "mask_channels": list(MASK_CHANNELS), "landmark_names": list(landmark_names)}
        if self.kind == "talking":
            if audio is None or sample_rate is None:
                self.abort()
                raise ValueError("a talking dataset needs audio samples and sample_rate")
            import soundfile as sf

            a = np.asarray(audio, dtype=np.float32)
            sf.write(str(self.tmp / "audio.wav"), np.clip(a, -1.0, 1.0), int(sample_rate), subtype="PCM_16")
            meta["fps"] = float(self.fps)
            meta["audio"] = {"path": "audio.wav", "sample_rate": int(sample_rate)}
        if splits is None:
            splits = {"train": list(range(n)), "heldout": []}
        try:
            splits = check_splits(splits, n)
        except ValueError:
            self.abort()
            raise
        atomic_write_json(self.tmp / "splits.json", splits)
        self.main.finish()
        if self.novel is not None:
            self.novel.finish()
            meta["novel"] = {"num_views": self.novel.n}
        for k, v in self.meta.items():  # extra keys (e.g. "source") never override the core ones
            meta.setdefault(k, v)
        atomic_write_json(self.tmp / "meta.json", meta)
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
