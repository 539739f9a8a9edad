"""Show what the model will see of a clip: one PNG per clip (``run_search.py inspect``).

For any clip (an ``.mp4`` file, a folder or zip archive of them, or an archive locator such as
``a.zip::inner.zip::clip.mp4``) the figure holds, from top to bottom:

1. the ``n_frames`` sampled frames as the feature cache holds them (uint8
   ``frame_height x frame_width``, black bars already removed), the model's centre crop
   drawn on each as a dashed red square;
2. the centre crops themselves (``crop_size x crop_size``): what the model gets at
   validation and test (``fi_data.pipeline.center_crop_frames``: the window starts at row
   ``(H - crop) // 2`` and column ``(W - crop) // 2``; training takes random windows);
3. the first sampled frame decoded at its displayed source size (the very pixels the cache
   resized it from) with the black-bar crop box (``info["crop"]``, green) and the model's
   centre crop mapped back into source pixels (red); beside it the audio input exactly as the
   model gets it (``librosa.display.specshow``, time axis in seconds from ``sample_rate`` and
   ``hop_length``; the padding, when M pads the clip, marked with a dotted line);
4. the clip's facts as text: source, status, flags with their ``fi_data.cache.CLIP_FLAGS``
   meanings, the probe facts (sizes, rotation, frame counts, audio frames, padded share), the
   crop boxes and the preprocessing used (a run's ``preprocessing.json``, or the defaults).

With a face stream (``PreprocessParams.frames`` ``"face"`` or ``"both"``, ``fi_data.faces``)
the figure also shows the face crops (``face_size x face_size``) as cached, with the model's
centre crop of them drawn dashed in cyan, and those centre crops; with ``"face"`` they are
the cached frames themselves (rows 1 and 2 are face crops and there is no whole frame), with
``"both"`` they are two more rows after the whole frames'. On the source frame the clip's face
box (``info["face"]``, source pixels, one square per clip) is drawn in cyan with the face
centre crop mapped back into it (dashed); the text panel gives the box and how it was found
(a face in k of n searched frames, or no face found: the fallback square and the ``no_face``
flag). Whole-frame preprocessing (the default) draws exactly the figure described above.

The features come from :func:`fi_data.cache.extract_clip_features`, the cache's own code, with
a run's recorded preprocessing (:func:`run_preprocessing`) or the defaults
(:func:`default_preprocessing`: ``PreprocessParams()``, crop 128, M = None). With M = None the
audio is shown unpadded (its own T frames; no ``audio_padded_share`` and no ``short_clip``,
which need M).

A clip that cannot be used (a skipped status such as ``unreadable_container``, or an archive
member that cannot be opened) still gets a PNG, holding the text panel only (its status, the
reason and whatever the probe found); inputs that are not clips at all (a path that does not
exist, a file that is neither ``.mp4`` nor ``.zip``, an unreadable archive) get no PNG, only
their reason (:func:`inspect_clips`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from librosa.display import specshow
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fi_data.archives import LOCATOR_SEP, ArchiveError, clear_spools, open_clip, resolve_passwords
from fi_data.cache import CLIP_FLAGS, ClipFeatures, PreprocessParams, extract_clip_features
from fi_data.discovery import find_videos
from fi_data.errors import UserError
from fi_data.faces import FALLBACK_SIDE, FaceBox
from fi_data.params import CROP_SIZE
from fi_data.ffmpeg_tools import MediaError, decode_clip
from fi_data.video import CropBox, evenly_spaced_indices, fit_geometry, source_chain

"""The crop side (pixels) used without ``--run``: ``run_search.py``'s ``--crop-size`` default."""

DPI = 80
"""Resolution of the PNGs (as ``fi_data.sample_plots``)."""

TEXT_LINE_INCHES = 0.175
"""Height of one line of the text panel (monospace, 8 pt, with spacing)."""

_STEP = 0.125  # figure sizes are multiples of 1/8 inch, so that inches x DPI is a whole pixel count


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What a clip is preprocessed with, and where that came from.

    Attributes:
        params: the feature cache's parameters.
        crop_size: side of the model's square centre crop, pixels.
        mfcc_frames: M, the padded audio length in frames; ``None`` shows the audio unpadded.
        origin: how the text panel names it, e.g. ``"run tuner_runs/demo (preprocessing.json)"``.
    """

    params: PreprocessParams
    crop_size: int
    mfcc_frames: int | None
    origin: str


def default_preprocessing() -> Preprocessing:
    """``PreprocessParams()``, crop :data:`CROP_SIZE` and M = None (unpadded audio)."""
    return Preprocessing(PreprocessParams(), CROP_SIZE, None,
                         f"defaults (PreprocessParams(), crop {CROP_SIZE}, M = None: audio unpadded)")


def run_preprocessing(run_dir: str | os.PathLike) -> Preprocessing:
    """A run's recorded preprocessing: ``cache_params``, ``crop_size`` and ``mfcc_frames_mean``
    of ``<run_dir>/preprocessing.json`` (as ``search.predict`` reads them).

    Raises:
        UserError: ``run_dir`` is not a folder, has no ``preprocessing.json`` (the run has not
            retrained yet), or the file is not JSON or lacks / has bad values for those keys.
    """
    run_dir = Path(run_dir)
    record_path = run_dir / "preprocessing.json"
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir}: no such run folder")
    if not record_path.is_file():
        raise UserError(f"--run {run_dir}: no preprocessing.json (written when a run finishes retraining: "
                        "run_search.py run, or retrain --from RUN)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        params = PreprocessParams.from_dict(record["cache_params"])
        crop_size = int(record["crop_size"])
        mfcc_frames = record.get("mfcc_frames_mean")
        mfcc_frames = int(mfcc_frames) if mfcc_frames else None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"--run {run_dir}: {record_path.name} is not a preprocessing record ({type(e).__name__}: "
                        f"{e})") from e
    check_crop_size(params, crop_size, f"{record_path}: crop_size")
    return Preprocessing(params, crop_size, mfcc_frames, f"run {run_dir} ({record_path.name})")


def check_crop_size(params: PreprocessParams, crop_size: int, what: str = "crop size") -> None:
    """Raise :class:`UserError` unless ``1 <= crop_size <=`` the short side of every cached stream
    (``frame_height x frame_width`` frames, ``face_size`` face crops; ``params.frame_shape`` and
    ``params.face_shape``)."""
    for stream, shape in (("frame", params.frame_shape), ("face crop", params.face_shape)):
        if shape is not None and not 1 <= crop_size <= min(shape[1:3]):
            raise UserError(f"{what} {crop_size}: must be between 1 and the cached {stream} size "
                            f"({shape[1]}x{shape[2]} pixels)")


# ---------------------------------------------------------------------------------------
# Geometry


def centre_crop_box(frame_height: int, frame_width: int, crop_size: int) -> CropBox:
    """The model's validation/test crop in cached-frame pixels (``bottom``/``right`` exclusive):
    rows ``(H - c) // 2`` + c, columns ``(W - c) // 2`` + c, as ``fi_data.pipeline.center_crop_frames``.

    Raises:
        ValueError: if ``crop_size`` is not in ``1 .. min(frame_height, frame_width)``.
    """
    if not 1 <= crop_size <= min(frame_height, frame_width):
        raise ValueError(f"crop size {crop_size} does not fit {frame_height}x{frame_width} frames")
    top, left = (frame_height - crop_size) // 2, (frame_width - crop_size) // 2
    return CropBox(top, top + crop_size, left, left + crop_size)


def crop_in_source(bars: CropBox, params: PreprocessParams, crop_size: int) -> tuple[float, float, float, float]:
    """The model's centre crop mapped back into displayed source pixels.

    The cached frame is the picture inside ``bars`` scaled to ``frame_height`` rows (aspect
    kept) and centre-cropped or centre-padded to ``frame_width`` columns
    (``fi_data.video.fit_geometry``); this inverts that map for the centre crop's edges. Parts
    of the crop that fall on padding (a picture narrower than the frame) are clipped to the
    picture.

    Args:
        bars: the black-bar crop box in source pixels (``ClipFeatures.info["crop"]``).
        params: the cache parameters (``frame_height``, ``frame_width``).
        crop_size: the centre crop's side in cached pixels.

    Returns:
        ``(left, top, right, bottom)`` floats in source pixels (right/bottom exclusive edges).

    Raises:
        ValueError: for an empty box or a crop larger than the frames.
    """
    height, width = params.frame_height, params.frame_width
    crop = centre_crop_box(height, width, crop_size)
    box_w, box_h = bars.right - bars.left, bars.bottom - bars.top
    g = fit_geometry(box_w, box_h, height, width)
    sx, sy = box_w / g.scaled_width, box_h / height

    def x_at(column: int) -> float:
        return min(max(bars.left + (column - g.pad_left + g.crop_left) * sx, bars.left), bars.right)

    return (x_at(crop.left), bars.top + crop.top * sy, x_at(crop.right), bars.top + crop.bottom * sy)


def face_crop_in_source(face: dict | FaceBox, face_size: int, crop_size: int) -> tuple[float, float, float, float]:
    """The model's centre crop of a face crop mapped back into displayed source pixels.

    A face crop is the clip's face square (``info["face"]``, source pixels) resized to
    ``face_size x face_size`` (``fi_data.faces.crop_faces``), so a cached pixel is
    ``size / face_size`` source pixels on both axes.

    Args:
        face: the face box (``ClipFeatures.info["face"]`` or a :class:`fi_data.faces.FaceBox`).
        face_size: the cached face crops' side (``PreprocessParams.face_size``).
        crop_size: the centre crop's side in cached pixels.

    Returns:
        ``(left, top, right, bottom)`` floats in source pixels (right/bottom exclusive edges).

    Raises:
        ValueError: for a crop larger than the face crops.
    """
    face = face.to_dict() if isinstance(face, FaceBox) else face
    crop = centre_crop_box(face_size, face_size, crop_size)
    scale = face["size"] / face_size
    return (face["left"] + crop.left * scale, face["top"] + crop.top * scale,
            face["left"] + crop.right * scale, face["top"] + crop.bottom * scale)


def _face_square(face: dict) -> CropBox:
    """The face box dict as a :class:`CropBox` (exclusive bottom/right)."""
    return CropBox(face["top"], face["top"] + face["size"], face["left"], face["left"] + face["size"])


def decode_source_frame(path: str | os.PathLike, info: dict, params: PreprocessParams, index: int, *,
                        timeout_s: float = 120.0, tmp_dir: str | os.PathLike | None = None) -> np.ndarray:
    """One frame at displayed source size, decoded exactly as the cache decodes its sampled frames
    (same filter chain, same ``skip_loop_filter``): :func:`fi_data.video.fit_frames` of it with
    ``info["crop"]`` gives the cached frame.

    Args:
        path: the video file.
        info: the clip's ``ClipFeatures.info`` (``source_size`` ``[w, h]`` is used).
        params: the cache parameters.
        index: 0-based decode index of the frame.

    Returns:
        uint8 RGB ``(h, w, 3)``.

    Raises:
        MediaError: the frame does not decode (``decode_failed`` when ffmpeg gives no frame).
    """
    width, height = info["source_size"]
    dec = decode_clip(path, frame_indices=[int(index)], frame_chain=source_chain(width, height, params.scale_flags),
                      frame_size=(height, width), audio_rate=None, skip_loop_filter=params.skip_loop_filter,
                      timeout_s=timeout_s, tmp_dir=tmp_dir)
    if dec.frames.shape[0] != 1:
        raise MediaError("decode_failed", f"frame {index} did not decode ({dec.frames.shape[0]} frames)")
    return dec.frames[0]


# ---------------------------------------------------------------------------------------
# Features and facts


def _box_text(box: dict | CropBox) -> str:
    b = box.to_dict() if isinstance(box, CropBox) else box
    return (f"columns {b['left']}..{b['right']}, rows {b['top']}..{b['bottom']} "
            f"({b['right'] - b['left']}x{b['bottom'] - b['top']} px)")


def clip_facts(source: str, clip: ClipFeatures | None, prep: Preprocessing, status: str | None = None,
               detail: str = "") -> list[str]:
    """The text panel's lines (also returned by :func:`inspect_clip`).

    Args:
        source: the clip's path or archive locator.
        clip: its features, or ``None`` when it could not be opened.
        prep: the preprocessing used.
        status, detail: override the clip's status and message (an open failure).

    Returns:
        Lines of plain text: ``source``, ``status``, ``flags`` (one indented line per flag with
        its meaning), ``source_size`` / ``coded_size`` / ``rotation``, ``video_frames`` /
        ``frame_count_hint`` and the sampled indices, ``audio_frames`` (and seconds) with M and
        ``audio_padded_share`` when present, the black-bar ``crop`` box, the model's centre
        crop in cached and in source pixels, the input shapes and the preprocessing. With a
        face stream (``frames`` ``"face"`` or ``"both"``) also the face box in source pixels with
        ``face found in k of n searched frames`` (or ``no face found: fallback square``) and the
        model's centre crop of the face crops; with ``"face"`` that replaces the whole frame's.
    """
    params, info = prep.params, (clip.info if clip is not None else {})
    status = status or (clip.status if clip is not None else "open_failed")
    detail = detail or (clip.detail if clip is not None else "")
    lines = [f"source: {source}", f"status: {status}"]
    if detail.strip():
        lines.append(f"detail: {detail.strip().splitlines()[0][:160]}")
    flags = list(clip.flags) if clip is not None else []
    lines.append("flags: " + (", ".join(flags) if flags else "none"))
    lines += [f"  {flag}: {CLIP_FLAGS.get(flag, '(not documented)')}" for flag in flags]
    if "source_size" in info:
        (w, h), (cw, ch) = info["source_size"], info["coded_size"]
        lines.append(f"source_size: {w}x{h} (displayed)   coded_size: {cw}x{ch}   rotation: {info.get('rotation', 0)} deg")
    if "video_frames" in info or "frame_count_hint" in info:
        line = f"video_frames: {info.get('video_frames', '?')} decoded   frame_count_hint: {info.get('frame_count_hint')}"
        if info.get("video_frames"):
            line += f"   sampled indices: {evenly_spaced_indices(info['video_frames'], params.n_frames).tolist()}"
        lines.append(line)
    if "audio_frames" in info:
        seconds = info["audio_frames"] * params.hop_length / params.sample_rate
        line = f"audio_frames: T = {info['audio_frames']} ({seconds:.2f} s at hop {params.hop_length} / {params.sample_rate} Hz)"
        line += f"   M = {prep.mfcc_frames}" if prep.mfcc_frames else "   M = None (unpadded)"
        if "audio_padded_share" in info:
            line += f"   audio_padded_share: {info['audio_padded_share']:.4f}"
        lines.append(line)
    if "crop" in info:
        bars = CropBox(**info["crop"])
        whole = (bars.top, bars.left) == (0, 0) and [bars.right, bars.bottom] == list(info.get("source_size", []))
        lines.append(f"black-bar crop box (source px): {_box_text(bars)}" + ("  = whole frame, no bars" if whole else ""))
        if params.frames != "face":
            left, top, right, bottom = crop_in_source(bars, params, prep.crop_size)
            lines.append(f"model centre crop: {_box_text(centre_crop_box(params.frame_height, params.frame_width, prep.crop_size))}"
                         f" of the {params.frame_width}x{params.frame_height} cached frame = source px x {left:.1f}..{right:.1f}, "
                         f"y {top:.1f}..{bottom:.1f}")
    if "face" in info:
        lines += _face_facts(info["face"], params, prep.crop_size)
    if clip is not None and clip.audio is not None:
        shape = (params.n_frames, prep.crop_size, prep.crop_size, 3)
        video = {"whole": f"video float32 {shape}", "face": f"video float32 {shape} (face crops)",
                 "both": f"video float32 {shape}, face float32 {shape}"}[params.frames]
        lines.append(f"model inputs: audio float32 {tuple(clip.audio.shape)}, {video} in [0, 1]")
    lines.append(f"preprocessing: {prep.origin}")
    faces = f"face crops of {params.face_size}x{params.face_size}"
    frames = f"{params.n_frames} frames of {params.frame_width}x{params.frame_height}"
    frames = {"whole": frames, "face": f"frames face: {params.n_frames} {faces}",
              "both": f"frames both: {frames} + {faces}"}[params.frames]
    lines.append(f"  {params.representation}, n_mfcc {params.n_mfcc}, n_mels {params.n_mels}, sample_rate "
                 f"{params.sample_rate} Hz, n_fft {params.n_fft}, hop {params.hop_length}, {frames} "
                 f"({params.scale_flags}), crop {prep.crop_size}")
    return lines


def _face_facts(face: dict, params: PreprocessParams, crop_size: int) -> list[str]:
    """The face box line (how it was found) and the model's centre crop of the face crops."""
    found, searched = face["found"], face["searched"]
    how = (f"face found in {found} of {searched} searched frames (median box, widened)" if found else
           f"no face found: fallback square (none in {searched} searched frames; upper centre, {FALLBACK_SIDE:g} "
           "of the picture's short side)")
    lines = [f"face box (source px): {_box_text(_face_square(face))}; {how}"]
    s = params.face_size
    if 1 <= crop_size <= s:
        left, top, right, bottom = face_crop_in_source(face, s, crop_size)
        lines.append(f"model face centre crop: {_box_text(centre_crop_box(s, s, crop_size))} of the {s}x{s} face crop "
                     f"= source px x {left:.1f}..{right:.1f}, y {top:.1f}..{bottom:.1f}")
    return lines


# ---------------------------------------------------------------------------------------
# The figure


def _round_up(inches: float) -> float:
    return float(np.ceil(inches / _STEP) * _STEP)


def figure_size(n_frames: int | None, n_lines: int, streams: int = 1) -> tuple[float, float]:
    """The figure's ``(width, height)`` in inches, multiples of 1/8 inch (so a PNG at
    :data:`DPI` is exactly ``width * DPI`` x ``height * DPI`` pixels).

    Args:
        n_frames: frames per clip for the full figure, or ``None`` for the text panel alone.
        n_lines: lines of the text panel.
        streams: cached image streams drawn (two rows each): 1 (whole frames or face crops),
            2 with ``frames="both"``.
    """
    text = 0.5 + TEXT_LINE_INCHES * n_lines
    if n_frames is None:
        return 14.0, _round_up(text)
    return max(14.0, 2.25 * n_frames), _round_up((1.9 + 2.2) * streams + 3.6 + text)


FACE_COLOUR = "tab:cyan"
"""Colour of the face box and of the model's centre crop of the face crops (the whole frame's are red)."""


def _streams(clip: ClipFeatures, params: PreprocessParams) -> list[tuple[str, np.ndarray]]:
    """``[(kind, uint8 (F, h, w, 3)), ...]``: the cached image streams of a clip, ``"whole"`` and/or ``"face"``."""
    if params.frames == "face":
        return [("face", clip.frames)]
    if params.frames == "both" and clip.faces is not None:
        return [("whole", clip.frames), ("face", clip.faces)]
    return [("whole", clip.frames)]


def inspect_figure(source: str, clip: ClipFeatures | None, prep: Preprocessing, source_frame: np.ndarray | None = None,
                   facts: list[str] | None = None) -> Figure:
    """The inspection figure of one clip (Matplotlib object-oriented API; no pyplot state).

    Args:
        source: the clip's path or archive locator (the title).
        clip: its :class:`ClipFeatures`. With ``status == "ok"`` the full figure is drawn (the
            module docstring); otherwise, or with ``None``, the text panel alone.
        prep: the preprocessing used (crop size, M, sample rate and hop for the time axis).
        source_frame: uint8 ``(h, w, 3)`` at displayed source size (:func:`decode_source_frame`)
            to draw the crop boxes on; ``None`` leaves that panel out.
        facts: the text lines (default :func:`clip_facts`).

    Returns:
        A ``Figure`` of :func:`figure_size` inches, constrained layout.

    Raises:
        ValueError: if the crop size does not fit the clip's frames.
    """
    facts = clip_facts(source, clip, prep) if facts is None else facts
    full = clip is not None and clip.status == "ok" and clip.frames is not None
    streams = _streams(clip, prep.params) if full else []
    fig = Figure(figsize=figure_size(clip.frames.shape[0] if full else None, len(facts), max(1, len(streams))),
                 layout="constrained")
    status = clip.status if clip is not None else "open_failed"
    flags = list(clip.flags) if clip is not None else []
    fig.suptitle(f"{source}\nstatus {status}" + (f"; flags: {', '.join(flags)}" if flags else ""), fontsize=10,
                 color="black" if status == "ok" and not flags else "tab:red")
    if not full:
        ax = fig.add_subplot()
        _text_panel(ax, facts)
        return fig

    params = prep.params
    text_h = 0.5 + TEXT_LINE_INCHES * len(facts)
    outer = fig.add_gridspec(2 * len(streams) + 2, 1, height_ratios=[1.9, 2.2] * len(streams) + [3.6, text_h])
    for k, (kind, frames) in enumerate(streams):
        _stream_rows(fig, outer[2 * k], outer[2 * k + 1], kind, frames, prep.crop_size)
    row2 = outer[2 * len(streams)].subgridspec(1, 2, width_ratios=[1, 1.8])
    if source_frame is not None:
        _source_panel(fig.add_subplot(row2[0, 0]), source_frame, clip.info, params, prep.crop_size)
    _audio_panel(fig, fig.add_subplot(row2[0, 1]), clip, prep)
    _text_panel(fig.add_subplot(outer[-1]), facts)
    return fig


def _stream_rows(fig: Figure, cached_spec, crop_spec, kind: str, frames: np.ndarray, crop_size: int) -> None:
    """Two rows of one cached stream: the images with the centre crop drawn on, then the crops."""
    n_frames, height, width = frames.shape[:3]
    crop = centre_crop_box(height, width, crop_size)
    colour, name = ("tab:red", "frame") if kind == "whole" else (FACE_COLOUR, "face crop")
    row0, row1 = cached_spec.subgridspec(1, n_frames), crop_spec.subgridspec(1, n_frames)
    for f in range(n_frames):
        ax = fig.add_subplot(row0[0, f])
        ax.imshow(frames[f])
        ax.add_patch(Rectangle((crop.left - 0.5, crop.top - 0.5), crop_size, crop_size, fill=False,
                               edgecolor=colour, linestyle="--", linewidth=1))
        ax.set_axis_off()
        ax.set_title(f"cached {name} {f + 1} ({width}x{height})" if f == 0 else f"{name} {f + 1}", fontsize=8)
        ax = fig.add_subplot(row1[0, f])
        ax.imshow(frames[f, crop.top:crop.bottom, crop.left:crop.right])
        ax.set_axis_off()
        face = "face " if kind == "face" else ""
        ax.set_title(f"{face}centre crop {crop_size}x{crop_size} (val/test)" if f == 0 else
                     f"{face}centre crop {f + 1}" if face else f"crop {f + 1}", fontsize=8)


def _source_panel(ax, frame: np.ndarray, info: dict, params: PreprocessParams, crop_size: int) -> None:
    h, w = frame.shape[:2]
    ax.imshow(frame)
    bars = CropBox(**info["crop"])
    ax.add_patch(Rectangle((bars.left - 0.5, bars.top - 0.5), bars.right - bars.left, bars.bottom - bars.top,
                           fill=False, edgecolor="lime", linewidth=2, label="black-bar crop box"))
    if params.frames != "face":
        left, top, right, bottom = crop_in_source(bars, params, crop_size)
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="tab:red",
                               linewidth=1.5, linestyle="--", label=f"model centre crop ({crop_size} cached px)"))
    face = info.get("face")
    if face is not None:
        square = _face_square(face)
        how = (f"found in {face['found']} of {face['searched']} frames" if face["found"]
               else "no face found: fallback square")
        ax.add_patch(Rectangle((square.left - 0.5, square.top - 0.5), face["size"], face["size"], fill=False,
                               edgecolor=FACE_COLOUR, linewidth=2, label=f"face box ({how})"))
        if 1 <= crop_size <= params.face_size:
            left, top, right, bottom = face_crop_in_source(face, params.face_size, crop_size)
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                   edgecolor=FACE_COLOUR, linewidth=1.5, linestyle="--",
                                   label=f"model face centre crop ({crop_size} of {params.face_size} face px)"))
    ax.set_title(f"first sampled frame at source size {w}x{h}", fontsize=9)
    ax.set_xticks([0, w - 1])
    ax.set_yticks([0, h - 1])
    ax.tick_params(labelsize=7)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize=7, ncol=1 if face is None else 2,
              frameon=False)


def _audio_panel(fig: Figure, ax, clip: ClipFeatures, prep: Preprocessing) -> None:
    params = prep.params
    rows_name = "log-mel band" if params.representation == "logmel" else "MFCC"
    features = np.asarray(clip.audio)
    features = features[..., 0] if features.ndim == 3 else features
    if features.shape[1] == 0 or not np.any(features):
        ax.text(0.5, 0.5, "no audio features (all zero: " + (", ".join(clip.flags) or "no frames") + ")",
                transform=ax.transAxes, ha="center", va="center", color="tab:red", fontsize=9)
        ax.set_title(f"{params.representation} input {tuple(clip.audio.shape)}", fontsize=9)
        if features.shape[1] == 0:
            ax.set_axis_off()
            return
    limit = max(float(np.percentile(np.abs(features), 99)), 1e-6)
    if features.shape[1] > 1 or params.representation != "mean_mfcc":
        image = specshow(features, x_axis="time", sr=params.sample_rate, hop_length=params.hop_length, ax=ax,
                         cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.set_xlabel(f"time (s): frame x {params.hop_length} / {params.sample_rate} Hz")
        frames_real = int(clip.info.get("audio_frames", features.shape[1]))
        m = features.shape[1]
        if prep.mfcc_frames and frames_real < m:  # padded: mark where the real audio begins / ends
            edge = (m - frames_real) if params.padding == "pre" else frames_real
            ax.axvline(edge * params.hop_length / params.sample_rate, color="black", linestyle=":", linewidth=1.5,
                       label=f"{params.padding}-padding edge ({m - frames_real} of {m} frames padded)")
            ax.legend(loc="upper right", fontsize=7)
        shown = "M = " + (str(prep.mfcc_frames) if prep.mfcc_frames else f"None: unpadded T = {m}")
        ax.set_title(f"{params.representation} input as the model gets it {tuple(clip.audio.shape)}, {shown}",
                     fontsize=9)
    else:  # mean-MFCC vector: one column
        image = specshow(features, x_coords=np.array([0.0, 1.0]), y_coords=np.arange(features.shape[0] + 1.0),
                         ax=ax, cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.set_title(f"mean_mfcc input {tuple(clip.audio.shape)}: time-mean of the standardized MFCCs", fontsize=9)
    ax.set_ylabel(f"{rows_name} index")
    fig.colorbar(image, ax=ax, label=f"standardized value ({params.standardize})")


def _text_panel(ax, facts: list[str]) -> None:
    ax.set_axis_off()
    ax.text(0.0, 1.0, "\n".join(facts), transform=ax.transAxes, ha="left", va="top", family="monospace",
            fontsize=8, linespacing=1.35)


# ---------------------------------------------------------------------------------------
# One clip, many clips


def inspect_clip(source: str | os.PathLike, out_png: str | os.PathLike, prep: Preprocessing | None = None, *,
                 passwords=None, tmp_dir: str | os.PathLike | None = None) -> dict:
    """Open, extract and render one clip into ``out_png`` (:data:`DPI`, parent folders made).

    Args:
        source: a file path or an archive locator (``a.zip::inner.zip::clip.mp4``).
        out_png: where the PNG goes (replaced if it exists).
        prep: the preprocessing (default :func:`default_preprocessing`).
        passwords: for encrypted archives (``fi_data.archives.Passwords``, a spec, or ``None``:
            ``$FI_PASSWORDS``).
        tmp_dir: where archive members and ffmpeg outputs go briefly (default: the system's).

    Returns:
        ``{"source", "png" (Path), "status" ("ok" or the reason), "detail" (first line of the
        message, "" if none), "flags" (tuple), "info"
        (ClipFeatures.info), "facts" (text lines), "text_only" (True when the clip could not
        be used: the PNG holds the text panel alone), "size_px" ((width, height))}``.

    Raises:
        FFmpegNotFoundError: ffmpeg/ffprobe missing. Nothing about the clip itself raises: a
        clip that cannot be opened (``ArchiveError``, ``OSError``) or decoded gets its reason.
    """
    prep = default_preprocessing() if prep is None else prep
    source = str(source)
    clip, status, detail, frame = None, None, "", None
    try:
        with open_clip(source, passwords=passwords, tmp_dir=tmp_dir) as path:
            clip = extract_clip_features(path, prep.params, prep.mfcc_frames, tmp_dir=tmp_dir, source_label=source)
            if clip.status == "ok":
                index = int(evenly_spaced_indices(clip.info["video_frames"], prep.params.n_frames)[0])
                try:
                    frame = decode_source_frame(path, clip.info, prep.params, index, tmp_dir=tmp_dir)
                except MediaError as e:
                    detail = f"source frame: {e.reason} {e.detail}".strip()
    except FileNotFoundError as e:
        status, detail = "missing_file", str(e)
    except (ArchiveError, OSError) as e:
        status, detail = "open_failed", f"{type(e).__name__}: {e}"
    facts = clip_facts(source, clip, prep, status, detail)
    detail = detail or (clip.detail if clip is not None else "")
    fig = inspect_figure(source, clip if status is None else None, prep, frame, facts)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=DPI)
    w, h = fig.get_size_inches()
    return {"source": source, "png": out_png, "status": status or clip.status,
            "detail": detail.strip().splitlines()[0] if detail.strip() else "",
            "flags": tuple(clip.flags) if clip is not None else (), "info": dict(clip.info) if clip else {},
            "facts": facts, "text_only": status is not None or clip.status != "ok",
            "size_px": (round(w * DPI), round(h * DPI))}


def safe_name(name: str) -> str:
    """A file-name-safe form of a clip name: characters other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``; leading dots are dropped; ``"clip"`` when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return cleaned or "clip"


def unique_names(names: list[str]) -> list[str]:
    """:func:`safe_name` of each name, the second, third, ... of an equal name (ignoring case)
    suffixed ``-2``, ``-3``, ... (never equal to another name of the list)."""
    taken, out = set(), []
    for name in map(safe_name, names):
        candidate, k = name, 1
        while candidate.lower() in taken:
            k += 1
            candidate = f"{name}-{k}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def clip_sources(inputs, passwords=None, *, tmp_dir: str | os.PathLike | None = None):
    """The clips named by ``inputs``, in order.

    Files, folders and zip archives go through :func:`fi_data.discovery.find_videos`; an
    input containing ``"::"`` that is not itself a file is an archive locator, taken as one clip
    as given (its name: the last member without ``.mp4``).

    Returns:
        ``(clips, problems)``: ``clips`` a list of ``(name, source)``, ``problems`` a list of
        ``(where, reason)`` for inputs that are not clips (see ``find_videos``).

    Raises:
        PasswordError, UnsupportedArchiveError: as ``find_videos``.
    """
    clips, problems, plain = [], [], []
    for item in map(str, inputs):
        if LOCATOR_SEP in item and not os.path.isfile(item):
            clips.append((Path(item.split(LOCATOR_SEP)[-1]).stem or "clip", item))
        else:
            plain.append(item)
    if plain:
        found, problems = find_videos(plain, passwords, tmp_dir=tmp_dir)
        clips = found + clips
    return list(dict.fromkeys(clips)), [(str(w), r) for w, r in problems]


def inspect_clips(inputs, out_dir: str | os.PathLike, prep: Preprocessing | None = None, *, passwords=None,
                  tmp_dir: str | os.PathLike | None = None, echo=print) -> list[dict]:
    """Inspect every clip of ``inputs`` into ``<out_dir>/<clip name>.png``.

    Names are made safe (:func:`safe_name`) and made unique (``-2``, ``-3``, ...); a PNG of
    the same name in ``out_dir`` is replaced. One line per clip goes to ``echo``:
    ``[inspect] <name>: <png path> (<status>; flags: ...)``, and one per input that is not a
    clip: ``[inspect] <where>: no PNG (<reason>)``. One clip's failure never stops the batch.

    Args:
        inputs: ``.mp4`` files, folders, zip archives or archive locators.
        out_dir: output folder (created).
        prep: the preprocessing (default :func:`default_preprocessing`).
        passwords: for encrypted archives.
        tmp_dir: for archive members and decoder outputs (default: a temporary folder inside
            ``out_dir``, removed afterwards).
        echo: where the lines go (``None``: nowhere).

    Returns:
        One dict per clip as :func:`inspect_clip` returns (with ``"name"``), then one per
        non-clip input: ``{"name", "source", "png": None, "status": reason, "flags": (),
        "text_only": True}``.

    Raises:
        PasswordError, UnsupportedArchiveError: an archive given cannot be read at all.
        FFmpegNotFoundError: ffmpeg/ffprobe missing.
    """
    prep = default_preprocessing() if prep is None else prep
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    passwords = resolve_passwords(passwords)
    echo = echo or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="inspect-tmp-", dir=out_dir) as own_tmp:
        tmp = Path(tmp_dir) if tmp_dir is not None else Path(own_tmp)
        try:
            clips, problems = clip_sources(inputs, passwords, tmp_dir=tmp)
            results = []
            for name, (_, source) in zip(unique_names([n for n, _ in clips]), clips):
                result = {"name": name, **inspect_clip(source, out_dir / f"{name}.png", prep, passwords=passwords,
                                                       tmp_dir=tmp)}
                results.append(result)
                note = (f": {result['detail'][:120]}" if result["detail"] else "") if result["text_only"] else ""
                note += "; text only" if result["text_only"] else ""
                echo(f"[inspect] {name}: {result['png']} ({result['status']}{note}; flags: "
                     f"{', '.join(result['flags']) or 'none'})")
            for where, reason in problems:
                results.append({"name": where, "source": where, "png": None, "status": reason, "flags": (),
                                "text_only": True})
                echo(f"[inspect] {where}: no PNG ({reason})")
        finally:
            if tmp_dir is None:
                clear_spools()  # spooled inner archives live in the folder about to be removed
    return results
