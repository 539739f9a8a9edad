"""One speaker's face box per clip, found on a few of its sampled frames, and the face crops.

The frames are the clip's sampled frames at source size (``_DecodedClip.frames`` in
``fi_data.cache``: uint8 RGB ``(k, h, w, 3)``, e.g. 1280x720) and the picture inside its black
bars (:func:`fi_data.video.detect_bars`); every box here is in those source pixels, and faces
are searched only inside the picture.

1. **Detect** (:func:`detect_faces`, one frame). The detector is OpenCV's LBP frontal-face
   cascade (``lbpcascade_frontalface``, 24x24 window) in scikit-image's copy
   (``skimage.data.lbp_frontal_face_cascade_filename()``, run by ``skimage.feature.Cascade``;
   loaded once per process, on first use). The picture is turned to luma (BT.601) and shrunk
   with ``INTER_AREA`` so its long side is :data:`DETECT_WIDTH` (320: 320x180 for 16:9,
   320x240 for 4:3; never enlarged); windows from the larger of the cascade's 24 pixels and
   :data:`MIN_FACE_FRACTION` of the short side up to the whole short side are tried, each
   :data:`DETECT_SCALE_FACTOR` times the last, at every position (:data:`DETECT_STEP_RATIO`),
   and a face must be found by :data:`DETECT_MIN_NEIGHBORS` overlapping windows.
2. **One box per clip** (:func:`face_box`). :data:`DETECT_FRAMES` frames, evenly spread over the
   sampled ones (:func:`fi_data.video.evenly_spaced_indices`), are searched; in each the largest
   detection is kept (the speaker is the biggest face: First Impressions clips are talking
   heads, people behind them are smaller). The box's centre x, centre y and side are the
   per-coordinate medians over the frames with a detection, so with three detections one false
   or stray one (a face on a poster, the speaker turned away) does not move the box. When the
   first two searched frames give the same face (:data:`AGREE_SHIFT`, :data:`AGREE_SIZE`) the
   third is not searched: it could only be outvoted. The second frame is first searched only
   where, and at the sizes at which, a face agreeing with the first can be (``detect_faces(...,
   near=...)``, :data:`NEAR_REACH`; about a twelfth of the cost); only when none is there is the
   whole frame searched (its largest face kept, as for the others). The median side is widened by :data:`FACE_MARGIN` on each side, the square centred on the median
   centre and shifted (never shrunk, unless it is larger than the picture's short side, to which
   it is then clamped) to lie inside the picture. A clip in which no searched frame has a face
   gets the talking-head fallback square (:data:`FALLBACK_SIDE`, :data:`FALLBACK_TOP`:
   horizontally centred, upper part of the picture) and ``found == 0``.
3. **Crop** (:func:`crop_faces`): that square out of every frame, resized to
   ``FACE_SIZE x FACE_SIZE`` with the cache's interpolation (``PreprocessParams.scale_flags``).

Cost and reliability (measured on a 2-core AMD EPYC machine shared with other work, one core
per process; frames made as in ``tests/test_faces.py``): :func:`face_box` on three of a clip's
1280x720 frames takes about 0.24 s (0.23-0.26 s over 10 clips; 0.28 s when no frame has a face), i.e.
about 0.08-0.09 s of CPU per searched frame (grey, shrink and cascade). When the first two
frames agree (:data:`AGREE_SHIFT`; every face clip of the tests) only those two are searched:
0.21 s against 0.29 s for a face-free clip's three, measured side by side on 8 and 4 clips while
the machine was busy with another job; searching the second frame only near the first face
(3-7 ms instead of 72-89 ms on three composites) brings a face clip to about 0.1 s;
:func:`crop_faces` of six frames takes 2 ms. The face of ``skimage.data.astronaut()`` pasted
with its head and shoulders onto cluttered random backgrounds (smooth colour noise and solid
rectangles) at random places with the whole widened head square inside the frame, face side 10%
to 45% of the 720-pixel height, two fifths of the frames darkened to 0.6x or brightened to 1.4x, was
found as the largest detection, centred on the face, on 360 of 360 frames (three seeds of 120),
and on 40 of 40 in the test. Faces allowed to touch the frame's edge (the head cut off) were
found on 114-116 of 120 (two seeds). Face-free frames (uniform noise, smooth gradients, the cluttered
backgrounds alone) gave no detection on any of 120 (and the test's 24).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from fi_data.params import FACE_SIZE
from fi_data.video import _INTERPOLATION, CropBox, evenly_spaced_indices

DETECT_WIDTH = 320
"""Long side, in pixels, of the grey picture the cascade searches (the picture is only ever shrunk).

At 320x180 (16:9) the smallest face the 24-pixel window fits is 96 source pixels, 13% of a
720-pixel height, and faces down to 10% are still found (module docstring). Detecting on more
pixels costs more and finds false faces: at 427x240 (16:9 to a 240-pixel height, so that 10% of
it is the 24-pixel window) the same search took 1.5-1.8x as long, found 1-2 more of 120 faces
touching the frame's edge (118 vs 116-117), and gave false detections on 2-8 of 40 face-free
frames (0 at 320x180).
"""

AGREE_SHIFT = 0.25
"""Two frames' faces agree when their centres are within this share of their mean side of each
other and their sides within :data:`AGREE_SIZE` of each other; then the search stops there.

A talking head moves little between frames seconds apart (the composites of the tests: the same
place; a speaker who leans moves a fraction of the face's side), while a false detection or a
face behind the speaker sits elsewhere or is much smaller. With the first two searched frames
agreeing, a third could only be the odd one out, which the median would discard, so the box is
the same (their mean) and the third search is saved: about a third of the face search on clips
with a visible face, the usual case (``benchmarks/bench_preprocess.py`` prints the cost).
"""

AGREE_SIZE = 1.25
"""Largest ratio of two agreeing faces' sides (see :data:`AGREE_SHIFT`)."""

NEAR_REACH = 1.25
"""Half side, as a multiple of the first face's side, of the square in which the second searched
frame is first searched for a face that agrees with it (``detect_faces(..., near=...)``).

An agreeing face's centre lies within ``AGREE_SHIFT`` x their mean side (at most 0.28 of the
first side) of the first one's and its side is at most ``AGREE_SIZE`` x the first (its half side
0.63): it lies within 0.91 sides of the first centre; the rest leaves room for the overlapping
windows :data:`DETECT_MIN_NEIGHBORS` asks for.
"""

DETECT_FRAMES = 3
"""How many of a clip's sampled frames are searched for the face, evenly spread.

Three is the fewest that lets the median outvote one false detection (and survive a missing
one). Each frame searched costs one detection, about 0.08 s (module docstring): all six default
frames would double the cost per clip, for little gain, since a talking head barely moves.
"""

DETECT_SCALE_FACTOR = 1.15
"""Ratio between successive window sizes tried by the cascade.

Measured on pasted-face frames at 320x180 (module docstring): with the head inside the frame,
1.15 found 360 of 360 at 0.08 s of CPU per frame, 1.1 found 238 of 240 at 0.13-0.15 s. With
faces anywhere, touching the edge, 1.1 found 114-118 of 120 and 1.15 114-116; 1.2 missed 2
of 40 (1.25, at 427x240, 4 of 40); a coarser position step (``step_ratio`` 1.2 with 1.1, 1.5
with 1.2) missed 6 of 120 and 13 of 40 for a 1.3-3x saving.
"""

DETECT_STEP_RATIO = 1.0
"""Position step of the cascade's windows, as skimage's ``step_ratio`` (1: every position)."""

DETECT_MIN_NEIGHBORS = 4
"""Overlapping windows needed to accept a face (skimage's ``min_neighbor_number`` default).

3 found about as many faces (116 of 120 where 4 found 114-117) and, in one of three runs, a
false face on 1 of 40 face-free frames; 4 gave none in any run.
"""

CASCADE_WINDOW = 24
"""The LBP cascade's window side in pixels (``<width>``/``<height>`` of its XML): the smallest
face it can find at the detection scale."""

MIN_FACE_FRACTION = 0.1
"""Smallest face side searched, as a share of the picture's short side (its height when landscape).

A talking head's face is 20-50% of the picture height; faces below a tenth are people in the
background, and the small windows are where false faces come from (see :data:`DETECT_WIDTH`).
At 16:9 (320x180) the 24-pixel window (:data:`CASCADE_WINDOW`, 13% of 180) is the larger limit;
at 4:3 (320x240) both are 24 pixels, as for a portrait picture (180x320, short side 180); a
larger limit only applies to pictures whose short side shrinks to more than 240 pixels.
"""

FACE_MARGIN = 0.25
"""How much the detected square is widened on each side, as a share of its side (1.5x the side in all).

The cascade's box is tight on the eyes, nose and mouth (from the brows to just below the lips,
cheek to cheek): it leaves out the forehead, hair, chin and jaw, which carry much of what an
observer reads from a face (expression, grooming, head pose). A quarter on each side gives a
head-and-hair crop without much background, and room for the detection's jitter of a few
pixels between frames.
"""

FALLBACK_SIDE = 0.6
"""Side of the no-face fallback square, as a share of the picture's short side.

In a talking-head video the head usually fills the central upper part of the picture; 0.6 of
the height (432 of 720 pixels) holds a head whose face box is up to 40% of the height (the square
is 1.5 face sides), so the crop is at worst a loose close-up.
"""

FALLBACK_TOP = 0.1
"""Top of the fallback square, as a share of the picture's height below its top edge.

The fallback square is horizontally centred and spans 10% to 70% of a landscape picture's
height, so its middle (40%) sits a little above the centre, where talking-head framing puts the
face (eyes near a third of the height from the top, the rule of thirds).
"""

_CASCADE = None
"""The ``skimage.feature.Cascade``, loaded by :func:`_cascade` on first use (one per process)."""


def _cascade():
    """The LBP frontal-face cascade, loaded once per process (it is only read while detecting)."""
    global _CASCADE
    if _CASCADE is None:
        from skimage import data as skdata, feature as skfeature
        _CASCADE = skfeature.Cascade(skdata.lbp_frontal_face_cascade_filename())
    return _CASCADE


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """One clip's face square in source pixels: rows ``top:top + size``, columns ``left:left + size``.

    The square always lies inside the picture box it was found in (and so inside the frame).

    Attributes:
        top, left: its upper-left corner, source pixels.
        size: its side, source pixels (>= 1).
        found: how many searched frames had a face (0: the fallback square).
        searched: how many distinct frames were searched.
    """

    top: int
    left: int
    size: int
    found: int
    searched: int

    @property
    def fallback(self) -> bool:
        """True when no searched frame had a face and the box is the fallback square."""
        return self.found == 0

    def to_dict(self) -> dict:
        """``{"top", "left", "size", "found", "searched"}`` as plain ints (for the cache manifest)."""
        return {k: int(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> FaceBox:
        """The inverse of :meth:`to_dict` (extra keys are ignored).

        Raises:
            KeyError: for a missing key.
        """
        return cls(*(int(d[f.name]) for f in dataclasses.fields(cls)))


def _check_frames(frames: np.ndarray) -> None:
    """ValueError unless ``frames`` is uint8 RGB ``(n, h, w, 3)`` with nothing empty."""
    if (not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4
            or frames.shape[-1] != 3 or 0 in frames.shape):
        raise ValueError(f"expected uint8 RGB frames (n, h, w, 3), got {getattr(frames, 'dtype', type(frames))} "
                         f"{getattr(frames, 'shape', '')}")


def _picture_box(box: CropBox | None, h: int, w: int) -> CropBox:
    """``box``, or the whole ``h x w`` frame for None; ValueError when it is empty or leaves the frame."""
    if box is None:
        return CropBox(0, h, 0, w)
    if not (0 <= box.top < box.bottom <= h and 0 <= box.left < box.right <= w):
        raise ValueError(f"crop box {box} is not inside {w}x{h} frames")
    return box


def detect_faces(frame: np.ndarray, box: CropBox | None = None, *,
                 near: tuple[float, float, float] | None = None) -> list[tuple[int, int, int, int]]:
    """Every face the cascade finds in one frame, searched only inside ``box``.

    Method and parameters: the module docstring and :data:`DETECT_WIDTH`,
    :data:`MIN_FACE_FRACTION`, :data:`DETECT_SCALE_FACTOR`, :data:`DETECT_STEP_RATIO`,
    :data:`DETECT_MIN_NEIGHBORS`.

    Args:
        frame: uint8 RGB ``(h, w, 3)`` at source size.
        box: the picture inside the black bars (:func:`fi_data.video.detect_bars`), in the
            frame's pixels; None: the whole frame.
        near: ``(centre y, centre x, side)`` of a face found in another frame, in the frame's
            pixels: search only where a face that agrees with it (:func:`_agree`) can be, i.e.
            the square of :data:`NEAR_REACH` times its side on each side of its centre, with
            windows from its side / :data:`AGREE_SIZE` to its side x :data:`AGREE_SIZE`, on the
            same shrunk picture as the whole search (so a face found there is found as the
            whole search finds it). About a tenth of the whole search's windows.

    Returns:
        ``[(top, left, height, width), ...]`` in the frame's pixels (ints), each inside ``box``,
        in the cascade's order; empty when there is no face (or the picture is too small to hold
        a 24-pixel window once shrunk).

    Raises:
        ValueError: for a frame that is not uint8 ``(h, w, 3)``, a box outside it, or a
            ``near`` side that is not a positive number.
    """
    if (not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3
            or frame.shape[-1] != 3 or 0 in frame.shape):
        raise ValueError(f"expected one uint8 RGB frame (h, w, 3), got {getattr(frame, 'dtype', type(frame))} "
                         f"{getattr(frame, 'shape', '')}")
    box = _picture_box(box, *frame.shape[:2])
    ph, pw = box.bottom - box.top, box.right - box.left
    scale = min(1.0, DETECT_WIDTH / max(ph, pw))
    sw, sh = max(1, round(pw * scale)), max(1, round(ph * scale))
    short = min(sw, sh)
    min_side = max(CASCADE_WINDOW, round(MIN_FACE_FRACTION * short))
    if short < min_side:
        return []
    grey = cv2.cvtColor(np.ascontiguousarray(frame[box.top:box.bottom, box.left:box.right]), cv2.COLOR_RGB2GRAY)
    if (sw, sh) != (pw, ph):
        grey = cv2.resize(grey, (sw, sh), interpolation=cv2.INTER_AREA)
    fy, fx = ph / sh, pw / sw  # source pixels per detection pixel, per axis
    r0 = c0 = 0  # the searched part's corner in the shrunk picture
    max_side = short
    if near is not None:
        cy, cx, side = near
        if not side > 0:
            raise ValueError(f"near: the face side must be a positive number, got {side!r}")
        y, x, s = (cy - box.top) / fy, (cx - box.left) / fx, side / ((fy + fx) / 2)
        r0, c0 = max(0, int(y - NEAR_REACH * s)), max(0, int(x - NEAR_REACH * s))
        r1, c1 = min(sh, int(np.ceil(y + NEAR_REACH * s))), min(sw, int(np.ceil(x + NEAR_REACH * s)))
        grey = grey[r0:r1, c0:c1]
        min_side = max(min_side, int(s / AGREE_SIZE))
        max_side = min(max_side, int(np.ceil(s * AGREE_SIZE)), *grey.shape)
        if max_side < min_side:
            return []
    found = _cascade().detect_multi_scale(img=np.ascontiguousarray(grey), scale_factor=DETECT_SCALE_FACTOR,
                                          step_ratio=DETECT_STEP_RATIO, min_size=(min_side, min_side),
                                          max_size=(max_side, max_side), min_neighbor_number=DETECT_MIN_NEIGHBORS)
    faces = []
    for d in found:
        top = min(box.bottom - 1, box.top + round((r0 + d["r"]) * fy))
        left = min(box.right - 1, box.left + round((c0 + d["c"]) * fx))
        height = max(1, min(box.bottom - top, round(d["height"] * fy)))
        width = max(1, min(box.right - left, round(d["width"] * fx)))
        faces.append((int(top), int(left), int(height), int(width)))
    return faces


def _fit_square(cy: float, cx: float, side: float, box: CropBox) -> tuple[int, int, int]:
    """``(top, left, size)`` of the square of ``side`` centred at ``(cy, cx)``, moved inside ``box``.

    The side is rounded and clamped to ``[1, box's short side]``; the square is then shifted,
    not shrunk, until it lies inside the box.
    """
    size = int(min(max(1, round(side)), box.bottom - box.top, box.right - box.left))
    top = int(min(max(round(cy - size / 2), box.top), box.bottom - size))
    left = int(min(max(round(cx - size / 2), box.left), box.right - size))
    return top, left, size


def fallback_box(box: CropBox, searched: int = 0) -> FaceBox:
    """The no-face square for a picture box: :data:`FALLBACK_SIDE` of its short side, horizontally
    centred, top :data:`FALLBACK_TOP` of its height below its top edge (shifted up if it would
    leave the box), with ``found == 0``.

    For a 1280x720 picture without bars: ``top=72, left=424, size=432``.
    """
    ph, pw = box.bottom - box.top, box.right - box.left
    size = max(1, round(FALLBACK_SIDE * min(ph, pw)))
    top = min(box.top + round(FALLBACK_TOP * ph), box.bottom - size)
    left = box.left + (pw - size) // 2
    return FaceBox(int(top), int(left), int(size), 0, int(searched))


def face_box(frames: np.ndarray, box: CropBox | None = None, *, detect_frames: int = DETECT_FRAMES) -> FaceBox:
    """The speaker's face square for one clip, from ``detect_frames`` of its sampled frames.

    Method: the module docstring (largest face per frame, per-coordinate median over the frames
    with a face, widened by :data:`FACE_MARGIN`, fitted inside the picture; :func:`fallback_box`
    when no frame has a face).

    Args:
        frames: uint8 RGB ``(n, h, w, 3)``, the clip's sampled frames at source size.
        box: the picture inside the black bars, in the frames' pixels; None: the whole frame.
        detect_frames: how many frames to search, evenly spread
            (:func:`fi_data.video.evenly_spaced_indices`); with fewer than that many frames,
            each is searched once.

    Returns:
        A :class:`FaceBox` inside ``box``; ``found`` frames with a face of ``searched``.

    Raises:
        ValueError: for frames that are not uint8 ``(n, h, w, 3)``, a box outside them, or
            ``detect_frames < 1``.
    """
    _check_frames(frames)
    if detect_frames < 1:
        raise ValueError(f"detect_frames must be >= 1, got {detect_frames}")
    box = _picture_box(box, *frames.shape[1:3])
    indices = np.unique(evenly_spaced_indices(len(frames), detect_frames))
    largest = []  # (centre y, centre x, side) of each frame's largest face
    searched = 0
    for i in indices:
        searched += 1
        if searched == 2 and largest:  # first only where a face that agrees with the first can be
            near = [_centre_side(f) for f in detect_faces(frames[i], box, near=largest[0])]
            near = [f for f in near if _agree(largest[0], f)]
            if near:
                largest.append(max(near, key=lambda f: f[2]))
                break  # a third frame could only be outvoted (AGREE_SHIFT)
        faces = detect_faces(frames[i], box)
        if faces:
            largest.append(_centre_side(max(faces, key=lambda f: f[2] * f[3])))
        if len(largest) == 2 and searched == 2 and _agree(*largest):
            break  # a third frame could only be outvoted (AGREE_SHIFT)
    if not largest:
        return fallback_box(box, searched)
    cy, cx, side = np.median(np.asarray(largest, np.float64), axis=0)
    top, left, size = _fit_square(cy, cx, side * (1 + 2 * FACE_MARGIN), box)
    return FaceBox(top, left, size, len(largest), searched)


def _centre_side(face: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """``(centre y, centre x, side)`` of a ``(top, left, height, width)`` detection (side: the mean)."""
    top, left, height, width = face
    return top + height / 2, left + width / 2, (height + width) / 2


def _agree(a: tuple, b: tuple) -> bool:
    """Whether two ``(centre y, centre x, side)`` faces are the same face (:data:`AGREE_SHIFT`)."""
    mean_side = (a[2] + b[2]) / 2
    shift = ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5
    return shift <= AGREE_SHIFT * mean_side and max(a[2], b[2]) <= AGREE_SIZE * min(a[2], b[2])


def crop_faces(frames: np.ndarray, face: FaceBox, size: int = FACE_SIZE, scale_flags: str = "area") -> np.ndarray:
    """The face square out of every frame, resized to ``size x size``.

    Args:
        frames: uint8 RGB ``(n, h, w, 3)`` at source size (the frames ``face`` was found in).
        face: the clip's :class:`FaceBox` (source pixels).
        size: the output side in pixels (default :data:`FACE_SIZE`).
        scale_flags: ``"area"`` (default), ``"bilinear"``, ``"bicubic"``, ``"lanczos"`` or
            ``"neighbor"``, as for :func:`fi_data.video.fit_frames`.

    Returns:
        uint8 RGB ``(n, size, size, 3)``.

    Raises:
        ValueError: for frames that are not uint8 ``(n, h, w, 3)``, ``size < 1``, an unknown
            ``scale_flags``, or a face square that is empty or not inside the frames.
    """
    _check_frames(frames)
    if int(size) != size or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    if scale_flags not in _INTERPOLATION:
        raise ValueError(f"scale_flags must be one of {sorted(_INTERPOLATION)}, got {scale_flags!r}")
    h, w = frames.shape[1:3]
    if not (face.size >= 1 and 0 <= face.top and face.top + face.size <= h
            and 0 <= face.left and face.left + face.size <= w):
        raise ValueError(f"face box {face} is not inside {w}x{h} frames")
    size = int(size)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        square = np.ascontiguousarray(frame[face.top:face.top + face.size, face.left:face.left + face.size])
        out[i] = square if face.size == size else cv2.resize(square, (size, size),
                                                             interpolation=_INTERPOLATION[scale_flags])
    return out
