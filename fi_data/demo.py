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
and ``e_j ~ N(0, cue_noise^2)`` (so ``u`` spans +-2.5 SD). The mapping:

============= ========== ======= ===========================================================
cue           trait      channel what changes (u = 0 -> 1)
============= ========== ======= ===========================================================
background    openness   video   background colour, warm orange -> cool blue
face_size     extraver.  video   radius of the central "face" disc, 15% -> 40% of the height
face_shade    agreeabl.  video   grey level of the disc, dark -> light
voice_height  conscient. audio   pitch 100 -> 300 Hz with a formant 500 -> 2000 Hz
breathiness   neurotic.  audio   breath noise (2.5-7 kHz) level, -36 -> -6 dB re the voice
speech_rate   extraver.  audio   syllables per second, 1.5 -> 5.5 (110 ms syllables)
============= ========== ======= ===========================================================

So openness and agreeableness are in the video only, conscientiousness and neuroticism in
the audio only, extraversion in both (traits still correlate, so each channel alone
predicts the others partly). Nuisances: disc position, a brightness gradient and pixel
noise in the frame, loudness (-6..0 dB), syllable timing, the frame size, fps and channel
count. The frames are static (every frame of a clip is the same image), and the cues are
large, central and global, so they survive the toolkit's preprocessing (6 frames resized
to 140x248, 128x128 crops; 24 MFCCs of 16 kHz mono, standardized per sample).

**Ceiling.** :func:`demo_scores` gives, on the demo's test split, the 1-MAE of the
predictor that knows the hidden cues (the conditional mean of the labels given ``u``
under the generative model), of the same with only the audio or only the video cues, and
of the mean predictor (the training split's mean labels), so the demo shows a good fused
model clearly beating the mean while neither channel alone reaches the fused ceiling.

:func:`demo_dataset` generates once into ``<repo>/.fi_demo/<hash of the parameters>/``
(git-ignored) and returns that folder afterwards; generation writes into a temporary
sibling folder and renames it when complete, so an interrupted run leaves nothing half made.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
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

DEMO_VERSION = 1
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
    """One hidden content parameter: the trait it encodes and where it shows."""

    name: str
    trait: str
    modality: str  # "audio" or "video"
    meaning: str
    sign: int = 1  # +1: u grows with the trait; -1: u falls as the trait grows
    noise: float | None = None  # SD of this cue's noise; None: DemoParams.cue_noise


CUES = (
    Cue("background", TRAITS[0], "video", "background colour, warm orange (0) to cool blue (1)"),
    Cue("face_size", TRAITS[2], "video", "face-disc radius, 15% (0) to 40% (1) of the frame height"),
    Cue("face_shade", TRAITS[3], "video", "face-disc grey level, dark (0) to light (1)"),
    Cue("voice_height", TRAITS[1], "audio", "pitch 100-300 Hz with a formant at 500-2000 Hz"),
    Cue("breathiness", TRAITS[4], "audio", "2.5-7 kHz breath noise, -36 dB (0) to -6 dB (1) re the voice"),
    Cue("speech_rate", TRAITS[2], "audio", "1.5 (0) to 5.5 (1) syllables per second"),
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
    (``cue_noise * U[0.6, 1.6]``: some cues are strong, some weak).
    """
    if params.variant is None:
        return CUES
    rng = np.random.default_rng([int(params.variant), 104729])
    order = rng.permutation(len(CUES))
    traits = [TRAITS[i] for i in rng.permutation(len(TRAITS))] + [TRAITS[int(rng.integers(len(TRAITS)))]]
    cues = []
    for k, j in enumerate(order):
        cues.append(dataclasses.replace(CUES[j], trait=traits[k], sign=int(rng.choice([-1, 1])),
                                        noise=round(params.cue_noise * float(rng.uniform(0.6, 1.6)), 4)))
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
        (``"30"`` or ``"30000/1001"``), ``channels``, ``gain_db``, ``dx``, ``dy``,
        ``gradient``, ``clip_seed``.
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
        noise = params.cue_noise if cue.noise is None else cue.noise
        noisy = cue.sign * z_labels[:, TRAITS.index(cue.trait)] + noise * rng.standard_normal(n)
        plan[f"cue_{cue.name}"] = np.clip(0.5 + noisy / _CU_SPAN, 0.0, 1.0)
    wide = rng.random(n) >= params.share_4_3
    plan["width"] = np.where(wide, params.width, params.height * 4 // 3)
    plan["height"] = params.height
    plan["fps"] = np.where(rng.random(n) < 0.5, "30", "30000/1001")
    plan["channels"] = np.where(rng.random(n) < 0.5, 1, 2)
    plan["gain_db"] = rng.uniform(-6.0, 0.0, n)
    plan["dx"] = rng.uniform(-0.06, 0.06, n)
    plan["dy"] = rng.uniform(-0.06, 0.06, n)
    plan["gradient"] = rng.uniform(-0.15, 0.15, n)
    plan["clip_seed"] = rng.integers(0, 2**31, n)
    return plan


# ---------------------------------------------------------------------------------------
# Media

_WARM, _COOL = np.array([235.0, 150.0, 60.0]), np.array([60.0, 130.0, 235.0])


def render_frame(row) -> np.ndarray:
    """The clip's (static) frame: uint8 RGB ``(height, width, 3)`` (mapping: :data:`CUES`)."""
    h, w = int(row["height"]), int(row["width"])
    rng = np.random.default_rng(int(row["clip_seed"]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    background = _WARM + (_COOL - _WARM) * row["cue_background"]
    img = background * (1.0 + row["gradient"] * (yy / h - 0.5))[..., None]
    img += rng.uniform(-8, 8, size=(h, w, 1))
    radius = h * (0.15 + 0.25 * row["cue_face_size"])
    cx, cy = w / 2 + row["dx"] * h, h / 2 + row["dy"] * h
    alpha = np.clip(radius - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0)[..., None]  # anti-aliased edge
    shade = 40.0 + 200.0 * row["cue_face_shade"]
    img = img * (1 - alpha) + np.array([shade, 0.92 * shade, 0.85 * shade]) * alpha
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


def synthesize_voice(row, n_samples: int) -> np.ndarray:
    """The clip's audio, float64 ``(n_samples,)`` mono at 44.1 kHz, peak ``10**(gain_db/20) * 0.7``.

    A voice-like source: a pitched tone (wavetable of harmonics up to 5 kHz, amplitude
    ``1/k`` times a Gaussian formant bump), gated by 110 ms Hann-windowed syllables at the
    cue's rate with +-20% timing jitter, plus band-limited breath noise inside the
    syllables and a -60 dB noise floor.
    """
    rng = np.random.default_rng(int(row["clip_seed"]) + 1)
    t = np.arange(n_samples) / _SR
    f0 = 100.0 * 3.0 ** row["cue_voice_height"]
    formant = 500.0 * 4.0 ** row["cue_voice_height"]
    table_size = 2048
    k = np.arange(1, int(5000 // f0) + 1)
    amp = (0.15 + np.exp(-0.5 * ((k * f0 - formant) / (0.35 * formant)) ** 2)) / k
    table = (amp[:, None] * np.sin(np.outer(k, np.arange(table_size) * 2 * np.pi / table_size))).sum(axis=0)
    table = np.append(table, table[0]) / np.abs(table).max()
    phase = np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t)) / _SR) % 1.0
    tone = np.interp(phase * table_size, np.arange(table_size + 1), table)

    envelope = np.zeros(n_samples)
    syllable = np.hanning(int(0.11 * _SR))
    period = 1.0 / (1.5 + 4.0 * row["cue_speech_rate"])
    start = rng.uniform(0, period)
    while start + 0.11 < n_samples / _SR:
        s = int(start * _SR)
        envelope[s:s + syllable.size] = np.maximum(envelope[s:s + syllable.size], syllable[:n_samples - s])
        start += period * rng.uniform(0.8, 1.2)

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
    the cue's noise, default ``cue_noise``), recovered as ``h = 5 (u - 0.5)``.
    ``E[z | h] = R P' (P R P' + diag(n^2))^+ h`` (P holds the signs; pseudo-inverse: two
    noiseless cues of one trait make the matrix singular).
    """
    corr = LABEL_CORR[:len(TRAITS), :len(TRAITS)]
    select = np.zeros((len(cues), len(TRAITS)))
    for j, cue in enumerate(cues):
        select[j, TRAITS.index(cue.trait)] = cue.sign
    noise = np.array([cue_noise if c.noise is None else c.noise for c in cues])
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
        DataFrame indexed by ``ceiling`` (all cues), ``audio_only``, ``video_only`` and
        ``mean_baseline``, with one column per trait (``1 - MAE`` of that trait) and
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
                         ("video_only", tuple(c for c in cues if c.modality == "video"))):
        values = part[[f"cue_{c.name}" for c in subset]].to_numpy()
        preds[name] = _conditional_mean(values, subset, cue_noise)
    train_mean = plan.loc[plan["split"] == "train", list(TRAITS)].to_numpy().mean(axis=0)
    preds["mean_baseline"] = np.broadcast_to(train_mean, truth.shape)
    table = pd.DataFrame({name: 1.0 - np.abs(truth - p).mean(axis=0) for name, p in preds.items()},
                         index=list(TRAITS)).T
    table["one_minus_mae"] = table[list(TRAITS)].mean(axis=1)
    return table
