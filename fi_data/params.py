"""The preprocessing settings: every parameter that changes the cached arrays, each defined once.

:class:`PreprocessParams` is hashed into the cache key (``fi_data.cache.cache_key``), saved in
the cache manifest and in every run folder's ``preprocessing.json``, and turned into the
command line's preprocessing flags (``fi_data.settings``). Light on purpose (no librosa,
no OpenCV), so ``run_search.py --help`` stays instant.
"""

from __future__ import annotations

import dataclasses

from fi_data.settings import choice_problems, positive_int, setting

REPRESENTATIONS = ("mfcc", "mean_mfcc", "logmel")
"""``mfcc``: (n_mfcc, M, 1); ``mean_mfcc``: the time-mean of the standardized MFCCs, (n_mfcc, 1);
``logmel``: standardized log-mel spectrogram in dB, (n_mels, M, 1) (see ``fi_data.audio``)."""

CROP_SIZE = 128
"""Default side, in pixels, of the square crop of the cached frames that the model sees (random
while training, centred for validation, test and prediction): 128 of the 140-pixel frame height
leaves 12 pixels of vertical and 120 of horizontal jitter. ``search.config.SearchConfig.crop_size``
and every function of ``fi_data.pipeline`` default to it."""

FRAME_STREAMS = ("whole", "face", "both")
"""What the cache keeps of each sampled frame (``PreprocessParams.frames``): ``whole`` the fitted
whole frame (``frame_height x frame_width``, black bars removed), ``face`` a square crop around
the speaker's face instead (``face_size`` pixels a side, ``fi_data.faces``), ``both`` the two
(the model gets a visual branch for each)."""

FACE_SIZE = 144
"""Default side, in pixels, of a cached face crop (``fi_data.faces``).

144 leaves the default 128-pixel random crop (:data:`CROP_SIZE`) 16 pixels of jitter on each
axis, as the 140x248 whole frames leave it room. The face square is 1.5 of the cascade's box
(``fi_data.faces.FACE_MARGIN``), so a 128-pixel crop spans 1.33 box sides and its largest
shift, 16 of 144 pixels, is 0.17 box sides, the spare it has on each side: every such crop
still holds the whole box (eyes to mouth).
"""

SCALE_FLAGS = ("area", "bilinear", "bicubic", "lanczos", "neighbor")
"""Resize algorithms by swscale's name (mapped to OpenCV's interpolations in ``fi_data.video``)."""


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    """Every parameter that changes the cached arrays (all of them go into the cache key).

    Audio (see ``fi_data.audio``): ``sample_rate`` Hz (mono mix-down), ``representation``
    (``"mfcc"`` -> ``(n_mfcc, M, 1)``, ``"mean_mfcc"`` -> ``(n_mfcc, 1)``, ``"logmel"`` ->
    ``(n_mels, M, 1)``), ``n_mfcc``, ``n_fft`` / ``hop_length`` in samples, ``window``
    (a ``scipy.signal.get_window`` name), ``n_mels`` mel bands from ``fmin`` to ``fmax`` Hz
    (``None`` = Nyquist), ``top_db`` (dynamic range kept by ``librosa.power_to_db``),
    ``standardize`` (``"sample"`` or ``"coefficient"``), ``std_floor`` (minimum SD, in the
    features' dB units; real speech features vary by tens of dB), ``silence_db`` (peak dBFS
    below which audio counts as silent; -80 dBFS is just above 16-bit audio's -96 dBFS
    quantisation floor and below any real recording's noise), ``padding`` / ``truncating`` (``"pre"`` or ``"post"``).
    The defaults (16 kHz, 512-sample window, 256 hop, Hann, 64 mel bands, top_db 80) are
    explained in ``fi_data.audio``.

    Video (see ``fi_data.video``): ``n_frames`` per clip, ``frames`` (:data:`FRAME_STREAMS`:
    the whole frame, a face crop ``face_size`` pixels a side, or both), ``frame_height`` x ``frame_width``
    pixels, ``scale_flags`` (resize algorithm by swscale's name, ``"area"``, ``"bilinear"``,
    ``"bicubic"``, ``"lanczos"`` or ``"neighbor"``), ``skip_loop_filter`` (skip H.264 deblocking
    when decoding; faster, changes pixels slightly).

    Each field's help text and allowed values are in its :func:`fi_data.settings.setting`
    declaration; the command line's flags are made from them.

    Raises:
        ValueError: for an unknown choice or a non-positive size (on construction).
    """

    sample_rate: int = setting(16000, parse=positive_int, help="audio sample rate in Hz after mixing down to mono")
    representation: str = setting(
        "mfcc", choices=REPRESENTATIONS,
        help="audio input: MFCC matrix (N, M, 1), mean-MFCC vector (N, 1), or log-mel spectrogram in dB (n_mels, M, 1)")
    n_mfcc: int = setting(24, parse=positive_int, help="MFCC coefficients N")
    n_fft: int = setting(512, parse=positive_int, help="FFT window in samples", default_text="512 = 32 ms at 16 kHz")
    hop_length: int = setting(256, parse=positive_int, help="hop between audio frames in samples",
                              default_text="256 = 16 ms at 16 kHz")
    window: str = setting("hann", help="FFT window, a scipy.signal.get_window name")
    n_mels: int = setting(64, parse=positive_int, help="mel bands")
    fmin: float = setting(0.0, help="lowest mel band edge in Hz")
    fmax: float | None = setting(None, help="highest mel band edge in Hz (None: the Nyquist frequency)")
    top_db: float | None = setting(80.0, help="dynamic range kept by librosa.power_to_db, in dB")
    standardize: str = setting("sample", choices=("sample", "coefficient"),
                               help="audio standardization: over the whole sample, or per coefficient row")
    std_floor: float = setting(1e-3, help="smallest SD used in the standardization, in the features' units")
    silence_db: float = setting(-80.0, help="peak level in dBFS below which a clip's audio counts as silent")
    padding: str = setting("pre", choices=("pre", "post"), help="where short audio is padded with zeros")
    truncating: str = setting("pre", choices=("pre", "post"), help="where long audio is cut")
    n_frames: int = setting(6, parse=positive_int, help="video frames per clip")
    frames: str = setting(
        "whole", choices=FRAME_STREAMS,
        help="what the model sees of each frame: the whole frame (black bars removed), a square crop around the "
             "speaker's face (scikit-image's LBP face cascade, median box over a few frames; no face found: an "
             "upper-centre square and the no_face flag), or both (one visual branch each). With face crops the "
             "model's ridge path also reads a 16x16 picture of the face (fi_models.statistics.FaceAppearance)")
    face_size: int = setting(FACE_SIZE, parse=positive_int, help="side of the cached face crops in pixels")
    frame_height: int = setting(140, parse=positive_int, help="cached frame height in pixels")
    frame_width: int = setting(248, parse=positive_int, help="cached frame width in pixels")
    scale_flags: str = setting("area", choices=SCALE_FLAGS, help="resize algorithm (swscale's name)")
    skip_loop_filter: bool = setting(True, help="skip H.264 deblocking when decoding (faster, pixels change slightly)")

    def __post_init__(self):
        problems = choice_problems(self)
        if problems:
            raise ValueError(f"PreprocessParams.{problems[0]}")
        for name in ("sample_rate", "n_mfcc", "n_fft", "hop_length", "n_mels", "n_frames", "frame_height",
                     "frame_width", "face_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PreprocessParams.{name} must be a positive integer, got {value!r}")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        if not self.std_floor > 0:
            raise ValueError(f"std_floor must be > 0, got {self.std_floor!r}")
        if self.representation == "mean_mfcc" and self.standardize == "coefficient":
            raise ValueError("mean_mfcc with standardize='coefficient' would be all zeros (every row has mean 0); "
                             "use standardize='sample'")

    @property
    def frame_shape(self) -> tuple:
        """One clip's cached ``frames``: ``(n_frames, frame_height, frame_width, 3)``, or
        ``(n_frames, face_size, face_size, 3)`` with ``frames="face"``."""
        if self.frames == "face":
            return (self.n_frames, self.face_size, self.face_size, 3)
        return (self.n_frames, self.frame_height, self.frame_width, 3)

    @property
    def face_shape(self) -> tuple | None:
        """One clip's cached ``faces`` ``(n_frames, face_size, face_size, 3)`` with ``frames="both"``, else None."""
        return (self.n_frames, self.face_size, self.face_size, 3) if self.frames == "both" else None

    def to_dict(self) -> dict:
        """The parameters as a JSON-ready dict (the manifest's ``params``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessParams":
        """Rebuild from :meth:`to_dict` output (e.g. a cache manifest's ``params``).

        Raises:
            ValueError: for keys this version does not know (the cache was made by other code).
        """
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown preprocessing parameters {sorted(unknown)}; was the cache made by another "
                             "version of the toolkit?")
        return cls(**d)


CLI_PREPROCESSING = ("representation", "sample_rate", "n_mfcc", "n_mels", "n_fft", "hop_length", "n_frames", "frames",
                     "face_size")
"""The preprocessing settings the command line offers (in ``--help`` order); the others keep their defaults."""
