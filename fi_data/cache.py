"""Preprocess every clip once into the resumable feature cache (format: ``fi_data.cache_format``).

:func:`build_cache` turns a clip table into ``<cache_root>/<key>/``, where ``key`` hashes the
:class:`PreprocessParams`, the feature-code version and every clip's (id, split, status,
labels): the same inputs find the finished cache and do no work; a changed parameter or a
re-split makes a new folder.

How a build runs (parallel over clips, resumable, never loses finished work):

1. ``parts/<clip_id>.npz``: each clip's result (standardized unpadded audio features, the
   frames, its status and flags) is written by a worker to a temporary name and renamed
   (``os.replace``), so a part either exists whole or not at all. A rerun after Ctrl-C or
   ``kill -9`` skips the clips whose part exists. Skipped clips get a part too (their
   reason), so they are not retried.
2. When every clip has a part, M (the mean audio frame count of the training split) is
   computed, every split's arrays are assembled and written (``write_split``), and
   ``manifest.json`` is written LAST: its presence is the completion record. Then ``parts/``
   is removed.

Bad clips (the policy is the same in every split; each code is listed in the manifest's
``problems`` summary with the first clip ids):

- skipped (no row in the arrays), ``status`` = the reason: ``missing_file``, ``empty_file``
  (0 bytes), ``unreadable_container`` (e.g. MP4 ``moov`` atom missing, not a media file),
  ``no_video_stream``, ``no_decodable_frames``, ``decode_failed``, ``decode_timeout``,
  ``open_failed`` (the clip opener raised, e.g. a damaged archive member),
  ``unexpected_error``; rows of the clip table whose ``status`` is not ``ok`` keep that status.
- kept, with ``flags`` (each in :data:`CLIP_FLAGS`, with its one-line meaning): audio problems
  (``no_audio_stream``, ``audio_decode_failed``, ``audio_zero_length``,
  ``audio_shorter_than_fft_window``, ``audio_nonfinite``: all-zero audio, which is the mean
  after standardization; ``silent_audio``: zeros of its real length; see ``fi_data.audio``),
  ``short_clip`` (more than :data:`SHORT_CLIP_PADDED_SHARE` = 50% of the M-frame audio input
  is padding; the share is the clip's ``audio_padded_share``; added at assembly, when M is
  known), ``few_decodable_frames`` (fewer than ``n_frames`` decode: indices repeat evenly),
  ``frame_count_mismatch`` (the container's frame count was wrong; frames are spaced over
  those that really decode), ``decode_errors`` (ffmpeg reported errors decoding the clip but
  gave frames; the timestamp complaints of our own outputs on variable-frame-rate clips do not
  count, see ``fi_data.ffmpeg_tools.split_tool_messages``; when the decode skips packets, only
  the pictures it decodes are checked, see ``fi_data.ffmpeg_tools``), ``rotated`` (stored turned with a
  display rotation; decoded upright, ``source_size`` is the displayed size, ``coded_size`` the
  stored one), ``odd_resolution`` (the displayed size is neither 16:9 nor 4:3, or lower than
  the frame height; resized the same way, never stretched), ``mono_audio`` (information only:
  mono and stereo give the same features for the same signal), ``no_face`` (with
  ``frames="face"`` or ``"both"``: no face was found, the face crop is the fallback square of
  ``fi_data.faces``).

Every message (``detail``) names the clip by its source (a path, or an archive locator such as
``train-1.zip::training80_01.zip::<name>.mp4``), never by the temporary copy it was decoded from.

Extraction of one clip (:func:`_extract`) is a short sequence of steps, each one job: probe
(file, headers, sizes, and the packet index that allows skipping packets), decode (for an H.264
MP4 whose packet index is sound, a decode of only the pictures the sampled frames need, else,
or when that run is not clean and whole, one ffmpeg pass that decodes every frame, see
``fi_data.ffmpeg_tools``; a second full pass only when the container's frame count was wrong),
frames (bars, fit, and the face box and crops with ``frames="face"`` or
``"both"``: ``fi_data.faces``), audio (features), flags.

No NaN or Inf enters the cache: features are checked per clip and ``write_split`` checks
every array again before writing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import platform
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fi_data import audio as audio_features
from fi_data.cache_format import (FORMAT_VERSION, MANIFEST_NAME, FeatureCache, SplitArrays, open_cache,
                                  write_json_atomic, write_split)
from fi_data.ffmpeg_tools import MediaError, ProbeInfo, decode_clip, ffmpeg_version, input_url, probe, require_ffmpeg
from fi_data.faces import FaceBox, crop_faces, face_box
from fi_data.locks import FolderLock
from fi_data.params import PreprocessParams  # noqa: F401 - re-exported: callers build caches with it
from fi_data.traits import SPLITS, TRAITS
from fi_data.video import (CropBox, detect_bars, evenly_spaced_indices, fit_frames, is_odd_resolution,
                           source_chain)

FEATURE_VERSION = 3
"""Bumped whenever the extraction code changes its output; part of the cache key.

2: black bars are removed before the resize (``fi_data.video.detect_bars``), which is OpenCV's.
3: rotated clips are decoded at their displayed size (``source_size``; ``coded_size`` and
``rotation`` recorded, flag ``rotated``, ``odd_resolution`` judged on the displayed size);
``decode_errors`` only for real decode errors (not the timestamp complaints of our own outputs
on variable-frame-rate clips); ``short_clip`` and ``audio_padded_share``; messages name the
clip's source, not its temporary copy.
"""

PARTS_DIR, TMP_DIR, ASSEMBLY_DIR = "parts", "tmp", "assembly"
_PARTIAL_PREFIX = ".partial-"
_EXAMPLES = 10  # clip ids listed per problem in the manifest summary

MIN_FREE_BYTES = 256 * 2**20
"""Free space (bytes) below which a clip's failure is blamed on the disk, not the clip: a
First Impressions clip spooled out of its zip takes 2-5 MB and its part file under 1 MB, so
a disk with less than 256 MiB left is too full to tell a broken clip from a truncated one."""

MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM})
"""``OSError`` numbers that are the machine's fault (full disk, quota, read-only, memory):
never a clip's verdict."""


class DiskFullError(OSError):
    """The machine, not a clip, stopped the build (full disk, quota, read-only or no memory).

    Nothing is recorded for the clip at hand, so a rerun with space retries it. The message
    names the folder and the space free and needed.
    """


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _machine_error(e: BaseException, folder: Path, what: str) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``e`` when it is the machine's fault, else None."""
    if isinstance(e, DiskFullError):
        return e
    if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno in MACHINE_ERRNOS):
        return DiskFullError(getattr(e, "errno", None) or errno.ENOMEM,
                             f"{what} in {folder} failed on the machine, not the clip: {type(e).__name__}: {e} "
                             f"({_mib(_free_bytes(folder))} free). Free space (or memory) and rerun the same "
                             "command: finished clips are kept and this one is retried")
    return None


@contextlib.contextmanager
def _machine_errors(folder: Path, what: str):
    """Turn the machine's errors inside the block into :class:`DiskFullError`; others pass."""
    try:
        yield
    except (OSError, MemoryError) as e:
        machine = _machine_error(e, folder, what)
        if machine is None:
            raise
        raise machine from e


def _check_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DiskFullError` when ``folder``'s disk has less than ``needed`` bytes free."""
    free = _free_bytes(folder)
    if free < needed:
        raise DiskFullError(errno.ENOSPC, f"{folder}: {what} needs {_mib(needed)} free on this disk, "
                                          f"{_mib(free)} are. Free space and rerun the same command: finished "
                                          "clips are kept")


SHORT_CLIP_PADDED_SHARE = 0.5
"""A kept clip whose real audio fills less than half of the M-frame model input is flagged
``short_clip``: ``audio_padded_share = max(0, M - T) / M`` above this value.

M (the mean frame count of the training clips with usable audio) is known only when every
clip is done, so the share and the flag are added at assembly (:func:`_finish`) and, for
prediction, by :func:`extract_clip_features` from the cache's M. With the release's 15 s clips
(M about 940 frames at 16 kHz, hop 256) a clip under about 7.5 s is flagged; a 2 s clip is 87%
padding. Clips with no usable audio (``T = 0``, already flagged by their audio problem) get
share 1.0 but no ``short_clip``. For ``mean_mfcc`` nothing is padded (the mean is over the
clip's own frames); the share and flag still say how short the clip is against M.
"""

CLIP_FLAGS: dict[str, str] = {
    "mono_audio": "mono audio track (information only: same features as stereo with the same signal)",
    "rotated": "stored turned, with a display rotation: decoded upright, source_size is the displayed size",
    "odd_resolution": "displayed size neither 16:9 nor 4:3, or lower than the frame height (fitted, never stretched)",
    "audio_decode_failed": "the audio stream would not decode: all-zero audio (the mean), video kept",
    "frame_count_mismatch": "the container's frame count was wrong; frames spaced over those that really decode",
    "few_decodable_frames": "fewer frames decode than are sampled: frames repeat",
    "decode_errors": "ffmpeg reported errors decoding the clip but gave frames (picture may be damaged)",
    "no_audio_stream": "no audio stream: all-zero audio (the mean)",
    "audio_zero_length": "the audio stream decodes to no samples: all-zero audio",
    "audio_shorter_than_fft_window": "audio shorter than one FFT window: all-zero audio",
    "audio_nonfinite": "audio with NaN/Inf samples: all-zero audio",
    "silent_audio": "audio peak below silence_db: zeros of its real length",
    "short_clip": f"over {SHORT_CLIP_PADDED_SHARE:.0%} of the audio input is padding (clip much shorter than "
                  "the training mean M; see audio_padded_share)",
    "no_face": "no face found in the searched frames: the face crop is the upper-centre square (fi_data.faces)",
}
"""Every flag a kept clip can carry -> its meaning in one line (the legend under predict's
table, and the module docstring's list). ``tests/test_clip_flags.py`` checks every flag the code
can emit is here."""


@dataclasses.dataclass(frozen=True)
class ClipFeatures:
    """The model inputs of one clip, exactly as the cache holds them.

    Attributes:
        audio: float32 ``audio_shape(params, M)``, e.g. ``(24, M, 1)``; ``None`` if skipped.
        frames: uint8 ``params.frame_shape`` RGB: ``(n_frames, frame_height, frame_width, 3)``,
            or the face crops ``(n_frames, face_size, face_size, 3)`` with ``frames="face"``;
            ``None`` if skipped.
        status: ``"ok"`` or the reason the clip cannot be used (see the module docstring).
        flags: problems the clip was kept with (the keys of :data:`CLIP_FLAGS`).
        detail: ffmpeg's messages or the exception text, for humans ("" if none). A clip is
            named by its source (e.g. ``train-1.zip::training80_01.zip::<name>.mp4``), never by
            the temporary copy it was decoded from.
        info: ``source_size`` ``[w, h]`` as displayed (after rotation), ``coded_size``
            ``[w, h]`` as stored, ``rotation`` (degrees, 0 when none), ``frame_count_hint``,
            ``video_frames`` (decoded), ``crop`` (the picture inside the black bars,
            ``{"top", "bottom", "left", "right"}`` in displayed source pixels, bottom/right
            exclusive; the whole frame when there are none; see ``fi_data.video.detect_bars``),
            ``audio_frames`` (T before padding), and once M is known ``audio_padded_share``
            (see :data:`SHORT_CLIP_PADDED_SHARE`), ``face`` (the face box in source pixels and
            the frames it was found on, ``fi_data.faces.FaceBox.to_dict``; not with
            ``frames="whole"``); each where known.
        faces: uint8 ``(n_frames, face_size, face_size, 3)`` face crops with ``frames="both"``,
            else ``None``.
    """

    audio: np.ndarray | None
    frames: np.ndarray | None
    status: str
    flags: tuple = ()
    detail: str = ""
    info: dict = dataclasses.field(default_factory=dict)
    faces: np.ndarray | None = None


def _skipped(reason: str, detail: str = "", info: dict | None = None) -> ClipFeatures:
    return ClipFeatures(None, None, reason, (), detail, info or {})


class _Skip(Exception):
    """A step's verdict that the clip cannot be used; ``info`` adds to the clip's info."""

    def __init__(self, reason: str, detail: str = "", **info):
        super().__init__(reason)
        self.reason, self.detail, self.info = reason, detail, info


def _relabel(text: str, path: Path, label: str) -> str:
    """``text`` with the decoded file's name (``file:<abs>``, the absolute or given path)
    replaced by ``label``, the clip's source (e.g. an archive locator)."""
    if not text:
        return text
    for shown in (input_url(path), str(path.absolute()), str(path) if os.sep in str(path) else None):
        if shown and shown != label:
            text = text.replace(shown, label)
    return text


@dataclasses.dataclass(frozen=True)
class _DecodedClip:
    """What the decode step gives the later steps.

    ``frames``: uint8 ``(k, h, w, 3)``, the clip's distinct sampled frames at displayed source
    size; ``indices``: int64 ``(n_frames,)``, which of them (by position) each output frame is;
    ``audio``: float32 PCM ``(n, channels)`` or ``None``; ``audio_error``: ffmpeg's message
    when the audio stream failed and the video was kept, else ``None``; ``errors``: the real
    decode errors of the counting pass ("" when clean).
    """

    n_video_frames: int
    frames: np.ndarray
    indices: np.ndarray
    audio: np.ndarray | None
    audio_error: str | None
    errors: str


def _probe_step(path: Path, timeout_s: float) -> ProbeInfo:
    """The file exists, is not empty and parses: its headers (else :class:`_Skip`)."""
    if not path.is_file():
        raise _Skip("missing_file", str(path))
    if path.stat().st_size == 0:
        raise _Skip("empty_file", str(path))
    try:
        return probe(path, timeout_s, packets=True)
    except MediaError as e:
        raise _Skip(e.reason, e.detail) from None


def _source_info(media: ProbeInfo) -> dict:
    """The clip's sizes and the container's frame count, for its info."""
    return {"source_size": [media.display_width, media.display_height], "coded_size": [media.width, media.height],
            "rotation": media.rotation, "frame_count_hint": media.frame_count_hint}


def _require_video(media: ProbeInfo) -> None:
    """:class:`_Skip` unless the clip has a video stream with a frame size."""
    if not media.has_video:
        raise _Skip("no_video_stream")
    if media.width <= 0 or media.height <= 0:
        raise _Skip("decode_failed", f"ffprobe gives no frame size ({media.width}x{media.height})")


def _decode_step(path: Path, media: ProbeInfo, params: PreprocessParams, *, threads: int, timeout_s: float,
                 tmp_dir) -> _DecodedClip:
    """Decode the clip: count its frames, keep the sampled ones at displayed size, take its audio.

    Pass 1 picks frames by the container's count (right for sound clips) and counts the frames
    that really decode; pass 2 (video only) runs only if that count differs. When only the
    audio stream is undecodable the video is kept (``audio_error`` says why).

    Pass 1 may skip packets (``media.video_packets``, present only when the packets number
    exactly the container's count, so the sampled frames are the same): its count is then the
    packet count and pass 2 never runs. The retry without audio and pass 2 always decode every
    frame.
    """
    width, height = media.display_width, media.display_height  # ffmpeg turns rotated clips upright
    decode = dict(frame_chain=source_chain(width, height, params.scale_flags), frame_size=(height, width),
                  threads=threads, skip_loop_filter=params.skip_loop_filter, timeout_s=timeout_s, tmp_dir=tmp_dir)
    hint = media.frame_count_hint
    guess = evenly_spaced_indices(hint, params.n_frames) if hint else np.zeros(0, np.int64)
    audio_error = None
    try:
        dec = decode_clip(path, frame_indices=guess, audio_rate=params.sample_rate if media.has_audio else None,
                          audio_channels=media.audio_channels, packets=media.video_packets, **decode)
    except MediaError as e:
        if not media.has_audio or e.reason == "decode_timeout":
            raise _Skip(e.reason, e.detail) from None
        try:  # maybe only the audio stream is undecodable: keep the video
            dec = decode_clip(path, frame_indices=guess, audio_rate=None, **decode)
        except MediaError as e2:
            raise _Skip(e2.reason, e2.detail) from None
        audio_error = e.detail
    n = dec.n_video_frames
    if n == 0:
        raise _Skip("no_decodable_frames", dec.errors, video_frames=0)
    indices = evenly_spaced_indices(n, params.n_frames)
    unique = np.unique(indices)
    frames = dec.frames
    if not np.array_equal(unique, np.unique(guess)) or frames.shape[0] != unique.size:
        try:
            again = decode_clip(path, frame_indices=unique, audio_rate=None, **decode)
        except MediaError as e:
            raise _Skip(e.reason, e.detail, video_frames=n) from None
        if again.n_video_frames != n or again.frames.shape[0] != unique.size:
            raise _Skip("decode_failed", f"decoding is not repeatable: {n} then {again.n_video_frames} frames",
                        video_frames=n)
        frames = again.frames
    return _DecodedClip(n, frames, np.searchsorted(unique, indices), dec.audio, audio_error, dec.errors)


def _frames_step(decoded: _DecodedClip, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray | None, CropBox,
                                                                           FaceBox | None]:
    """The model's frames: bars found over the sampled frames and cropped, then the fit, and
    the face crops inside the bars (``params.frames``).

    Returns:
        ``(frames, faces, bars, face)``: uint8 ``params.frame_shape`` (the face crops with
        ``frames="face"``), uint8 ``params.face_shape`` or None, the crop box in source pixels,
        and the :class:`fi_data.faces.FaceBox` (None with ``frames="whole"``).
    """
    box = detect_bars(decoded.frames)
    face = faces = None
    if params.frames != "whole":
        face = face_box(decoded.frames, box)
        faces = np.ascontiguousarray(crop_faces(decoded.frames, face, params.face_size,
                                                params.scale_flags)[decoded.indices])
        if params.frames == "face":
            return faces, None, box, face
    frames = fit_frames(decoded.frames, box, params.frame_height, params.frame_width, params.scale_flags)
    return np.ascontiguousarray(frames[decoded.indices]), faces, box, face


def _audio_step(decoded: _DecodedClip, params: PreprocessParams) -> tuple[np.ndarray, list[str]]:
    """Standardized unpadded features float32 ``(rows, T)`` and the audio flags."""
    if decoded.audio_error is not None:
        return np.zeros((audio_features.n_feature_rows(params), 0), np.float32), []
    return audio_features.waveform_features(decoded.audio, params)


def _flags_step(media: ProbeInfo, decoded: _DecodedClip, audio_flags: list[str],
                params: PreprocessParams) -> tuple[tuple, list[str]]:
    """Every flag of a kept clip (but ``short_clip``, which needs M) and the details behind them."""
    flags, details = [], []
    if media.has_audio and media.audio_channels == 1:
        flags.append("mono_audio")
    if media.quarter_turns:
        flags.append("rotated")
    if is_odd_resolution(media.display_width, media.display_height, params.frame_height):
        flags.append("odd_resolution")
    if decoded.audio_error is not None:
        flags.append("audio_decode_failed")
        details.append(decoded.audio_error)
    hint = media.frame_count_hint
    if hint is not None and hint != decoded.n_video_frames:
        flags.append("frame_count_mismatch")
        details.append(f"container says {hint} frames, {decoded.n_video_frames} decoded")
    if decoded.n_video_frames < params.n_frames:
        flags.append("few_decodable_frames")
    if decoded.errors:
        flags.append("decode_errors")
        details.append(decoded.errors.splitlines()[0])
    return tuple(flags + list(audio_flags)), details


def _extract(path: str | os.PathLike, params: PreprocessParams, *, threads: int, timeout_s: float,
             tmp_dir: str | os.PathLike | None, source_label: str | None = None) -> ClipFeatures:
    """Like :func:`extract_clip_features`, but ``audio`` holds the UNPADDED features ``(rows, T)``.

    ``source_label`` (default ``str(path)``) names the clip in every message (``detail``):
    the archive locator when ``path`` is a temporary copy.
    """
    path = Path(path)
    label = str(path) if source_label is None else str(source_label)
    info: dict = {}
    try:
        media = _probe_step(path, timeout_s)
        info.update(_source_info(media))
        _require_video(media)
        decoded = _decode_step(path, media, params, threads=threads, timeout_s=timeout_s, tmp_dir=tmp_dir)
        info["video_frames"] = decoded.n_video_frames
        frames, faces, box, face = _frames_step(decoded, params)
        features, audio_flags = _audio_step(decoded, params)
        flags, details = _flags_step(media, decoded, audio_flags, params)
    except _Skip as skip:
        return _skipped(skip.reason, _relabel(skip.detail, path, label), {**info, **skip.info})
    info.update(crop=box.to_dict(), audio_frames=int(features.shape[1]))
    if face is not None:
        info["face"] = face.to_dict()
        if face.fallback:
            flags = (*flags, "no_face")
    return ClipFeatures(features, frames, "ok", flags, _relabel("; ".join(details), path, label), info, faces)


def _padding_verdict(audio_frames: int, mfcc_frames: int) -> tuple[float, bool]:
    """``(audio_padded_share, short_clip)`` of a kept clip with T = ``audio_frames`` against M.

    The share is ``max(0, M - T) / M`` rounded to 4 decimals, in [0, 1]; ``short_clip`` is
    true when T > 0 and the share exceeds :data:`SHORT_CLIP_PADDED_SHARE`.
    """
    share = round(max(0, int(mfcc_frames) - int(audio_frames)) / int(mfcc_frames), 4)
    return share, audio_frames > 0 and share > SHORT_CLIP_PADDED_SHARE


def extract_clip_features(path: str | os.PathLike, params: PreprocessParams, mfcc_frames: int | None, *,
                          threads: int = 0, timeout_s: float = 300.0, tmp_dir: str | os.PathLike | None = None,
                          source_label: str | None = None) -> ClipFeatures:
    """The cache's arrays for one video file (used to predict on new clips).

    Args:
        path: a video file (any container ffmpeg reads).
        params: the parameters the cache (and so the model) was made with, e.g.
            ``PreprocessParams.from_dict(cache.params)``.
        mfcc_frames: the cache's M (``manifest["mfcc_frames_mean"]``); unused for mean_mfcc
            (when given there, it still decides ``short_clip``). None: no model's M (e.g.
            ``run_search.py inspect`` without a run): the audio is left unpadded, ``(rows, T, 1)``,
            and neither the padded share nor ``short_clip`` is set.
        threads: ffmpeg decoder threads (0 = ffmpeg's choice).
        timeout_s: limit per ffmpeg/ffprobe run, seconds.
        tmp_dir: where ffmpeg's raw outputs go briefly (default: the system's temp folder).
        source_label: how messages name the clip (default ``str(path)``), e.g. the archive
            locator when ``path`` is a temporary copy of a member.

    Returns:
        A :class:`ClipFeatures`; ``audio`` is padded/truncated to M exactly as in the cache,
        ``info["audio_padded_share"]`` and the ``short_clip`` flag as the cache's manifest has
        them. A clip that cannot be used has ``status`` != ``"ok"`` and ``audio``/``frames`` None.

    Raises:
        FFmpegNotFoundError: if ffmpeg/ffprobe are not installed.
    """
    require_ffmpeg()
    clip = _extract(path, params, threads=threads, timeout_s=timeout_s, tmp_dir=tmp_dir, source_label=source_label)
    if clip.status != "ok":
        return clip
    flags, info = clip.flags, clip.info
    if mfcc_frames:
        share, short = _padding_verdict(info["audio_frames"], mfcc_frames)
        info = {**info, "audio_padded_share": share}
        flags = (*flags, "short_clip") if short else flags
    unpadded = mfcc_frames is None and params.representation != "mean_mfcc"
    audio = np.asarray(clip.audio, np.float32)[:, :, None] if unpadded else \
        audio_features.model_input(clip.audio, params, mfcc_frames)
    return dataclasses.replace(clip, audio=audio, flags=flags, info=info)


# ----------------------------------------------------------------------------------------
# The clip table, the key, and the per-clip parts


def _validated_table(clips: pd.DataFrame) -> pd.DataFrame:
    required = ["clip_id", "split", *TRAITS, "source", "status"]
    missing = [c for c in required if c not in clips.columns]
    if missing:
        raise ValueError(f"clip table lacks columns {missing}; it has {list(clips.columns)}")
    table = clips[required].copy()
    for column in ("clip_id", "source", "status"):
        table[column] = table[column].astype(str)
    bad_split = sorted(set(table["split"]) - set(SPLITS))
    if bad_split:
        raise ValueError(f"clip table has unknown split values {bad_split}; expected {SPLITS}")
    dupes = table["clip_id"][table["clip_id"].duplicated()].unique().tolist()
    if dupes:
        raise ValueError(f"clip table has duplicate clip ids, e.g. {dupes[:5]}")
    unsafe = [c for c in table["clip_id"] if not c or c.startswith(".") or any(ch in c for ch in "/\\\0")]
    if unsafe:
        raise ValueError(f"clip ids must be plain file names (no '/', '\\', NUL, not starting with '.'), "
                         f"got e.g. {unsafe[:5]}")
    labels = table[list(TRAITS)].to_numpy(dtype=np.float64)
    usable = (table["status"] == "ok").to_numpy()  # rows with another status are recorded, never used
    bad = usable & ~(np.isfinite(labels) & (labels >= 0) & (labels <= 1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} usable clips have labels outside [0, 1] or missing, e.g. "
                         f"{table['clip_id'][bad].tolist()[:5]}")
    table["split"] = pd.Categorical(table["split"], categories=list(SPLITS), ordered=True)
    return table.sort_values(["split", "clip_id"], kind="stable").reset_index(drop=True)


def cache_key(clips: pd.DataFrame, params: PreprocessParams) -> str:
    """The cache folder name: ``<representation>-<16 hex digits of SHA-256>``.

    Hashes the format and feature-code versions, ``params`` and each clip's (id, split,
    status, five labels), so a re-split or relabelling makes a new cache. Clip sources
    (paths) are not hashed: moving the dataset keeps the cache.

    Raises:
        ValueError: for a clip table that is missing columns or has bad values.
    """
    table = _validated_table(clips)
    rows = [[r.clip_id, str(r.split), r.status, *[float(getattr(r, t)) for t in TRAITS]]
            for r in table.itertuples(index=False)]
    material = {"format_version": FORMAT_VERSION, "feature_version": FEATURE_VERSION, "params": params.to_dict(),
                "clips": rows}
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()
    return f"{params.representation}-{digest[:16]}"


def _part_path(parts_dir: Path, clip_id: str) -> Path:
    return parts_dir / f"{clip_id}.npz"


def _write_part(parts_dir: Path, clip_id: str, clip: ClipFeatures, params: PreprocessParams) -> None:
    rows = audio_features.n_feature_rows(params)
    features = clip.audio if clip.audio is not None else np.zeros((rows, 0), np.float32)
    frames = clip.frames if clip.frames is not None else np.zeros((0, *params.frame_shape[1:]), np.uint8)
    arrays = {"features": features, "frames": frames}
    if params.face_shape is not None:
        arrays["faces"] = clip.faces if clip.faces is not None else np.zeros((0, *params.face_shape[1:]), np.uint8)
    meta = {"status": clip.status, "flags": list(clip.flags), "detail": clip.detail, **clip.info}
    tmp = parts_dir / f"{_PARTIAL_PREFIX}{os.getpid()}-{clip_id}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, meta=np.array(json.dumps(meta)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, _part_path(parts_dir, clip_id))


def _read_meta(part: Path) -> dict:
    with np.load(part) as npz:
        return json.loads(str(npz["meta"]))


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a worker needs to turn (clip_id, source) into a part file (picklable)."""

    params: PreprocessParams
    parts_dir: Path
    tmp_dir: Path
    open_clip: object
    timeout_s: float

    def run(self, clip_id: str, source: str) -> tuple[str, str, tuple]:
        """Process one clip and write its part file.

        Raises:
            DiskFullError: the disk (or memory) failed, not the clip: nothing is recorded
                for it, so the rerun retries it.
        """
        try:
            with self.open_clip(source) as path:
                try:
                    clip = _extract(path, self.params, threads=1, timeout_s=self.timeout_s,  # parallel over clips
                                    tmp_dir=self.tmp_dir, source_label=source)
                except Exception as e:  # noqa: BLE001 - a bug on one clip must not stop the job
                    clip = _skipped("unexpected_error", _relabel(f"{type(e).__name__}: {e}", Path(path), source))
                self._blame_the_machine(clip_id, clip)  # while a spooled copy still takes its space
        except DiskFullError:
            raise
        except Exception as e:  # noqa: BLE001 - an unreadable source is one clip's problem
            machine = _machine_error(e, self.tmp_dir, f"opening clip {clip_id}")
            if machine is not None:
                raise machine from e
            clip = _skipped("open_failed", f"{type(e).__name__}: {e}")
            self._blame_the_machine(clip_id, clip)
        with _machine_errors(self.parts_dir, f"writing the features of clip {clip_id}"):
            _write_part(self.parts_dir, clip_id, clip, self.params)
        return clip_id, clip.status, clip.flags

    def _blame_the_machine(self, clip_id: str, clip: ClipFeatures) -> None:
        """Raise :class:`DiskFullError` instead of recording a failed clip when the disk is
        (nearly) full or the failure says so: a truncated copy is not a broken clip."""
        if clip.status == "ok":
            return
        if "No space left on device" in (clip.detail or ""):
            raise DiskFullError(errno.ENOSPC, f"clip {clip_id} failed because the disk is full ({clip.detail}); "
                                              "free space and rerun: it will be retried")
        for folder in {self.tmp_dir, self.parts_dir}:
            free = _free_bytes(folder)
            if free < MIN_FREE_BYTES:
                raise DiskFullError(errno.ENOSPC, f"clip {clip_id} failed ({clip.status}) with only {_mib(free)} "
                                                  f"free in {folder} (under {_mib(MIN_FREE_BYTES)}): the disk, not "
                                                  "the clip, is blamed. Free space and rerun the same command: "
                                                  "finished clips are kept and this one is retried")


_WORKER_JOB: _Job | None = None


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds subprocess.run, which kills the running ffmpeg


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _worker_task(item: tuple[str, str]) -> tuple[str, str, tuple]:
    return _WORKER_JOB.run(*item)


def _pool_context():
    # forkserver: workers fork from a fresh server that imported this module once (fast start,
    # and safe even when the parent has TensorFlow's threads running); spawn elsewhere.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from keras.utils import Progbar  # imported only here: workers never load Keras

    return Progbar(total, unit_name="clip", stateful_metrics=["skipped"])


def _run_jobs(todo: list[tuple[str, str]], job: _Job, workers: int, progress: bool) -> None:
    bar = _progress_bar(len(todo), progress)
    done = skipped = 0

    def tick(result: tuple[str, str, tuple]):
        nonlocal done, skipped
        done += 1
        skipped += result[1] != "ok"
        if bar is not None:
            bar.update(done, values=[("skipped", skipped)] if skipped else None)  # shown once a clip is skipped

    if workers == 1:
        for clip_id, source in todo:
            tick(job.run(clip_id, source))
        return
    # No clip can take longer than its six ffmpeg/ffprobe runs at most (two probes, a packet-
    # skipping decode given up and the full decode, the retry without audio, pass 2); waiting longer
    # means a worker died (e.g. killed for memory), which multiprocessing.Pool would otherwise wait
    # out forever.
    stall_s = 6 * job.timeout_s + 600
    pool = _pool_context().Pool(workers, initializer=_init_worker, initargs=(job,))
    try:
        results = pool.imap_unordered(_worker_task, todo, chunksize=1)
        for _ in todo:
            try:
                tick(results.next(timeout=stall_s))
            except multiprocessing.TimeoutError:
                raise RuntimeError(f"no clip finished in {stall_s:g} s: a worker process probably died; rerun to "
                                   "resume (finished clips are kept)") from None
        pool.close()
    except BaseException:  # Ctrl-C or an error: stop the workers; finished parts stay on disk
        pool.terminate()
        raise
    finally:
        pool.join()


# ----------------------------------------------------------------------------------------
# Assembly and the manifest


def _mean_frames(entries: dict, table: pd.DataFrame) -> tuple[int, float]:
    train = table["clip_id"][table["split"] == "train"]
    lengths = [entries[c]["audio_frames"] for c in train
               if entries[c]["status"] == "ok" and entries[c].get("audio_frames", 0) > 0]
    if not lengths:
        raise ValueError(f"none of the {len(train)} training clips has usable audio (all skipped or flagged), so "
                         "the mean MFCC frame count M is undefined")
    exact = float(np.mean(lengths))
    return int(math.floor(exact + 0.5)), exact


def _assemble_split(cache_dir: Path, name: str, ids: list[str], targets: np.ndarray, parts_dir: Path,
                    params: PreprocessParams, m: int, audio_shape: tuple) -> None:
    assembly = cache_dir / ASSEMBLY_DIR
    assembly.mkdir(exist_ok=True)

    def scratch(label: str, dtype, shape: tuple) -> np.ndarray:
        if not ids:
            return np.zeros((0, *shape), dtype)
        # memory-mapped scratch arrays: a 6000-clip split never has to fit in memory
        return np.lib.format.open_memmap(assembly / f"{name}_{label}.npy", "w+", dtype, (len(ids), *shape))

    audio = scratch("audio", np.float32, audio_shape)
    frames = scratch("frames", np.uint8, params.frame_shape)
    faces = None if params.face_shape is None else scratch("faces", np.uint8, params.face_shape)
    for i, clip_id in enumerate(ids):
        with np.load(_part_path(parts_dir, clip_id)) as part:
            audio[i] = audio_features.model_input(part["features"], params, m)
            frames[i] = part["frames"]
            if faces is not None:
                faces[i] = part["faces"]
    write_split(cache_dir, SplitArrays(name, audio, frames, targets, tuple(ids), faces))
    del audio, frames, faces
    shutil.rmtree(assembly, ignore_errors=True)


def _problems(entries: dict) -> dict:
    skipped, flagged = {}, {}
    for clip_id, e in entries.items():
        groups = [(skipped, e["status"])] if e["status"] != "ok" else [(flagged, f) for f in e["flags"]]
        for group, code in groups:
            slot = group.setdefault(code, {"count": 0, "clips": []})
            slot["count"] += 1
            if len(slot["clips"]) < _EXAMPLES:
                slot["clips"].append(clip_id)
    return {"skipped": dict(sorted(skipped.items())), "flagged": dict(sorted(flagged.items()))}


def _versions() -> dict:
    import librosa
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "librosa": librosa.__version__,
            "scipy": scipy.__version__, "pandas": pd.__version__, "ffmpeg": ffmpeg_version(),
            "feature_version": FEATURE_VERSION}


def _finish(cache_dir: Path, table: pd.DataFrame, params: PreprocessParams, key: str) -> dict:
    parts_dir = cache_dir / PARTS_DIR
    entries = {}
    for r in table.itertuples(index=False):
        entry = {"split": str(r.split), "status": r.status, "flags": []}
        if r.status == "ok":
            meta = _read_meta(_part_path(parts_dir, r.clip_id))
            entry.update(meta)
            if not entry["detail"]:
                del entry["detail"]
        entries[r.clip_id] = entry
    m, m_exact = _mean_frames(entries, table)
    for entry in entries.values():  # padding is known only now that M is
        if entry["status"] == "ok":
            share, short = _padding_verdict(entry.get("audio_frames", 0), m)
            entry["audio_padded_share"] = share
            if short:
                entry["flags"] = [*entry["flags"], "short_clip"]
    a_shape = audio_features.audio_shape(params, m)
    f_shape, face_shape = params.frame_shape, params.face_shape
    n_ok = sum(e["status"] == "ok" for e in entries.values())
    per_clip = 4 * int(np.prod(a_shape)) + int(np.prod(f_shape))  # float32 audio + uint8 frames
    per_clip += 0 if face_shape is None else int(np.prod(face_shape))
    largest = max((int((table["split"] == s).sum()) for s in SPLITS), default=0)
    # The final arrays of every split, plus the scratch arrays of the largest one: checked now,
    # because a memory-mapped write into a full disk ends the process with SIGBUS, unexplained.
    _check_space(cache_dir, (n_ok + largest) * per_clip + MIN_FREE_BYTES, "assembling the cache's arrays")
    splits = {}
    for name in SPLITS:
        rows = table[table["split"] == name]
        kept = rows.loc[np.array([entries[c]["status"] == "ok" for c in rows["clip_id"]], dtype=bool)]
        ids = kept["clip_id"].tolist()
        targets = kept[list(TRAITS)].to_numpy(dtype=np.float32).reshape(len(ids), len(TRAITS))
        with _machine_errors(cache_dir, f"assembling the {name} split"):
            _assemble_split(cache_dir, name, ids, targets, parts_dir, params, m, a_shape)
        splits[name] = {"n": len(ids), "skipped": int(len(rows) - len(ids))}
    manifest = {
        "format_version": FORMAT_VERSION, "key": key, "params": params.to_dict(), "traits": list(TRAITS),
        "audio_shape": list(a_shape), "frame_shape": list(f_shape),
        "face_shape": None if face_shape is None else list(face_shape), "mfcc_frames_mean": m,
        "mfcc_frames_mean_exact": m_exact, "splits": splits, "problems": _problems(entries), "clips": entries,
        "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(cache_dir / MANIFEST_NAME, manifest)  # last: the completion record
    return manifest


def _clean_partials(cache_dir: Path) -> None:
    """Remove what an interrupted run may have left half-written (never a finished part).

    ``tmp/`` is kept until the build finishes: a worker of a killed run may still be decoding
    into it, and removing its files would make a good clip look broken.
    """
    shutil.rmtree(cache_dir / ASSEMBLY_DIR, ignore_errors=True)
    for partial in (cache_dir / PARTS_DIR).glob(_PARTIAL_PREFIX + "*"):
        partial.unlink(missing_ok=True)


def build_cache(clips: pd.DataFrame, cache_root: str | os.PathLike, params: PreprocessParams = PreprocessParams(),
                *, open_clip, workers: int | None = None, progress: bool = True,
                timeout_s: float = 300.0) -> Path:
    """Preprocess every clip of the table into a feature cache; resume or reuse when possible.

    Args:
        clips: clip table with columns ``clip_id``, ``split`` (one of ``SPLITS``), the five
            ``TRAITS`` (labels in [0, 1]), ``source`` (str) and ``status`` (``"ok"`` or why
            the clip is unusable; such rows are recorded, not processed). Other columns are
            ignored. Rows are stored sorted by clip id within each split.
        cache_root: folder holding caches; the result is ``cache_root / cache_key(...)``.
        params: the preprocessing parameters.
        open_clip: ``open_clip(source)`` -> context manager yielding the path of a video file,
            e.g. ``fi_data.archives.open_clip`` via ``functools.partial`` or :func:`open_path`.
            It runs in worker processes, so it must be picklable (a module-level function or
            a ``functools.partial`` of one).
        workers: processes decoding clips in parallel (default ``os.cpu_count()``); each
            ffmpeg decodes with one thread: the parallelism is over clips.
        progress: show a ``keras.utils.Progbar`` (count, rate, ETA) and print a summary.
        timeout_s: limit per ffmpeg/ffprobe run on one clip, seconds.

    Returns:
        The finished cache folder (open it with ``fi_data.cache_format.open_cache``).

    Raises:
        FFmpegNotFoundError: at the start, if ffmpeg/ffprobe are not installed.
        ValueError: for a malformed clip table, an opener that cannot be pickled, or when no
            training clip has usable audio (M undefined).
        KeyboardInterrupt: on Ctrl-C, after stopping the workers; rerun to resume.
    """
    require_ffmpeg()
    table = _validated_table(clips)
    key = cache_key(table, params)
    cache_dir = Path(cache_root) / key
    if (cache_dir / MANIFEST_NAME).is_file():
        for folder in (PARTS_DIR, TMP_DIR, ASSEMBLY_DIR):  # left if a run died right after finishing
            shutil.rmtree(cache_dir / folder, ignore_errors=True)
        if progress:
            print(f"Feature cache up to date: {cache_dir}\n{summarize_cache(cache_dir)}")
        return cache_dir
    try:
        pickle.dumps(open_clip)
    except Exception as e:  # noqa: BLE001 - any pickling failure means the same thing here
        raise ValueError(f"open_clip must be picklable (a module-level function or functools.partial), "
                         f"got {open_clip!r}: {e}") from e
    # One build of a cache at a time: a second process waits, then finds the cache finished.
    with FolderLock(cache_dir, "feature cache", wait=True):
        if (cache_dir / MANIFEST_NAME).is_file():
            if progress:
                print(f"Feature cache built by another process: {cache_dir}\n{summarize_cache(cache_dir)}")
            return cache_dir
        return _build_locked(table, cache_dir, params, key, open_clip, workers, progress, timeout_s)


def _build_locked(table, cache_dir: Path, params: PreprocessParams, key: str, open_clip, workers, progress: bool,
                  timeout_s: float) -> Path:
    """The body of :func:`build_cache`, run while its process holds the cache's lock."""
    parts_dir, tmp_dir = cache_dir / PARTS_DIR, cache_dir / TMP_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)
    _clean_partials(cache_dir)
    tmp_dir.mkdir(exist_ok=True)
    todo = [(r.clip_id, str(r.source)) for r in table.itertuples(index=False)
            if r.status == "ok" and not _part_path(parts_dir, r.clip_id).is_file()]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if progress:
        done = int((table["status"] == "ok").sum()) - len(todo)
        print(f"Preprocessing {len(todo)} clips into {cache_dir} with {workers} worker(s)"
              + (f" ({done} already done by an earlier run)" if done else ""))
    job = _Job(params, parts_dir, tmp_dir, open_clip, timeout_s=timeout_s)
    _run_jobs(todo, job, workers, progress)
    manifest = _finish(cache_dir, table, params, key)
    for folder in (PARTS_DIR, TMP_DIR):
        shutil.rmtree(cache_dir / folder, ignore_errors=True)
    if progress:
        print(summarize_cache(manifest))
    return cache_dir


@contextlib.contextmanager
def open_path(source: str | os.PathLike):
    """The clip opener for plain files: yields ``Path(source)`` (picklable; for ``build_cache``)."""
    yield Path(source)


def summarize_cache(cache: FeatureCache | dict | str | os.PathLike) -> str:
    """Text summary of a finished cache: set sizes, M, shapes and the problems found.

    Args:
        cache: a :class:`FeatureCache`, its folder, or its manifest dict.
    """
    manifest = cache if isinstance(cache, dict) else (
        cache if isinstance(cache, FeatureCache) else open_cache(cache)).manifest
    splits, exact = manifest["splits"], manifest.get("mfcc_frames_mean_exact")
    lines = ["Set sizes: " + ", ".join(f"{s} {splits[s]['n']}" + (f" ({splits[s]['skipped']} skipped)"
                                                                 if splits[s].get("skipped") else "")
                                       for s in SPLITS if s in splits),
             f"Mean MFCC frame count over the training set: M = {manifest.get('mfcc_frames_mean')}"
             + (f" ({exact:.2f} before rounding)" if exact is not None else ""),
             f"Audio sample shape {tuple(manifest['audio_shape'])} float32 "
             f"({manifest['params'].get('representation', '?')}), frames {tuple(manifest['frame_shape'])} uint8"]
    problems = manifest.get("problems", {})
    for title, group in (("Skipped clips", problems.get("skipped", {})), ("Kept with flags", problems.get("flagged", {}))):
        if group:
            lines.append(f"{title}: " + ", ".join(f"{code} {v['count']} (e.g. {', '.join(v['clips'][:3])})"
                                                 for code, v in group.items()))
    return "\n".join(lines)

