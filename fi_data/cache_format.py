"""On-disk format of the feature cache, and how to open it.

This module is the contract between the preprocessing stage (``fi_data.cache``, which
writes a cache) and everything that reads one (the input pipeline, the search, predict).
It only reads and writes arrays; it never decodes audio or video.

Layout of one cache folder (``<cache_root>/<key>/``, ``key`` = hash of the parameters)::

    manifest.json            written last, atomically: its presence marks a complete cache
    train/audio.npy          float32 (n, *audio_shape), e.g. (n, 24, M, 1) for MFCCs
    train/frames.npy         uint8   (n, F, H, W, 3) RGB, e.g. (n, 6, 140, 248, 3)
    train/targets.npy        float32 (n, 5), columns in ``TRAITS`` order, values in [0, 1]
    train/clip_ids.json      list of n clip ids (``<11-char YouTube id>.<NNN>``), row order
    train/faces.npy          uint8   (n, F, S, S, 3) RGB face crops; only in caches built with
                             frames "both" (``fi_data.faces``); the manifest's "face_shape" says
    validation/...           same files
    test/...                 same files

``manifest.json`` holds at least::

    {"format_version": 1, "key": str, "params": {...preprocessing parameters...},
     "traits": [...TRAITS...], "audio_shape": [...], "frame_shape": [F, H, W, 3],
     "face_shape": [F, S, S, 3] or null,
     "mfcc_frames_mean": M, "splits": {"train": {"n": int}, ...},
     "clips": {clip_id: {"split": str, "status": "ok" | reason, "flags": [...]}},
     "versions": {library: version}}

Arrays are opened memory-mapped (``numpy.load(mmap_mode="r")``), so a split of any size is
read lazily and a split that is never asked for (e.g. ``test`` during a search) is never
opened at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from fi_data.errors import UserError
from fi_data.traits import SPLITS, TRAITS

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ARRAY_FILES = ("audio.npy", "frames.npy", "targets.npy")
FACES_FILE = "faces.npy"


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """The cached inputs and targets of one split, row-aligned.

    Attributes:
        name: split name, one of ``SPLITS``.
        audio: float32 array ``(n, *audio_shape)`` (memory-mapped when read from disk).
        frames: uint8 array ``(n, F, H, W, 3)``, RGB.
        targets: float32 array ``(n, 5)`` in ``TRAITS`` order.
        clip_ids: tuple of ``n`` clip ids.
        faces: uint8 array ``(n, F, S, S, 3)``, RGB face crops of the same frames, or ``None``
            (a cache without a face stream).
    """

    name: str
    audio: np.ndarray
    frames: np.ndarray
    targets: np.ndarray
    clip_ids: tuple
    faces: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file + ``os.replace``)."""
    _atomic_write_bytes(Path(path), json.dumps(obj, indent=2, sort_keys=False).encode("utf-8"))


def write_split(cache_dir: str | os.PathLike, split: SplitArrays) -> None:
    """Write one split's four files into ``cache_dir/<split.name>/``, each atomically.

    Raises:
        ValueError: if the arrays disagree in length, have the wrong dtype or rank, or
            hold NaN or Inf (nothing is written in that case).
    """
    n = len(split.clip_ids)
    for label, arr, dtype in (("audio", split.audio, np.float32), ("frames", split.frames, np.uint8),
                              ("targets", split.targets, np.float32)):
        if arr.shape[0] != n:
            raise ValueError(f"split {split.name!r}: {label} has {arr.shape[0]} rows, expected {n} (one per clip id)")
        if arr.dtype != dtype:
            raise ValueError(f"split {split.name!r}: {label} dtype is {arr.dtype}, expected {np.dtype(dtype)}")
    if split.frames.ndim != 5 or split.frames.shape[-1] != 3:
        raise ValueError(f"split {split.name!r}: frames shape {split.frames.shape}, expected (n, F, H, W, 3)")
    if split.faces is not None and (split.faces.dtype != np.uint8 or split.faces.ndim != 5
                                    or split.faces.shape[:2] != split.frames.shape[:2] or split.faces.shape[-1] != 3):
        raise ValueError(f"split {split.name!r}: faces are {split.faces.dtype} {split.faces.shape}, expected uint8 "
                         f"({n}, {split.frames.shape[1]}, S, S, 3)")
    if split.targets.ndim != 2 or split.targets.shape[1] != len(TRAITS):
        raise ValueError(f"split {split.name!r}: targets shape {split.targets.shape}, expected (n, {len(TRAITS)})")
    for label, arr in (("audio", split.audio), ("targets", split.targets)):
        if not np.isfinite(arr).all():
            raise ValueError(f"split {split.name!r}: {label} holds NaN or Inf; refusing to write the cache")
    out = Path(cache_dir) / split.name
    out.mkdir(parents=True, exist_ok=True)
    files = [("audio.npy", split.audio), ("frames.npy", split.frames), ("targets.npy", split.targets)]
    if split.faces is not None:
        files.append((FACES_FILE, split.faces))
    for fname, arr in files:
        tmp = out / (fname + f".tmp{os.getpid()}.npy")
        np.save(tmp, np.ascontiguousarray(arr))
        os.replace(tmp, out / fname)
    write_json_atomic(out / "clip_ids.json", list(split.clip_ids))


class FeatureCache:
    """A complete cache folder, opened read-only.

    Args:
        cache_dir: the folder holding ``manifest.json`` and one sub-folder per split.

    Raises:
        FileNotFoundError: if ``manifest.json`` is missing (the cache was never finished:
            rerun the preprocessing stage, which resumes where it stopped).
        ValueError: if the manifest's format version or trait order differ from this code's.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.path = Path(cache_dir)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: no manifest, so this cache is incomplete or not a cache; "
                "run the preprocessing stage (it resumes an interrupted run)")
        with open(manifest_path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(f"{manifest_path}: cache format_version {version!r}, this toolkit reads {FORMAT_VERSION}")
        traits = tuple(self.manifest.get("traits", ()))
        if traits != TRAITS:
            raise UserError(f"{manifest_path}: traits {traits} differ from TRAITS {TRAITS}")
        self._splits: dict[str, SplitArrays] = {}

    @property
    def params(self) -> dict:
        """The preprocessing parameters the cache was built with (a dict)."""
        return self.manifest["params"]

    @property
    def audio_shape(self) -> tuple:
        """Shape of one audio sample, e.g. ``(24, M, 1)``."""
        return tuple(self.manifest["audio_shape"])

    @property
    def frame_shape(self) -> tuple:
        """Shape of one clip's frames, ``(F, H, W, 3)``."""
        return tuple(self.manifest["frame_shape"])

    @property
    def face_shape(self) -> tuple | None:
        """Shape of one clip's face crops, ``(F, S, S, 3)``, or None when the cache has no face stream."""
        shape = self.manifest.get("face_shape")
        return None if shape is None else tuple(shape)

    def split(self, name: str, mmap: bool = True) -> SplitArrays:
        """Open one split's arrays (memory-mapped unless ``mmap=False``); opened on first use only.

        Raises:
            ValueError: for an unknown split name.
            FileNotFoundError: if a split file is missing, naming the file.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        key = (name, mmap)
        if key not in self._splits:
            folder = self.path / name
            arrays = []
            for fname in ARRAY_FILES:
                p = folder / fname
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: missing from the cache (rebuild it with the preprocessing stage)")
                arrays.append(np.load(p, mmap_mode="r" if mmap else None))
            with open(folder / "clip_ids.json", encoding="utf-8") as f:
                clip_ids = tuple(json.load(f))
            faces = None
            if self.face_shape is not None:
                p = folder / FACES_FILE
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: missing from the cache (rebuild it with the preprocessing stage)")
                faces = np.load(p, mmap_mode="r" if mmap else None)
            audio, frames, targets = arrays
            self._splits[key] = SplitArrays(name, audio, frames, targets, clip_ids, faces)
        return self._splits[key]


def open_cache(cache_dir: str | os.PathLike) -> FeatureCache:
    """Open a finished cache folder; see :class:`FeatureCache` for the errors raised."""
    return FeatureCache(cache_dir)


def write_synthetic_cache(cache_dir: str | os.PathLike, sizes: dict | None = None, *,
                          audio_shape=(24, 40, 1), frame_shape=(6, 140, 248, 3), seed: int = 0,
                          params: dict | None = None, face_size: int | None = None) -> FeatureCache:
    """Write a small random but valid cache (for tests and benchmarks; no video needed).

    Targets are random in [0, 1]; the first trait is made learnable from the mean frame
    brightness and the second from the audio's mean, so tiny models can beat the mean. With
    ``face_size``, face crops ``(F, face_size, face_size, 3)`` are written too, whose mean
    brightness carries the third trait.

    Args:
        cache_dir: folder to create.
        sizes: clips per split, default ``{"train": 16, "validation": 8, "test": 8}``.
        audio_shape, frame_shape: per-sample shapes.
        seed: NumPy seed; the same seed writes the same arrays.
        params: preprocessing parameters to record in the manifest.

    Returns:
        The opened :class:`FeatureCache`.
    """
    sizes = sizes or {"train": 16, "validation": 8, "test": 8}
    rng = np.random.default_rng(seed)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    clips = {}
    for split, n in sizes.items():
        targets = rng.uniform(0.2, 0.8, size=(n, len(TRAITS))).astype(np.float32)
        brightness = (targets[:, 0] * 255).astype(np.uint8)
        frames = np.broadcast_to(brightness[:, None, None, None, None], (n, *frame_shape)).copy()
        frames = np.clip(frames.astype(np.int16) + rng.integers(-10, 10, size=frames.shape), 0, 255).astype(np.uint8)
        audio = rng.normal(size=(n, *audio_shape)).astype(np.float32) + targets[:, 1].reshape(n, *([1] * len(audio_shape)))
        ids = tuple(f"{split[:2]}{i:09d}.{i % 6:03d}" for i in range(n))
        faces = None
        if face_size is not None:
            shape = (n, frame_shape[0], face_size, face_size, 3)
            faces = np.broadcast_to((targets[:, 2] * 255).astype(np.uint8)[:, None, None, None, None], shape).copy()
            faces = np.clip(faces.astype(np.int16) + rng.integers(-10, 10, size=shape), 0, 255).astype(np.uint8)
        write_split(cache_dir, SplitArrays(split, audio, frames, targets, ids, faces))
        clips.update({cid: {"split": split, "status": "ok", "flags": []} for cid in ids})
    manifest = {
        "format_version": FORMAT_VERSION, "key": "synthetic", "params": params or {"synthetic": True},
        "traits": list(TRAITS), "audio_shape": list(audio_shape), "frame_shape": list(frame_shape),
        "face_shape": None if face_size is None else [frame_shape[0], face_size, face_size, 3],
        "mfcc_frames_mean": audio_shape[1] if len(audio_shape) == 3 else None,
        "splits": {s: {"n": n} for s, n in sizes.items()}, "clips": clips, "versions": {"numpy": np.__version__},
    }
    write_json_atomic(cache_dir / MANIFEST_NAME, manifest)
    return open_cache(cache_dir)
