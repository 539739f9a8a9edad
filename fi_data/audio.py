"""Audio features: MFCC, mean-MFCC or log-mel, standardized per sample, padded to M frames.

The waveform comes from ffmpeg (``fi_data.ffmpeg_tools.decode_clip``) as float32 PCM at
``params.sample_rate`` (16 kHz by default: speech keeps its formants below 8 kHz), and is
mixed down to mono here by averaging the channels, so a mono clip and a stereo clip with the
same signal in both channels give the same features.

Spectral frames (librosa, ``center=True``): window ``n_fft`` samples (512 = 32 ms at 16 kHz),
hop ``hop_length`` (256 = 16 ms), Hann window; a signal of ``L`` samples gives exactly
``1 + L // hop_length`` frames (:func:`n_spectral_frames`). The log-mel spectrogram is
``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=1.0, top_db=80)`` with
``n_mels`` bands; the 24 MFCCs are its orthonormal DCT-II (``librosa.feature.mfcc(S=...)``,
the same as librosa's own MFCC path).

Standardization is per sample (assignment: "standardize the MFCCs sample-wise"). The default,
``"sample"``, uses ONE mean and ONE standard deviation over the whole ``(coefficients, frames)``
matrix: it keeps the relative scale of the coefficients (the spectral envelope, and c0's
energy relative to the rest, i.e. loudness and tilt, which may carry personality cues) and
makes 0 the sample mean, so pre-padding with 0 pads with the mean. ``"coefficient"``
(cepstral mean and variance normalisation, per row) is offered too; it removes loudness and
channel colour. The deviation is floored at ``std_floor`` so a constant matrix gives zeros.

Unusable audio gets all-zero features (= the mean after standardization) and a flag, in
every split alike: ``no_audio_stream``, ``audio_decode_failed``, ``audio_zero_length``,
``audio_shorter_than_fft_window`` (fewer than ``n_fft`` samples), ``audio_nonfinite``
(NaN/Inf samples) and ``silent_audio`` (peak below ``silence_db`` dBFS; digital silence would
otherwise give a constant log-mel floor that standardization turns into noise-free stripes).
Such clips (except silent ones, which have a real length) do not count towards M.

Length: M = round(mean number of frames over the training clips with usable audio). Shorter
samples are pre-padded with 0 (``padding="pre"``: zeros first, so every clip's end lines up at
the last time step, as Keras' ``pad_sequences`` does by default); longer ones are truncated
from the start (``truncating="pre"``, also Keras' default), keeping the last M frames.
"""

from __future__ import annotations

import numpy as np
from librosa import power_to_db
from librosa.feature import melspectrogram, mfcc

from fi_data.params import REPRESENTATIONS  # noqa: F401 - defined with the settings, used here


def n_spectral_frames(n_samples: int, hop_length: int) -> int:
    """Number of frames librosa gives for ``n_samples`` with ``center=True``: ``1 + n // hop``."""
    return 1 + int(n_samples) // int(hop_length)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of float ``(n_samples, channels)`` PCM; returns float32 ``(n_samples,)``."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def audio_problem(y: np.ndarray, n_fft: int, silence_db: float) -> str | None:
    """The flag for a mono waveform that cannot give real features, or ``None`` if it can.

    Returns one of ``"audio_zero_length"``, ``"audio_shorter_than_fft_window"`` (fewer than
    ``n_fft`` samples), ``"audio_nonfinite"`` or ``"silent_audio"`` (peak below ``silence_db``
    dB relative to full scale 1.0).
    """
    if y.size == 0:
        return "audio_zero_length"
    if y.size < n_fft:
        return "audio_shorter_than_fft_window"
    if not np.isfinite(y).all():
        return "audio_nonfinite"
    if float(np.max(np.abs(y))) < 10.0 ** (silence_db / 20.0):
        return "silent_audio"
    return None


def spectral_features(y: np.ndarray, params) -> np.ndarray:
    """MFCC ``(n_mfcc, T)`` or log-mel dB ``(n_mels, T)`` of a mono waveform, float32.

    ``params`` is a ``fi_data.cache.PreprocessParams`` (sample_rate, n_fft, hop_length,
    window, n_mels, fmin, fmax, top_db, n_mfcc, representation); ``T = 1 + len(y) // hop``.
    """
    mel_power = melspectrogram(y=np.asarray(y, dtype=np.float32), sr=params.sample_rate, n_fft=params.n_fft,
                               hop_length=params.hop_length, window=params.window, center=True,
                               n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax, power=2.0)
    log_mel = power_to_db(mel_power, ref=1.0, top_db=params.top_db)
    if params.representation == "logmel":
        return log_mel.astype(np.float32)
    return mfcc(S=log_mel, n_mfcc=params.n_mfcc, dct_type=2, norm="ortho").astype(np.float32)


def standardize(x: np.ndarray, mode: str = "sample", std_floor: float = 1e-3) -> np.ndarray:
    """Zero mean / unit variance over one sample ``(coefficients, frames)``; float32.

    Args:
        mode: ``"sample"`` (one mean and SD for the whole matrix) or ``"coefficient"`` (per row).
        std_floor: lower bound on the SD, so constant input gives zeros, never NaN or Inf.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in ("sample", "coefficient"):
        raise ValueError(f"standardize mode must be 'sample' or 'coefficient', got {mode!r}")
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.astype(np.float32)
    axis = None if mode == "sample" else 1
    mean = x.mean(axis=axis, keepdims=True)
    std = np.maximum(x.std(axis=axis, keepdims=True), std_floor)
    return ((x - mean) / std).astype(np.float32)


def n_feature_rows(params) -> int:
    """Rows of the feature matrix: ``n_mels`` for log-mel, else ``n_mfcc``."""
    return params.n_mels if params.representation == "logmel" else params.n_mfcc


def waveform_features(samples: np.ndarray | None, params) -> tuple[np.ndarray, list[str]]:
    """Standardized, unpadded features of one clip's audio, and the audio flags.

    Args:
        samples: float PCM ``(n_samples, channels)`` or ``(n_samples,)`` at
            ``params.sample_rate``, or ``None`` when the clip has no audio stream.
        params: a ``fi_data.cache.PreprocessParams``.

    Returns:
        ``(features, flags)``: float32 ``(rows, T)`` with ``T = 1 + n_samples // hop``, all
        zeros for silent audio; ``(rows, 0)`` when the audio is unusable (see the module
        docstring); finite in every case.
    """
    rows = n_feature_rows(params)
    if samples is None:
        return np.zeros((rows, 0), np.float32), ["no_audio_stream"]
    y = to_mono(samples)
    problem = audio_problem(y, params.n_fft, params.silence_db)
    if problem == "silent_audio":
        return np.zeros((rows, n_spectral_frames(y.size, params.hop_length)), np.float32), [problem]
    if problem:
        return np.zeros((rows, 0), np.float32), [problem]
    features = standardize(spectral_features(y, params), params.standardize, params.std_floor)
    if not np.isfinite(features).all():  # cannot happen with a floored SD; guard the cache anyway
        return np.zeros((rows, 0), np.float32), ["audio_nonfinite"]
    return features, []


def pad_or_truncate(x: np.ndarray, length: int, padding: str = "pre", truncating: str = "pre") -> np.ndarray:
    """Bring ``(rows, T)`` to ``(rows, length)`` with zeros or by dropping frames; float32.

    Args:
        padding: ``"pre"`` puts the zeros first, ``"post"`` last.
        truncating: ``"pre"`` drops the first ``T - length`` frames, ``"post"`` the last.

    Raises:
        ValueError: for ``length < 1`` or an unknown side.
    """
    if padding not in ("pre", "post") or truncating not in ("pre", "post"):
        raise ValueError(f"padding/truncating must be 'pre' or 'post', got {padding!r}/{truncating!r}")
    if length < 1:
        raise ValueError(f"target length must be >= 1 frame, got {length}")
    x = np.asarray(x, dtype=np.float32)
    t = x.shape[1]
    if t >= length:
        return np.ascontiguousarray(x[:, t - length:] if truncating == "pre" else x[:, :length])
    zeros = np.zeros((x.shape[0], length - t), np.float32)
    return np.concatenate([zeros, x] if padding == "pre" else [x, zeros], axis=1)


def model_input(features: np.ndarray, params, mfcc_frames: int) -> np.ndarray:
    """The cached audio sample: ``(rows, M, 1)``, or ``(n_mfcc, 1)`` for ``mean_mfcc``; float32.

    Args:
        features: standardized unpadded ``(rows, T)`` from :func:`waveform_features`.
        mfcc_frames: M, the mean frame count of the training split (ignored for mean_mfcc).
    """
    if params.representation == "mean_mfcc":
        mean = features.mean(axis=1) if features.shape[1] else np.zeros(features.shape[0], np.float32)
        return mean.astype(np.float32)[:, None]
    return pad_or_truncate(features, mfcc_frames, params.padding, params.truncating)[:, :, None]


def audio_shape(params, mfcc_frames: int) -> tuple[int, ...]:
    """Shape of one cached audio sample for these parameters and M."""
    if params.representation == "mean_mfcc":
        return (params.n_mfcc, 1)
    return (n_feature_rows(params), int(mfcc_frames), 1)
