"""A demo dataset in the exact First Impressions V2 layout, with learnable, documented content.

:func:`generate_demo` writes, into one folder::

    train-1.zip  ...        outer archives (inner zips STORED, as in the release), each holding
                            up to ``inner_per_outer`` inner archives training80_01.zip ...
    val-1.zip ...           validation80_01.zip ...
    test-1e.zip ...         a folder test-1/ holding test80_01.zip ... (unencrypted in the demo)
    train-annotation.zip    annotation_training.pkl   (real Python-2 pickle format,
    val-annotation-e.zip    annotation_validation.pkl  see fi_data.annotations; unencrypted
    test-annotation-e.zip   annotation_test.pkl        in the demo, real archive names)
    demo_hidden.csv         per clip: labels and the hidden cue values (never read by discovery)
    demo.json               the generation parameters and the label -> content mapping

Inner archives hold ``clips_per_inner`` (80, as in the release) clips named
``<11-char YouTube id>.<NNN>.mp4`` (ids of the real alphabet, some starting with ``-`` or
``_``; 1 to 6 clips per id with the release's frequencies, ids shared across splits as in
the release). Each clip is a real H.264 (libx264, yuv420p) + AAC-LC MP4 made by ffmpeg:
``duration_s`` (15.3 s) long, 16:9 (``width`` x ``height``, 256x144 by default) or 4:3
(``height * 4/3`` wide, 192x144) frames, 30 or 29.97 fps, mono or stereo 44.1 kHz audio.

**Labels** follow the real training split's statistics: a Gaussian with the means, SDs
and correlations of the five traits and ``interview`` measured on
``../shared/data/fi_annotations/annotation_training.pkl`` (:data:`LABEL_MEAN`,
:data:`LABEL_SD`, :data:`LABEL_CORR`), clipped to [0, 1]. Clips of one YouTube id share
70% of their variance (one person, several clips).

**Content.** Each clip's content encodes *noisy* labels through six hidden cue values
``u`` in [0, 1] (:data:`CUES`): for cue ``j`` on trait ``t``,
``u_j = clip(0.5 + (z_t + e_j) / 5, 0, 1)`` with ``z_t`` the clip's standardized label
and ``e_j ~ N(0, n_j^2)`` (so ``u`` spans +-2.5 SD). Cues are of two kinds
(:func:`cue_noise_sd`): *global* cues move clip-level statistics and are weak (``n_j = 2.5
cue_noise``, 1.25 label SDs by default), so a first model learns something quickly;
*structural* cues are strong (``n_j = 0.8 cue_noise``) and invisible to clip statistics
(per-channel colour means and SDs, MFCC means, SDs and mean absolute differences): only a
model that reads shapes in the frames, the face, or the order of sounds in time finds them.
The mapping:

============= ========== ======= ========= =================================================
cue           trait      channel kind      what changes (u = 0 -> 1)
============= ========== ======= ========= =================================================
background    openness   video   global    background colour, warm orange -> cool blue
stripes       conscient. video   structure the shirt's stripes turn, horizontal -> vertical
expression    agreeabl.  video   structure the mouth on the face, frown -> straight -> smile
speech_rate   extraver.  audio   global    syllables per second, 1.5 -> 4.5 (160 ms each)
intonation    extraver.  audio   structure glide over each syllable, -1 -> +1 octave
breathiness   neurotic.  audio   global    breath noise (2.5-7 kHz), -36 -> -6 dB re voice
============= ========== ======= ========= =================================================

The speaker is a real face (``skimage.data.astronaut()``, :data:`FACE_PATCH`), so the
toolkit's face detector finds it; its mouth is redrawn per clip (:func:`render_face`),
small in the whole frame and large in a face crop. Nuisances, drawn per clip and carrying no
label: the face's size (30-44% of the frame height) and position (+-18% of the width off
centre, so the centre crop may cut it), five clutter rectangles of random colours, the
shirt's colour, lighting (x0.85-1.15), a colour cast (x0.92-1.08 per channel), a brightness
gradient and pixel noise; the voice's pitch and formant (100-300 Hz, 500-2000 Hz),
loudness (-6..0 dB), syllable timing; the frame size, fps and channel count. The frames
are static (every frame of a clip is the same image). Every cue survives the toolkit's
preprocessing (6 frames resized to 140x248, 128x128 crops or 144x144 face crops; 24 MFCCs of
16 kHz mono, 16 ms hop, standardized per sample).

**Ceiling.** :func:`demo_scores` gives, on the demo's test split, the 1-MAE of the
predictor that knows the hidden cues (the conditional mean of the labels given ``u``
under the generative model), of the same with only the audio, only the video or only the
global cues (about the most a model of clip statistics can reach), and of the mean
predictor (the training split's mean labels).

:func:`demo_dataset` generates once into ``<repo>/.fi_demo/<hash of the parameters>/``
(git-ignored) and returns that folder afterwards; generation writes into a temporary
sibling folder and renames it when complete, so an interrupted run leaves nothing half made.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from fi_data.annotations import ANNOTATION_FILES, write_annotation_pickle
from fi_data.errors import UserError
from fi_data.ffmpeg_tools import require_ffmpeg
from fi_data.locks import FolderLock
from fi_data.traits import INTERVIEW, SPLITS, TRAITS

DEMO_VERSION = 2
"""Bumped whenever generation changes, so cached demo folders are regenerated."""

DEFAULT_DEMO_ROOT = Path(__file__).resolve().parents[1] / ".fi_demo"
"""Where :func:`demo_dataset` caches generated datasets (git-ignored)."""

LABEL_KEYS = (*TRAITS, INTERVIEW)

LABEL_MEAN = np.array([0.5663, 0.5227, 0.4761, 0.5482, 0.5203, 0.5038])
"""Training-split means of ``LABEL_KEYS`` (TRAITS order, then interview), measured on the
real annotation_training.pkl (DESIGN.md section 3 gives the same to 3 decimals)."""

LABEL_SD = np.array([0.1470, 0.1552, 0.1523, 0.1364, 0.1535, 0.1501])
"""Training-split standard deviations of ``LABEL_KEYS``, measured as :data:`LABEL_MEAN`."""

LABEL_CORR = np.array([
    [1.000, 0.583, 0.774, 0.649, 0.774, 0.772],
    [0.583, 1.000, 0.589, 0.658, 0.720, 0.832],
    [0.774, 0.589, 1.000, 0.711, 0.796, 0.818],
    [0.649, 0.658, 0.711, 1.000, 0.733, 0.828],
    [0.774, 0.720, 0.796, 0.733, 1.000, 0.879],
    [0.772, 0.832, 0.818, 0.828, 0.879, 1.000],
])
"""Pearson correlations between ``LABEL_KEYS`` on the real training split."""

CLIPS_PER_ID_FREQ = np.array([721, 533, 464, 398, 435, 509]) / 3060
"""How many YouTube ids of the release have 1, 2, ..., 6 clips (3060 ids, 10000 clips)."""

PERSON_SHARE = 0.7
"""Share of label variance common to the clips of one YouTube id."""


@dataclasses.dataclass(frozen=True)
class Cue:
    """One hidden content parameter: the trait it encodes, where it shows and who can read it.

    ``kind`` is ``"global"`` (it moves clip-level statistics: a mean colour, a spectral
    balance, a rate) or ``"structure"`` (clip-level statistics are blind to it: only a model
    that reads shapes, a face, or the order of events in time can). ``noise`` is the SD of
    the cue's noise in label-SD units; ``None`` takes :func:`cue_noise_sd`'s default for
    its kind.
    """

    name: str
    trait: str
    modality: str  # "audio" or "video"
    meaning: str
    sign: int = 1  # +1: u grows with the trait; -1: u falls as the trait grows
    noise: float | None = None
    kind: str = "global"  # "global" or "structure"


CUE_KINDS = ("global", "structure")
"""The values of :attr:`Cue.kind`."""

GLOBAL_NOISE_FACTOR = 2.5
"""A global cue's noise SD is ``GLOBAL_NOISE_FACTOR * cue_noise`` (1.25 label SDs by default):
global cues are weak, so a first model learns something quickly but a model on clip
statistics stays well below the ceiling."""

STRUCTURE_NOISE_FACTOR = 0.8
"""A structural cue's noise SD is ``STRUCTURE_NOISE_FACTOR * cue_noise`` (0.4 by default)."""


def cue_noise_sd(cue: Cue, cue_noise: float) -> float:
    """The noise SD (label-SD units) of ``cue`` in a demo made with ``cue_noise``: the cue's
    own ``noise`` when set, else :data:`GLOBAL_NOISE_FACTOR` or :data:`STRUCTURE_NOISE_FACTOR`
    times ``cue_noise`` for its kind."""
    if cue.noise is not None:
        return float(cue.noise)
    return (GLOBAL_NOISE_FACTOR if cue.kind == "global" else STRUCTURE_NOISE_FACTOR) * float(cue_noise)


CUES = (
    Cue("background", TRAITS[0], "video", "background colour, warm orange (0) to cool blue (1)"),
    Cue("stripes", TRAITS[1], "video", "angle of the shirt's stripes, horizontal (0) to vertical (1)",
        kind="structure"),
    Cue("expression", TRAITS[3], "video", "mouth curve on the face, frown (0) through straight to smile (1)",
        kind="structure"),
    Cue("speech_rate", TRAITS[2], "audio", "1.5 (0) to 4.5 (1) syllables per second"),
    Cue("intonation", TRAITS[2], "audio", "pitch glide over each syllable, falling an octave (0) to rising one (1)",
        kind="structure"),
    Cue("breathiness", TRAITS[4], "audio", "2.5-7 kHz breath noise, -36 dB (0) to -6 dB (1) re the voice"),
)
"""The label -> content mapping (module docstring)."""

_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_SR = 44100
_ZIP_DATE = (2016, 6, 1, 12, 0, 0)
_CU_SPAN = 5.0  # u spans +-2.5 standardized units


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """Every parameter of a demo dataset; its hash names the cache folder.

    Sizes: ``n_train``/``n_val``/``n_test`` clips; ``clips_per_inner`` clips per inner zip,
    ``inner_per_outer`` inner zips per outer zip. Video: ``width`` x ``height`` for 16:9
    clips (4:3 clips are ``height * 4 / 3`` wide), both even; ``share_4_3`` of the clips
    are 4:3. ``duration_s`` seconds per clip. ``cue_noise``: SD of the noise added to the
    standardized label before it becomes a cue (0 = content carries the exact labels).
    """

    n_train: int = 240
    n_val: int = 80
    n_test: int = 80
    seed: int = 0
    width: int = 256
    height: int = 144
    duration_s: float = 15.3
    cue_noise: float = 0.5
    share_4_3: float = 0.3
    clips_per_inner: int = 80
    inner_per_outer: int = 2
    variant: int | None = None

    def __post_init__(self):
        sizes = (self.n_train, self.n_val, self.n_test)
        if min(sizes) < 1:
            raise UserError(f"demo split sizes must be >= 1, got {sizes}")
        if self.width % 2 or self.height % 2 or self.height < 16 or self.width < self.height:
            raise UserError(f"demo frames must be even-sized and landscape, got {self.width}x{self.height}")
        if (self.height * 4 // 3) % 2:
            raise UserError(f"height {self.height}: the 4:3 width height*4/3 must be an even integer")
        if not 1.0 <= self.duration_s <= 60.0:
            raise UserError(f"duration_s must be in [1, 60] seconds, got {self.duration_s}")
        if self.cue_noise < 0 or not 0 <= self.share_4_3 <= 1 or self.clips_per_inner < 1 or self.inner_per_outer < 1:
            raise UserError(f"invalid demo parameters {self}")

    def key(self) -> str:
        """Short hash of the parameters and :data:`DEMO_VERSION` (cache folder name)."""
        fields = dataclasses.asdict(self)
        if fields["variant"] is None:  # the standard demo keeps the key it always had
            del fields["variant"]
        blob = json.dumps({"version": DEMO_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------
# Variants: other datasets drawn from a seed

VARIANT_SIZES = ((256, 144), (320, 180), (384, 216), (448, 252))
"""16:9 frame sizes a variant draws from (each gives an even 4:3 width)."""


def resolve_variant(params: DemoParams) -> DemoParams:
    """The parameters of ``params.variant``'s dataset (``params`` itself when it is None).

    A variant draws, from ``numpy.random.default_rng([variant, 7919])`` alone (the other
    fields of ``params`` are replaced): the clip counts (train 120-300, validation and test
    40-100 each), the frame size (:data:`VARIANT_SIZES`), the clip duration (8-15.3 s),
    ``cue_noise`` (0.3-0.9) and the labels' seed. :func:`demo_cues` draws the cue mapping.
    """
    if params.variant is None:
        return params
    rng = np.random.default_rng([int(params.variant), 7919])
    width, height = VARIANT_SIZES[int(rng.integers(len(VARIANT_SIZES)))]
    return dataclasses.replace(params, n_train=int(rng.integers(120, 301)), n_val=int(rng.integers(40, 101)),
                               n_test=int(rng.integers(40, 101)), seed=int(rng.integers(2**31)), width=width,
                               height=height, duration_s=round(float(rng.uniform(8.0, 15.3)), 1),
                               cue_noise=round(float(rng.uniform(0.3, 0.9)), 3))


def demo_cues(params: DemoParams) -> tuple:
    """The cue -> trait mapping of ``params``: :data:`CUES` for the standard demo.

    A variant (``params.variant``) draws, from ``numpy.random.default_rng([variant, 104729])``:
    which trait each of the six cues carries (a random permutation gives every trait one
    cue, the sixth cue goes to a random trait; so a trait may live in the audio only, the
    video only, or both), each cue's direction (``sign`` +-1) and its noise SD
    (:func:`cue_noise_sd` of its kind times ``U[0.6, 1.6]``: some cues are strong, some weak).
    Each cue keeps its kind and channel.
    """
    if params.variant is None:
        return CUES
    rng = np.random.default_rng([int(params.variant), 104729])
    order = rng.permutation(len(CUES))
    traits = [TRAITS[i] for i in rng.permutation(len(TRAITS))] + [TRAITS[int(rng.integers(len(TRAITS)))]]
    cues = []
    for k, j in enumerate(order):
        cues.append(dataclasses.replace(CUES[j], trait=traits[k], sign=int(rng.choice([-1, 1])),
                                        noise=round(cue_noise_sd(CUES[j], params.cue_noise) * float(rng.uniform(0.6, 1.6)), 4)))
    return tuple(sorted(cues, key=lambda c: [x.name for x in CUES].index(c.name)))


# ---------------------------------------------------------------------------------------
# The plan: ids, splits, labels, cues and per-clip nuisances (no media yet)

def _youtube_ids(n: int, rng: np.random.Generator) -> list[str]:
    ids, seen = [], set()
    while len(ids) < n:
        chars = rng.choice(_ALPHABET, 11)
        if len(ids) % 25 == 1:  # about 4% start with '-' or '_' (the release: 84 of 3060 ids)
            chars[0] = "-_"[len(ids) // 25 % 2]
        cid = "".join(chars)
        if cid not in seen:
            seen.add(cid)
            ids.append(cid)
    return ids


def demo_plan(params: DemoParams = DemoParams()) -> pd.DataFrame:
    """Everything about every demo clip except the media, deterministic for ``params.seed``.

    Returns:
        DataFrame, one row per clip, in generation order: ``clip_id``, ``split``, the five
        ``TRAITS`` and ``interview`` (float in [0, 1]), ``cue_<name>`` for each of
        :data:`CUES` (float in [0, 1]), and the nuisances ``width``, ``height``, ``fps``
        (``"30"`` or ``"30000/1001"``), ``channels``, ``gain_db`` (dB), ``face_size`` (face
        side / frame height), ``dx`` (face centre offset / frame width), ``dy`` (/ frame
        height), ``gradient``, ``light``, ``cast_r``/``cast_g``/``cast_b`` (gains),
        ``voice_height`` (in [0, 1]), ``clip_seed``.
    """
    rng = np.random.default_rng([params.seed, DEMO_VERSION])
    n = params.n_train + params.n_val + params.n_test
    counts = []
    while sum(counts) < n:
        counts.append(int(rng.choice(6, p=CLIPS_PER_ID_FREQ)) + 1)
    ids = _youtube_ids(len(counts), rng)
    rows = []
    chol = np.linalg.cholesky(LABEL_CORR)
    for yid, count in zip(ids, counts):
        person = chol @ rng.standard_normal(len(LABEL_KEYS))
        for number in sorted(rng.choice(6, count, replace=False)):
            own = chol @ rng.standard_normal(len(LABEL_KEYS))
            rows.append((f"{yid}.{number:03d}", math.sqrt(PERSON_SHARE) * person + math.sqrt(1 - PERSON_SHARE) * own))
    rows = [rows[i] for i in rng.permutation(len(rows))[:n]]
    z = np.array([r[1] for r in rows])
    plan = pd.DataFrame({"clip_id": [r[0] for r in rows]})
    plan["split"] = np.repeat(SPLITS, (params.n_train, params.n_val, params.n_test))
    labels = np.clip(LABEL_MEAN + LABEL_SD * z, 0.0, 1.0)
    for i, key in enumerate(LABEL_KEYS):
        plan[key] = labels[:, i]
    z_labels = (labels - LABEL_MEAN) / LABEL_SD  # after clipping, as seen in the labels
    for cue in demo_cues(params):
        noise = cue_noise_sd(cue, params.cue_noise)
        noisy = cue.sign * z_labels[:, TRAITS.index(cue.trait)] + noise * rng.standard_normal(n)
        plan[f"cue_{cue.name}"] = np.clip(0.5 + noisy / _CU_SPAN, 0.0, 1.0)
    wide = rng.random(n) >= params.share_4_3
    plan["width"] = np.where(wide, params.width, params.height * 4 // 3)
    plan["height"] = params.height
    plan["fps"] = np.where(rng.random(n) < 0.5, "30", "30000/1001")
    plan["channels"] = np.where(rng.random(n) < 0.5, 1, 2)
    plan["gain_db"] = rng.uniform(-6.0, 0.0, n)
    plan["face_size"] = rng.uniform(0.30, 0.44, n)
    plan["dx"] = rng.uniform(-0.18, 0.18, n)
    plan["dy"] = rng.uniform(-0.05, 0.05, n)
    plan["gradient"] = rng.uniform(-0.15, 0.15, n)
    plan["light"] = rng.uniform(0.85, 1.15, n)
    for channel in "rgb":
        plan[f"cast_{channel}"] = rng.uniform(0.92, 1.08, n)
    plan["voice_height"] = rng.uniform(0.0, 1.0, n)
    plan["clip_seed"] = rng.integers(0, 2**31, n)
    return plan


# ---------------------------------------------------------------------------------------
# Media

_WARM, _COOL = np.array([235.0, 150.0, 60.0]), np.array([60.0, 130.0, 235.0])

FACE_PATCH = (35, 185, 146, 296)
"""Rows and columns (start, stop) of ``skimage.data.astronaut()`` pasted as the speaker's face:
a real frontal face with its hair, 150 x 150 (the LBP cascade's box on it: rows 70-163,
columns 175-268), so the toolkit's face detector finds it as it would a real speaker's."""

_MOUTH = (0.73, 0.51)  # the mouth centre in the patch (row, column fractions)
_SKIN = (0.62, 0.30)  # a cheek in the patch, whose colour covers the real mouth


@functools.cache
def _face_patch() -> np.ndarray:
    import skimage.data

    r0, r1, c0, c1 = FACE_PATCH
    return skimage.data.astronaut()[r0:r1, c0:c1].astype(np.float64)


def _soft(distance: np.ndarray) -> np.ndarray:
    """Coverage of a pixel at signed ``distance`` (px, positive inside) from an edge."""
    return np.clip(distance + 0.5, 0.0, 1.0)


def render_face(side: int, expression: float) -> tuple:
    """The speaker's face at ``side`` x ``side`` pixels with the ``expression`` cue drawn on it.

    The astronaut's own mouth is covered with the colour of her cheek and a mouth is drawn
    in its place: a dark arc, 0.32 of the side wide and 0.045 of it thick (at least 1.5 px),
    whose corners sit ``(2 expression - 1) * 0.1 * side`` above its middle (frown: corners
    below, 0.5: a straight line, smile: corners above). Its ink and length do not change
    with the cue, so the frame's colour statistics do not either.

    Returns:
        ``(rgb, alpha)``: float64 ``(side, side, 3)`` in 0..255 and the float64 ``(side, side)``
        coverage of an ellipse (0.44 x 0.5 of the side) holding the face and hair.
    """
    import cv2

    face = cv2.resize(_face_patch(), (side, side), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    my, mx = _MOUTH[0] * side, _MOUTH[1] * side
    sy, sx = int(_SKIN[0] * side), int(_SKIN[1] * side)
    skin = face[max(sy - 1, 0):sy + 2, max(sx - 1, 0):sx + 2].reshape(-1, 3).mean(axis=0)
    cover = _soft(side * 0.06 * (1.0 - np.hypot((xx - mx) / (0.2 * side), (yy - my) / (0.08 * side))))[..., None]
    face = face * (1 - cover) + skin * cover
    half, lift = 0.16 * side, (2.0 * expression - 1.0) * 0.1 * side
    t = (xx - mx) / half
    curve = my + lift * (0.5 - t ** 2)  # corners (t = +-1) at my - lift / 2, middle at my + lift / 2
    thick = max(1.5, 0.045 * side)
    ink = _soft(thick / 2 - np.abs(yy - curve)) * _soft(half * (1 - np.abs(t)))
    face = face * (1 - ink[..., None]) + np.array([110.0, 30.0, 40.0]) * ink[..., None]
    c = side / 2
    alpha = _soft(side * 0.25 * (1.0 - np.hypot((xx - c) / (0.44 * side), (yy - c) / (0.5 * side))))
    return face, alpha


def render_frame(row) -> np.ndarray:
    """The clip's (static) frame: uint8 RGB ``(height, width, 3)`` (mapping: :data:`CUES`).

    Back to front: the background colour (cue ``background``) under a vertical brightness
    ``gradient``; five rectangles of random colour and size (clutter); +-8 grey levels of
    pixel noise; the shirt, 1.7 face sides wide from just under the chin to the bottom edge,
    striped with a period of ``height / 24`` at the angle of cue ``stripes`` (its two colours
    in equal shares at every angle); the face (:func:`render_face`, side ``face_size *
    height``, centre ``dx * width`` right of the middle and ``(0.4 + dy) * height`` down);
    then the whole frame times ``light`` and the colour ``cast_*`` gains.
    """
    h, w = int(row["height"]), int(row["width"])
    rng = np.random.default_rng(int(row["clip_seed"]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    background = _WARM + (_COOL - _WARM) * row["cue_background"]
    img = background * (1.0 + row["gradient"] * (yy / h - 0.5))[..., None]
    for _ in range(5):
        cw, ch = rng.uniform(0.08, 0.25) * w, rng.uniform(0.1, 0.35) * h
        x0, y0 = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
        img[y0:y0 + int(ch), x0:x0 + int(cw)] = rng.uniform(30, 230, 3)
    img += rng.uniform(-8, 8, size=(h, w, 1))

    side = max(8, int(round(row["face_size"] * h)))
    cx, cy = w / 2 + row["dx"] * w, (0.4 + row["dy"]) * h
    top, half = cy + 0.42 * side, 0.85 * side
    shirt = (_soft(half - np.abs(xx - cx)) * _soft(yy - top))[..., None]
    angle = 0.5 * np.pi * row["cue_stripes"]
    wave = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * (yy * np.cos(angle) + xx * np.sin(angle)) / (h / 24)), 0, 1)
    colour = rng.uniform(90, 230, 3)
    stripes = colour * (1 - 0.65 * wave[..., None])
    img = img * (1 - shirt) + stripes * shirt

    face, alpha = render_face(side, float(row["cue_expression"]))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    fy0, fx0 = max(0, -y0), max(0, -x0)
    fy1, fx1 = min(side, h - y0), min(side, w - x0)
    if fy1 > fy0 and fx1 > fx0:
        a = alpha[fy0:fy1, fx0:fx1, None]
        region = img[y0 + fy0:y0 + fy1, x0 + fx0:x0 + fx1]
        img[y0 + fy0:y0 + fy1, x0 + fx0:x0 + fx1] = region * (1 - a) + face[fy0:fy1, fx0:fx1] * a
    img *= row["light"] * np.array([row["cast_r"], row["cast_g"], row["cast_b"]])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def rgb_to_yuv420p(rgb: np.ndarray) -> bytes:
    """uint8 RGB ``(H, W, 3)`` (H, W even) -> raw yuv420p bytes, BT.601 limited range
    (ITU-R BT.601 coefficients; chroma = mean of each 2x2 block), which is how ffmpeg
    reads and decodes untagged SD video."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

    def sub(c):
        return c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, sub(cb), sub(cr))]
    return b"".join(p.tobytes() for p in planes)


SYLLABLE_S = 0.16
"""Length of one synthesized syllable, seconds (10 MFCC frames at the default 16 kHz, hop 256)."""


def synthesize_voice(row, n_samples: int) -> np.ndarray:
    """The clip's audio, float64 ``(n_samples,)`` mono at 44.1 kHz, peak ``10**(gain_db/20) * 0.7``.

    A voice-like source: a pitched tone (wavetable of harmonics up to 5 kHz, amplitude
    ``1/k`` times a Gaussian formant bump; pitch ``100 * 3**voice_height`` Hz, formant
    ``500 * 4**voice_height`` Hz, a per-clip nuisance), gated by :data:`SYLLABLE_S` Hann-windowed
    syllables at the ``speech_rate`` cue's rate with +-20% timing jitter (never overlapping),
    plus band-limited breath noise inside the syllables and a -60 dB noise floor. Inside each
    syllable the whole spectrum glides by ``2 * intonation - 1`` octaves (pitch and formant
    together, centred on the syllable's middle): falling, flat or rising. A falling and a
    rising syllable hold the same spectra in opposite order, so per-coefficient MFCC means, SDs
    and mean absolute differences cannot tell them apart; the order can.
    """
    rng = np.random.default_rng(int(row["clip_seed"]) + 1)
    t = np.arange(n_samples) / _SR
    f0 = 100.0 * 3.0 ** row["voice_height"]
    formant = 500.0 * 4.0 ** row["voice_height"]
    table_size = 2048
    k = np.arange(1, int(5000 // f0) + 1)
    amp = (0.15 + np.exp(-0.5 * ((k * f0 - formant) / (0.35 * formant)) ** 2)) / k
    table = (amp[:, None] * np.sin(np.outer(k, np.arange(table_size) * 2 * np.pi / table_size))).sum(axis=0)
    table = np.append(table, table[0]) / np.abs(table).max()

    envelope, glide = np.zeros(n_samples), np.ones(n_samples)
    length = int(SYLLABLE_S * _SR)
    syllable = np.hanning(length)
    octaves = 2.0 * row["cue_intonation"] - 1.0
    sweep = 2.0 ** (octaves * (np.arange(length) / length - 0.5))
    period = 1.0 / (1.5 + 3.0 * row["cue_speech_rate"])
    start = rng.uniform(0, period)
    while start + SYLLABLE_S < n_samples / _SR:
        s = int(start * _SR)
        envelope[s:s + length] = syllable
        glide[s:s + length] = sweep
        start += period * rng.uniform(0.8, 1.2)
    phase = np.cumsum(f0 * glide * (1 + 0.01 * np.sin(2 * np.pi * 5 * t)) / _SR) % 1.0
    tone = np.interp(phase * table_size, np.arange(table_size + 1), table)

    n_fft = 1 << (n_samples - 1).bit_length()  # a power of two: FFTs of odd lengths can be 20x slower
    spectrum = np.fft.rfft(rng.standard_normal(n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / _SR)
    spectrum[(freqs < 2500) | (freqs > 7000)] = 0
    breath = np.fft.irfft(spectrum, n_fft)[:n_samples]
    breath /= breath.std() + 1e-12
    breath_gain = 10 ** ((-36.0 + 30.0 * row["cue_breathiness"]) / 20)
    x = envelope * 0.5 * (tone + breath_gain * breath) + 1e-3 * rng.standard_normal(n_samples)
    return x / np.abs(x).max() * 0.7 * 10 ** (row["gain_db"] / 20)


def _frame_count(row, duration_s: float) -> int:
    num, _, den = str(row["fps"]).partition("/")
    return int(round(duration_s * float(num) / float(den or 1)))


def encode_clip(row, out_path: Path, duration_s: float, work_dir: Path) -> Path:
    """Write one demo clip as H.264 + AAC-LC MP4 at ``out_path`` with ffmpeg.

    Raw yuv420p and s16le inputs are written to ``work_dir`` and deleted afterwards.
    Encoding is bit-exact (``-fflags +bitexact``, one x264 thread), so a seed gives the same
    bytes on the same ffmpeg build.

    Raises:
        RuntimeError: ffmpeg failed (message holds ffmpeg's error output).
    """
    frames = _frame_count(row, duration_s)
    num, _, den = str(row["fps"]).partition("/")
    n_samples = int(round(frames * float(den or 1) / float(num) * _SR))
    channels = int(row["channels"])
    voice = synthesize_voice(row, n_samples)
    pcm = np.rint(np.clip(voice, -1, 1) * 32767).astype("<i2")
    if channels == 2:
        pcm = np.stack([pcm, np.rint(pcm * 0.9).astype("<i2")], axis=1)
    stem = f"{row.name:05d}" if isinstance(row.name, (int, np.integer)) else "clip"
    yuv_path, pcm_path = work_dir / f"{stem}.yuv", work_dir / f"{stem}.s16"
    yuv_path.write_bytes(rgb_to_yuv420p(render_frame(row)))
    pcm_path.write_bytes(pcm.tobytes())
    cmd = [require_ffmpeg()[0], "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-stream_loop", str(frames - 1), "-f", "rawvideo", "-pix_fmt", "yuv420p",
           "-s", f"{int(row['width'])}x{int(row['height'])}", "-framerate", str(row["fps"]), "-i", str(yuv_path),
           "-f", "s16le", "-ar", str(_SR), "-ac", str(channels), "-i", str(pcm_path),
           "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1",
           "-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k" if channels == 1 else "96k",
           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
           "-movflags", "+faststart", str(out_path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        yuv_path.unlink(missing_ok=True)
        pcm_path.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed making demo clip {out_path.name}: {done.stderr.strip()[-500:]}")
    return out_path


# ---------------------------------------------------------------------------------------
# Archives

def _zip_info(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = compress
    info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o644 << 16
    return info


def _write_zip(path: Path, members: list[tuple[str, Path | bytes | None]], compress: int) -> None:
    """Write a zip with members in the given order (``None`` content = a folder entry)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members:
            if content is None:
                zf.writestr(_zip_info(name, zipfile.ZIP_STORED), b"")
            else:
                with zf.open(_zip_info(name, compress), "w") as dst:
                    if isinstance(content, bytes):
                        dst.write(content)
                    else:
                        with open(content, "rb") as src:
                            shutil.copyfileobj(src, dst, 1 << 20)


_INNER_PREFIX = dict(zip(SPLITS, ("training80", "validation80", "test80")))


def _outer_name(split: str, k: int) -> tuple[str, str]:
    """(outer archive name, folder inside it) as in the release."""
    return {SPLITS[0]: (f"train-{k}.zip", ""), SPLITS[1]: (f"val-{k}.zip", ""),
            SPLITS[2]: (f"test-{k}e.zip", f"test-{k}/")}[split]


_ANNOTATION_ARCHIVES = dict(zip(SPLITS, ("train-annotation.zip", "val-annotation-e.zip", "test-annotation-e.zip")))


def _pack(plan: pd.DataFrame, clip_dir: Path, out: Path, params: DemoParams) -> None:
    for split in SPLITS:
        part = plan[plan["split"] == split]
        names = sorted(part["clip_id"])  # members in name order inside each inner zip
        inner = []
        for i in range(0, len(names), params.clips_per_inner):
            inner_name = f"{_INNER_PREFIX[split]}_{i // params.clips_per_inner + 1:02d}.zip"
            _write_zip(clip_dir / inner_name,
                       [(f"{c}.mp4", clip_dir / f"{c}.mp4") for c in names[i:i + params.clips_per_inner]],
                       zipfile.ZIP_DEFLATED)
            inner.append(inner_name)
        for k, i in enumerate(range(0, len(inner), params.inner_per_outer), 1):
            outer_name, folder = _outer_name(split, k)
            members = ([(folder, None)] if folder else []) + [
                (folder + name, clip_dir / name) for name in inner[i:i + params.inner_per_outer]]
            _write_zip(out / outer_name, members, zipfile.ZIP_STORED)
        pkl = clip_dir / ANNOTATION_FILES[split]
        write_annotation_pickle(pkl, part.reset_index(drop=True))
        _write_zip(out / _ANNOTATION_ARCHIVES[split], [(pkl.name, pkl)], zipfile.ZIP_DEFLATED)


# ---------------------------------------------------------------------------------------
# Public entry points

def generate_demo(out_dir: str | os.PathLike, *, n_train: int = 240, n_val: int = 80, n_test: int = 80,
                  seed: int = 0, width: int = 256, height: int = 144, duration_s: float = 15.3,
                  cue_noise: float = 0.5, share_4_3: float = 0.3, clips_per_inner: int = 80,
                  inner_per_outer: int = 2, variant: int | None = None, workers: int | None = None,
                  progress: bool = True) -> Path:
    """Generate a demo dataset into ``out_dir`` (module docstring; parameters: :class:`DemoParams`).

    Args:
        out_dir: folder to create; it must not exist or be empty.
        workers: clips encoded in parallel (ffmpeg processes); default ``os.cpu_count()``.
        progress: show a ``keras.utils.Progbar`` while encoding.

    Returns:
        ``Path(out_dir)``.

    Raises:
        ValueError: invalid parameters, or ``out_dir`` holds files.
        fi_data.ffmpeg_tools.FFmpegNotFoundError: ffmpeg is not installed.
        RuntimeError: ffmpeg failed on a clip.
    """
    params = DemoParams(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, width=width, height=height,
                        duration_s=duration_s, cue_noise=cue_noise, share_4_3=share_4_3,
                        clips_per_inner=clips_per_inner, inner_per_outer=inner_per_outer, variant=variant)
    params = resolve_variant(params)
    require_ffmpeg()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: demo output folder is not empty")
    out.mkdir(parents=True, exist_ok=True)
    plan = demo_plan(params)
    bar = None
    if progress:
        from keras.utils import Progbar

        print(f"Generating the demo dataset ({len(plan)} clips) in {out}")
        bar = Progbar(len(plan), unit_name="clip", interval=1.0)
    with tempfile.TemporaryDirectory(prefix="work-", dir=out) as work:
        work = Path(work)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            jobs = [pool.submit(encode_clip, row, work / f"{row['clip_id']}.mp4", params.duration_s, work)
                    for _, row in plan.iterrows()]
            for done, job in enumerate(concurrent.futures.as_completed(jobs), 1):
                job.result()
                if bar:
                    bar.update(done)
        _pack(plan, work, out, params)
    plan.to_csv(out / "demo_hidden.csv", index=False)
    meta = {"version": DEMO_VERSION, "params": dataclasses.asdict(params),
            "cues": [dataclasses.asdict(c) for c in demo_cues(params)]}
    (out / "demo.json").write_text(json.dumps(meta, indent=2))
    return out


def demo_dataset(root: str | os.PathLike | None = None, *, progress: bool = True, workers: int | None = None,
                 **params) -> Path:
    """The demo dataset for ``params`` (:class:`DemoParams` fields), generated on first use.

    Args:
        root: cache folder (default :data:`DEFAULT_DEMO_ROOT`, ``<repo>/.fi_demo``).
        progress, workers: as :func:`generate_demo`.
        **params: :class:`DemoParams` fields; the defaults make the standard demo;
            ``variant=SEED`` draws another dataset (:func:`resolve_variant`, :func:`demo_cues`).

    Returns:
        ``<root>/<DemoParams.key()>``, a complete dataset folder (``demo.json`` marks it).

    One process generates at a time (``fi_data.locks.FolderLock`` on ``root``; a second one
    waits, then finds the dataset made). Holding the lock, staging folders ``*.tmp-*`` left by
    an interrupted generation are deleted: no other process can be writing them.
    """
    key = resolve_variant(DemoParams(**params)).key()
    root = Path(root) if root is not None else DEFAULT_DEMO_ROOT
    final = root / key
    if (final / "demo.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FolderLock(root, "demo dataset folder", wait=True):
        for stale in root.glob(f"*{STAGING_MARK}*"):
            shutil.rmtree(stale, ignore_errors=True)
        if (final / "demo.json").is_file():  # made by the process we waited for
            return final
        staging = Path(tempfile.mkdtemp(prefix=f"{key}{STAGING_MARK}", dir=root))
        try:
            generate_demo(staging, progress=progress, workers=workers, **params)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return final


STAGING_MARK = ".tmp-"
"""Part of the name of a demo being generated (``<key>.tmp-<random>``), before its rename."""


def _conditional_mean(cue_values: np.ndarray, cues: tuple[Cue, ...], cue_noise: float) -> np.ndarray:
    """E[labels | cues] under the generative model (Gaussian conditioning), clipped to [0, 1].

    Standardized labels ``z ~ N(0, R)`` (R = :data:`LABEL_CORR` of the five traits); each cue
    observes ``h_j = s_j z_t(j) + e_j`` (``s_j`` the cue's sign), ``e_j ~ N(0, n_j^2)`` (``n_j``
    :func:`cue_noise_sd`), recovered as ``h = 5 (u - 0.5)``.
    ``E[z | h] = R P' (P R P' + diag(n^2))^+ h`` (P holds the signs; pseudo-inverse: two
    noiseless cues of one trait make the matrix singular).
    """
    corr = LABEL_CORR[:len(TRAITS), :len(TRAITS)]
    select = np.zeros((len(cues), len(TRAITS)))
    for j, cue in enumerate(cues):
        select[j, TRAITS.index(cue.trait)] = cue.sign
    noise = np.array([cue_noise_sd(c, cue_noise) for c in cues])
    h = _CU_SPAN * (cue_values - 0.5)
    gain = corr @ select.T @ np.linalg.pinv(select @ corr @ select.T + np.diag(noise ** 2))
    z = h @ gain.T
    return np.clip(LABEL_MEAN[:len(TRAITS)] + LABEL_SD[:len(TRAITS)] * z, 0.0, 1.0)


def demo_scores(source: str | os.PathLike | pd.DataFrame, cue_noise: float | None = None,
                split: str = "test", cues: tuple | None = None) -> pd.DataFrame:
    """1-MAE on the demo's ``split`` of the hidden-parameter predictors and of the mean.

    Args:
        source: a generated demo folder (reads ``demo_hidden.csv`` and ``demo.json``) or a
            plan from :func:`demo_plan` (then give ``cue_noise``).
        cue_noise: the plan's ``cue_noise`` (read from ``demo.json`` for a folder).
        split: the split scored (the predictors use only the known model and, for the
            mean baseline, the training split's mean labels).
        cues: a plan's cue mapping (:func:`demo_cues`; default :data:`CUES`); read from
            ``demo.json`` for a folder.

    Returns:
        DataFrame indexed by ``ceiling`` (all cues), ``audio_only``, ``video_only``,
        ``global_only`` (the cues of kind ``"global"``: about the best a model of clip
        statistics can do) and ``mean_baseline``, with one column per trait (``1 - MAE`` of that trait) and
        ``one_minus_mae`` (mean over the traits).
    """
    if isinstance(source, pd.DataFrame):
        if cue_noise is None:
            raise ValueError("cue_noise is needed when scoring a plan")
        plan = source
        cues = CUES if cues is None else tuple(cues)
    else:
        folder = Path(source)
        plan = pd.read_csv(folder / "demo_hidden.csv", dtype={"clip_id": str, "fps": str})
        meta = json.loads((folder / "demo.json").read_text())
        cue_noise = meta["params"]["cue_noise"]
        cues = tuple(Cue(**c) for c in meta["cues"])
    part = plan[plan["split"] == split]
    truth = part[list(TRAITS)].to_numpy()
    preds = {}
    for name, subset in (("ceiling", cues), ("audio_only", tuple(c for c in cues if c.modality == "audio")),
                         ("video_only", tuple(c for c in cues if c.modality == "video")),
                         ("global_only", tuple(c for c in cues if c.kind == "global"))):
        values = part[[f"cue_{c.name}" for c in subset]].to_numpy()
        preds[name] = _conditional_mean(values, subset, cue_noise)
    train_mean = plan.loc[plan["split"] == "train", list(TRAITS)].to_numpy().mean(axis=0)
    preds["mean_baseline"] = np.broadcast_to(train_mean, truth.shape)
    table = pd.DataFrame({name: 1.0 - np.abs(truth - p).mean(axis=0) for name, p in preds.items()},
                         index=list(TRAITS)).T
    table["one_minus_mae"] = table[list(TRAITS)].mean(axis=1)
    return table
