"""Which video frames to keep, and how they are resized to the model's frame size.

Frame selection: ``n`` frames evenly spaced over the ``N`` frames that really decode (the
container's count is only a hint): frame ``i`` is the centre of the ``i``-th of ``n`` equal
segments, ``floor((i + 0.5) * N / n)``. For ``N = 459, n = 6`` that is 38, 114, 191, 267,
344, 420: the whole clip is covered and the first and last frames (fades, cuts) are avoided.
With ``N < n`` frames, indices repeat evenly (``N = 3``: 0, 0, 1, 1, 2, 2).

Resize, aspect ratio kept (never stretched): scale to the target height ``H`` (140) with the
width that keeps the source's display aspect ratio, ``w' = round(W * SAR * H / h)``; if
``w'`` is wider than the target width (248) the centre ``248`` columns are kept (crop
``floor((w' - 248) / 2)`` from the left), if narrower the frame is centred on black
(pad ``floor((248 - w') / 2)`` on the left, the rest on the right). 16:9 (1280x720) gives
``w' = 249``: one column cropped. 4:3 (960x720) gives ``w' = 187``: 30 black columns left,
31 right. The scaling uses swscale's ``area`` filter (box average: no aliasing when a 720p
frame shrinks about 5x). Frames are stored as uint8 RGB.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

STANDARD_ASPECTS = (16 / 9, 4 / 3)
"""Aspect ratios of the First Impressions V2 clips (1280x720, 960x720); others are flagged."""


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
    """How one source frame maps onto the target frame (all in pixels).

    Attributes:
        scaled_width: width after scaling to the target height with the aspect ratio kept.
        crop_left: columns removed on the left (when ``scaled_width`` > target width).
        pad_left: black columns added on the left (when ``scaled_width`` < target width).
    """

    scaled_width: int
    crop_left: int
    pad_left: int


def fit_geometry(src_width: int, src_height: int, height: int = 140, width: int = 248,
                 sample_aspect: float = 1.0) -> FitGeometry:
    """The scale / centre-crop / centre-pad that :func:`resize_chain` makes ffmpeg apply.

    Raises:
        ValueError: for a non-positive size.
    """
    if min(src_width, src_height, height, width) <= 0 or sample_aspect <= 0:
        raise ValueError(f"sizes must be positive, got source {src_width}x{src_height}, target {width}x{height}")
    scaled = max(1, math.floor(src_width * sample_aspect * height / src_height + 0.5))  # C round()
    return FitGeometry(scaled, max(0, (scaled - width) // 2), max(0, (width - scaled) // 2))


def resize_chain(height: int = 140, width: int = 248, scale_flags: str = "area") -> str:
    """ffmpeg filters doing :func:`fit_geometry` on every frame, ending in rgb24 ``height x width``.

    Written with ffmpeg's own ``iw``/``ih``/``sar`` (the decoded, auto-rotated size), so it
    needs no probing; ``format=rgb24`` comes before crop and pad so they are exact to the
    pixel (no chroma-subsampling alignment).
    """
    return (f"scale=w='max(1\\,round(iw*sar*{height}/ih))':h={height}:flags={scale_flags},setsar=1,"
            f"format=rgb24,crop=w='min(iw\\,{width})':h={height}:exact=1,"
            f"pad=w={width}:h={height}:x='(ow-iw)/2':y=0:color=black")


def is_odd_resolution(src_width: int, src_height: int, height: int = 140, tolerance: float = 0.01) -> bool:
    """True when a source is neither 16:9 nor 4:3 (within ``tolerance``) or lower than ``height``."""
    if src_width <= 0 or src_height <= 0:
        return True
    aspect = src_width / src_height
    standard = any(abs(aspect / a - 1.0) <= tolerance for a in STANDARD_ASPECTS)
    return not standard or src_height < height
