"""Which video frames to keep, the black bars around the picture, and the resize to the model's frame size.

Frame selection: ``n`` frames evenly spaced over the ``N`` frames that really decode (the
container's count is only a hint): frame ``i`` is the centre of the ``i``-th of ``n`` equal
segments, ``floor((i + 0.5) * N / n)``. For ``N = 459, n = 6`` that is 38, 114, 191, 267,
344, 420: the whole clip is covered and the first and last frames (fades, cuts) are avoided.
With ``N < n`` frames, indices repeat evenly (``N = 3``: 0, 0, 1, 1, 2, 2). When
``fi_data.ffmpeg_tools.decode_clip`` skips packets, ``N`` is the packet count, which it then
requires to equal the container's count; otherwise ``N`` is counted by decoding every frame.

The sampled frames come out of ffmpeg at source size (:func:`source_chain`), so that black
bars can be found to the pixel and removed before anything is scaled:

1. **Bars** (:func:`detect_bars`, once per clip over all its sampled frames). Part of the
   release is 960x720 with a 16:9 picture between black bars top and bottom (letterbox); other
   clips have bars left and right (pillarbox). A row (column) is a bar when, over every sampled
   frame, its brightest pixel has luma <= :data:`BAR_LUMA_MAX` and its luma SD is <=
   :data:`BAR_LUMA_SD_MAX`; bars are counted from each edge inward and stop at the first row
   (column) that is not one, so dark rows inside the picture never count. A side whose bars
   would leave less than :data:`MIN_PICTURE_FRACTION` of the frame keeps its bars (no crop on
   that axis): a dark scene is never cropped into nothing. Columns are judged only over the
   rows that remain after the row bars are removed.
2. **Resize** (:func:`fit_frames`), aspect ratio kept (never stretched): the picture inside the
   bars, ``w x h``, is scaled to the target height ``H`` (140) with the width that keeps its
   aspect ratio, ``w' = round(w * H / h)``; if ``w'`` is wider than the target width (248) the
   centre ``248`` columns are kept (crop ``floor((w' - 248) / 2)`` from the left), if narrower
   the picture is centred on black (pad ``floor((248 - w') / 2)`` on the left, the rest on the
   right). 16:9 (1280x720, or 960x720 letterboxed to 960x540) gives ``w' = 249``: one column
   cropped. 4:3 (960x720 without bars) gives ``w' = 187``: 30 black columns left, 31 right.
   The scaling is OpenCV's ``INTER_AREA`` (box average: no aliasing when a 720p frame shrinks
   about 5x). Frames are stored as uint8 RGB.

Cost (``benchmarks/bench_preprocess.py``): passing six source-size frames out of ffmpeg instead
of six small ones, the detection and the resize together add a few percent to a clip's
preprocessing, which is dominated by decoding (every frame, or on a release clip only the
pictures the sampled frames need: ``fi_data.ffmpeg_tools``). The alternatives cost more:
detecting on the small frames gives the bars only to ~5 source pixels and needs a second decode
of every barred clip to crop before the resize; ffmpeg's ``cropdetect`` reports per frame in
the log, so its box could only be applied by a second decode.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

STANDARD_ASPECTS = (16 / 9, 4 / 3)
"""Aspect ratios of the First Impressions V2 clips (1280x720, 960x720); others are flagged."""

BAR_LUMA_MAX = 24
"""Brightest luma (BT.601 from RGB, 0..255) a bar row or column may have in any sampled frame.

The value of ffmpeg's ``cropdetect`` ``limit`` default (24). Black bars decode to RGB 0..1 (video
black, Y = 16, maps to 0); H.264 ringing where the bar meets the picture lifts the last bar rows
to about 11 (measured on a 960x720 letterboxed clip encoded at crf 23). Over six frames spread
across 15 s a real scene row, however dark, almost always has some pixel above 24.
"""

BAR_LUMA_SD_MAX = 2.0
"""Largest luma SD (0..255 levels, over the row's or column's pixels in all sampled frames) of a bar.

Bars are flat: SD 0.1 inside, about 1.4 in the ringing rows next to the picture (same
measurement as :data:`BAR_LUMA_MAX`). A dark scene whose brightest pixels stay below 24 still
has texture and sensor noise of several levels; only a flat, crushed-black region passes both
tests, and cropping it loses nothing.
"""

MIN_PICTURE_FRACTION = 0.5
"""Smallest share of the frame's height (width) that must remain after removing the row (column)
bars, else that axis is not cropped.

The narrowest common pictures stay above it: 2.39:1 in a 4:3 frame keeps 56% of the height,
16:9 in 4:3 keeps 75%, 4:3 in 16:9 keeps 75% of the width. Below it the frame is dark, not
barred (a fade, a night scene), and is left whole. (A portrait phone video pillarboxed in 16:9
keeps 32% of the width and is left with its bars, which gives the same model input: the
picture's height, and so its scale, is the same either way.)
"""

_INTERPOLATION = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                  "lanczos": cv2.INTER_LANCZOS4, "neighbor": cv2.INTER_NEAREST}
"""``PreprocessParams.scale_flags`` (swscale's names) -> the matching OpenCV interpolation."""


def evenly_spaced_indices(n_available: int, n_frames: int) -> np.ndarray:
    """Indices of ``n_frames`` frames evenly spaced over ``n_available`` decoded frames.

    Returns:
        int64 array ``(n_frames,)``, non-decreasing, each in ``[0, n_available)``:
        ``floor((i + 0.5) * n_available / n_frames)`` for ``i = 0 .. n_frames - 1``.

    Raises:
        ValueError: if ``n_available < 1`` or ``n_frames < 1``.
    """
    if n_available < 1 or n_frames < 1:
        raise ValueError(f"need at least one frame to pick from and to pick, got n_available={n_available}, "
                         f"n_frames={n_frames}")
    i = np.arange(n_frames, dtype=np.int64)
    return (2 * i + 1) * n_available // (2 * n_frames)  # exact integer form of floor((i + .5) N / n)


@dataclasses.dataclass(frozen=True)
class FitGeometry:
    """How one picture maps onto the target frame (all in pixels).

    Attributes:
        scaled_width: width after scaling to the target height with the aspect ratio kept.
        crop_left: columns removed on the left (when ``scaled_width`` > target width).
        pad_left: black columns added on the left (when ``scaled_width`` < target width).
    """

    scaled_width: int
    crop_left: int
    pad_left: int


def fit_geometry(src_width: int, src_height: int, height: int = 140, width: int = 248) -> FitGeometry:
    """The scale / centre-crop / centre-pad that :func:`fit_frames` applies to a picture.

    Raises:
        ValueError: for a non-positive size.
    """
    if min(src_width, src_height, height, width) <= 0:
        raise ValueError(f"sizes must be positive, got source {src_width}x{src_height}, target {width}x{height}")
    scaled = max(1, math.floor(src_width * height / src_height + 0.5))  # C round()
    return FitGeometry(scaled, max(0, (scaled - width) // 2), max(0, (width - scaled) // 2))


def source_chain(src_width: int, src_height: int, scale_flags: str = "area") -> str:
    """ffmpeg filters giving every kept frame as rgb24 ``src_width x src_height`` pixels.

    Pass the DISPLAYED size (``fi_data.ffmpeg_tools.ProbeInfo.display_width`` /
    ``display_height``): ffmpeg's auto-rotation turns a rotated clip upright before these
    filters, so a phone clip stored 1280x720 with a 90-degree rotation arrives 720x1280 and
    passes unscaled. For a square-pixel clip (the whole release) the frame passes unscaled. A
    clip with non-square pixels (or a size that disagrees with its display shape) is scaled to
    the largest size of its display aspect ratio that fits the given size and centred on black;
    :func:`detect_bars` then finds that black like any bar. The output size is therefore always
    the one the caller expects. ``format=rgb24`` comes before ``pad`` so the black is exact (no
    chroma subsampling).

    Returns:
        The filter chain (str), for ``fi_data.ffmpeg_tools.decode_clip``'s ``frame_chain``.

    Raises:
        ValueError: for a non-positive size.
    """
    w, h = int(src_width), int(src_height)
    if w <= 0 or h <= 0:
        raise ValueError(f"source size must be positive, got {src_width}x{src_height}")
    return (f"scale=w='min({w}\\,max(1\\,round({h}*dar)))':h='min({h}\\,max(1\\,round({w}/dar)))'"
            f":flags={scale_flags},setsar=1,format=rgb24,pad=w={w}:h={h}:x='(ow-iw)/2':y='(oh-ih)/2':color=black")


@dataclasses.dataclass(frozen=True)
class CropBox:
    """The picture inside a clip's black bars, in source pixels: rows ``top:bottom``, columns ``left:right``.

    ``bottom`` and ``right`` are exclusive, so a frame without bars is ``(0, h, 0, w)``. The
    pixels are those of the frames :func:`source_chain` gives: the source's own (as displayed,
    i.e. after rotation) for a square-pixel clip (every release clip), else the displayed-size
    box it was fitted to.
    """

    top: int
    bottom: int
    left: int
    right: int

    def to_dict(self) -> dict:
        """``{"top", "bottom", "left", "right"}`` as plain ints (the manifest's ``crop``)."""
        return dataclasses.asdict(self)


def _bar_run(luma: np.ndarray, axis_len: int) -> tuple[int, int]:
    """Bars ``(from the start, from the end)`` along axis 1 of ``luma`` ``(n, L, k)``, or ``(0, 0)``."""
    line_max = luma.max(axis=(0, 2))

    def run(order) -> int:
        count = 0
        for i in order:  # stops at the first line too bright, so only edge lines are examined for their SD
            if line_max[i] > BAR_LUMA_MAX or luma[:, i].std() > BAR_LUMA_SD_MAX:
                break
            count += 1
        return count

    first = run(range(axis_len))
    last = run(range(axis_len - 1, first - 1, -1)) if first < axis_len else 0
    if axis_len - first - last < MIN_PICTURE_FRACTION * axis_len:
        return 0, 0
    return first, last


def detect_bars(frames: np.ndarray) -> CropBox:
    """The picture inside the black bars common to all of one clip's sampled frames.

    Rules and thresholds: the module docstring, :data:`BAR_LUMA_MAX`, :data:`BAR_LUMA_SD_MAX`,
    :data:`MIN_PICTURE_FRACTION`.

    Args:
        frames: uint8 RGB ``(n, h, w, 3)``, the clip's sampled frames at source size.

    Returns:
        A :class:`CropBox` in the frames' pixels; ``(0, h, 0, w)`` when there are no bars.

    Raises:
        ValueError: for an array that is not uint8 ``(n, h, w, 3)`` with ``n >= 1``.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"expected uint8 RGB frames (n, h, w, 3), got {frames.dtype} {frames.shape}")
    luma = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])  # BT.601 weights
    h, w = luma.shape[1:]
    top, bottom = _bar_run(luma, h)
    picture = luma[:, top:h - bottom]
    left, right = _bar_run(picture.transpose(0, 2, 1), w)
    return CropBox(top, h - bottom, left, w - right)


def fit_frames(frames: np.ndarray, box: CropBox, height: int = 140, width: int = 248,
               scale_flags: str = "area") -> np.ndarray:
    """Crop ``box`` out of each frame and fit it to ``height x width`` as :func:`fit_geometry` says.

    Args:
        frames: uint8 RGB ``(n, h, w, 3)`` at source size.
        box: the picture to keep (e.g. from :func:`detect_bars`).
        height, width: the target frame size in pixels.
        scale_flags: ``"area"`` (default), ``"bilinear"``, ``"bicubic"``, ``"lanczos"`` or
            ``"neighbor"``: swscale's names, mapped to OpenCV's interpolations.

    Returns:
        uint8 RGB ``(n, height, width, 3)``.

    Raises:
        ValueError: for an unknown ``scale_flags`` or a box outside the frames.
    """
    if scale_flags not in _INTERPOLATION:
        raise ValueError(f"scale_flags must be one of {sorted(_INTERPOLATION)}, got {scale_flags!r}")
    h, w = frames.shape[1:3]
    if not (0 <= box.top < box.bottom <= h and 0 <= box.left < box.right <= w):
        raise ValueError(f"crop box {box} is not inside {w}x{h} frames")
    g = fit_geometry(box.right - box.left, box.bottom - box.top, height, width)
    out = np.zeros((len(frames), height, width, 3), np.uint8)
    kept = min(g.scaled_width, width)
    for i, frame in enumerate(frames):
        picture = np.ascontiguousarray(frame[box.top:box.bottom, box.left:box.right])
        scaled = cv2.resize(picture, (g.scaled_width, height), interpolation=_INTERPOLATION[scale_flags])
        out[i, :, g.pad_left:g.pad_left + kept] = scaled[:, g.crop_left:g.crop_left + kept]
    return out


def is_odd_resolution(src_width: int, src_height: int, height: int = 140, tolerance: float = 0.01) -> bool:
    """True when a source is neither 16:9 nor 4:3 (within ``tolerance``) or lower than ``height``.

    Pass the displayed size (after rotation): a 1280x720 clip shown turned a quarter is 720x1280,
    9:16, and odd. Sizes are pixels; a non-positive size is odd.
    """
    if src_width <= 0 or src_height <= 0:
        return True
    aspect = src_width / src_height
    standard = any(abs(aspect / a - 1.0) <= tolerance for a in STANDARD_ASPECTS)
    return not standard or src_height < height
