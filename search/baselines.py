"""The clip-statistics ridge: a strong linear baseline fitted on the feature cache in seconds.

Features (``fi_models.statistics``, documented there): per MFCC coefficient its mean, SD and
mean absolute first difference over time (``AudioStatistics``, 72 numbers for 24 MFCCs);
per colour channel the means of a 3 x 3 grid of the frame, the SD of the whole frame and of
its centre cell, and the mean absolute difference of consecutive frames
(``FrameStatistics``, 36 numbers). The baseline reads the cached frames whole (no crop).

Fitting (:func:`ridge_baseline`): three variants, audio statistics alone, video statistics
alone and both; each is scikit-learn's ``StandardScaler`` fitted on the TRAINING split
followed by ``RidgeCV`` (one alpha per trait, chosen among :data:`ALPHAS` by RidgeCV's
efficient leave-one-out cross-validation on the training split). The variant with the best
VALIDATION 1-MAE is the baseline; it is scored on every split. The test split is read only
to score, after the variant is chosen.

The same statistics, computed on the centre crop the model sees, also give the model its
statistics branches and its fixed ridge path (:func:`statistics_init`, used by
``search.hypermodel``), so the searched model starts where this baseline is. With face crops
the ridge path also reads the face's appearance (:func:`face_appearance`, a 16 x 16 luma
picture of the aligned crop), which clip statistics cannot see; the baseline itself does not.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from fi_data.cache_format import FeatureCache, SplitArrays
from fi_data.errors import UserError
from fi_data.pipeline import center_crop_frames
from fi_data.traits import SPLITS
from fi_models.fusion import StatisticsInit
from fi_models.statistics import APPEARANCE_GRID, AudioStatistics, FaceAppearance, FrameStatistics

ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 33))
"""Ridge penalties RidgeCV chooses from (per trait): 1e-3 .. 1e5, 4 per decade."""

VARIANTS = ("audio", "video", "both")
"""The feature sets of the baseline, in order of preference on ties."""

DESCRIPTION = ("RidgeCV (alpha per trait by leave-one-out CV on the training split) on standardized clip "
               "statistics: per MFCC coefficient mean/SD/mean |delta| over time; per colour channel 3x3-grid "
               "means, frame SD, centre-cell SD and frame-to-frame change; variant (audio, video or both) "
               "chosen on validation")


def clip_statistics(split: SplitArrays, *, crop_size: int | None = None, batch_size: int = 64) -> tuple:
    """Audio and frame statistics of every clip of a split (``fi_models.statistics``).

    Args:
        split: a cached split; rows are read ``batch_size`` at a time (memory stays bounded).
        crop_size: None: the whole frames; else the exact centre crop the model sees at
            validation and test (``fi_data.pipeline.center_crop_frames``).
        batch_size: clips per step.

    Returns:
        ``(audio_features, video_features)``: float64 arrays ``(n, d_a)`` and ``(n, d_v)``,
        finite (the cache holds finite values).
    """
    audio_layer, frame_layer = AudioStatistics(), FrameStatistics()
    audio, video = [], []
    for start in range(0, len(split), batch_size):
        frames = np.asarray(split.frames[start:start + batch_size])
        if crop_size is not None:
            frames = center_crop_frames(frames, crop_size)
        audio.append(np.asarray(audio_layer(np.asarray(split.audio[start:start + batch_size])), np.float64))
        video.append(np.asarray(frame_layer(frames), np.float64))
    return np.concatenate(audio), np.concatenate(video)


def face_appearance(split: SplitArrays, source: str, *, crop_size: int, batch_size: int = 64) -> np.ndarray:
    """The ``fi_models.statistics.FaceAppearance`` cells of every clip's centre-cropped face crops.

    Args:
        split: a cached split; rows are read ``batch_size`` at a time.
        source: ``"face"`` (the split's ``faces``, frames "both") or ``"video"`` (its frames,
            when they are the face crops, frames "face").
        crop_size: the side of the centre crop the model sees (``center_crop_frames``).
        batch_size: clips per step.

    Returns:
        float64 ``(n, APPEARANCE_GRID**2)``, finite.

    Raises:
        ValueError: ``source`` is "face" and the split has no face crops, or an unknown source.
    """
    if source not in ("face", "video"):
        raise ValueError(f"unknown face appearance source {source!r}; expected 'face' or 'video'")
    arrays = split.faces if source == "face" else split.frames
    if arrays is None:
        raise ValueError(f"split {split.name!r} has no face crops to read face appearance from")
    layer, out = FaceAppearance(), []
    for start in range(0, len(split), batch_size):
        crops = center_crop_frames(np.asarray(arrays[start:start + batch_size]), crop_size)
        out.append(np.asarray(layer(crops), np.float64))
    return np.concatenate(out)


def _fit(features: np.ndarray, targets: np.ndarray) -> tuple:
    scaler = StandardScaler().fit(features)
    ridge = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(scaler.transform(features), targets)
    return scaler, ridge


def _one_minus_mae(y_true, y_pred) -> float:
    return float(1.0 - np.abs(np.asarray(y_true, np.float64) - y_pred).mean())


def ridge_baseline(cache: FeatureCache, *, splits=SPLITS) -> dict:
    """Fit the clip-statistics ridge on train, choose its variant on validation, predict ``splits``.

    Args:
        cache: the opened feature cache (its train and validation splits are read first;
            the other splits of ``splits`` only after the variant is chosen).
        splits: splits to predict (must include nothing the caller may not open).

    Returns:
        dict with ``variant`` (one of :data:`VARIANTS`), ``validation_one_minus_mae``
        (variant -> validation 1-MAE of each variant), ``alphas`` (trait-order list of the
        chosen variant's penalties), ``n_features`` and ``predictions`` (split -> float32
        ``(n, 5)`` in ``TRAITS`` order), and ``description``.

    Raises:
        ValueError: a split with fewer than 2 clips (RidgeCV needs 2).
    """
    feats = {s: clip_statistics(cache.split(s)) for s in ("train", "validation")}
    targets = np.asarray(cache.split("train").targets, np.float64)
    if len(targets) < 2:
        raise UserError(f"{cache.path}: the training split has {len(targets)} clip(s); the ridge needs 2")

    def select(variant, audio, video):
        return {"audio": audio, "video": video, "both": np.hstack([audio, video])}[variant]

    fitted, val_scores = {}, {}
    val_true = cache.split("validation").targets
    for variant in VARIANTS:
        scaler, ridge = _fit(select(variant, *feats["train"]), targets)
        fitted[variant] = (scaler, ridge)
        val_scores[variant] = _one_minus_mae(val_true, ridge.predict(scaler.transform(
            select(variant, *feats["validation"]))))
    best = max(VARIANTS, key=lambda v: val_scores[v])  # max keeps the first on ties
    scaler, ridge = fitted[best]
    predictions = {}
    for split in splits:
        audio, video = feats[split] if split in feats else clip_statistics(cache.split(split))
        predictions[split] = ridge.predict(scaler.transform(select(best, audio, video))).astype(np.float32)
    return {"variant": best, "validation_one_minus_mae": val_scores,
            "alphas": np.atleast_1d(ridge.alpha_).astype(float).tolist(),
            "n_features": int(scaler.n_features_in_), "predictions": predictions, "description": DESCRIPTION}


def statistics_init(split: SplitArrays, target_mean, target_std, *, crop_size: int,
                    ridge: bool = True, appearance_from: str | None = None) -> StatisticsInit:
    """The model's statistics moments and fixed ridge path, from the TRAINING split.

    The statistics are those of the centre crop the model sees; the ridge (``RidgeCV``
    over :data:`ALPHAS`, one alpha per trait) maps the standardized statistics ``[audio,
    video]`` (and, with ``appearance_from``, the face appearance cells after them) to the
    standardized targets ``(y - target_mean) / target_std``, which is what the model's
    ``LabelScale`` output expects. The clip-statistics ridge baseline (:func:`ridge_baseline`)
    never reads face appearance: it stays the baseline of clip statistics.

    Args:
        split: the training split.
        target_mean, target_std: ``(5,)`` the split's label mean and SD
            (``fi_models.fusion.target_statistics``).
        crop_size: the model's crop side in pixels.
        ridge: fit the ridge path (else only the moments).
        appearance_from: ``None``, ``"face"`` or ``"video"``: where the ridge path reads face
            appearance (:func:`face_appearance`; ``fi_models.fusion.StatisticsInit``). Ignored
            without ``ridge`` or when ``crop_size`` is under ``APPEARANCE_GRID``.

    Returns:
        A ``fi_models.fusion.StatisticsInit``.

    Raises:
        ValueError: any error of :func:`face_appearance`.
    """
    audio, video = clip_statistics(split, crop_size=crop_size)
    init = dict(audio_mean=tuple(audio.mean(0)), audio_var=tuple(audio.var(0)),
                video_mean=tuple(video.mean(0)), video_var=tuple(video.var(0)))
    if ridge:
        both = np.hstack([audio, video])
        if appearance_from is not None and crop_size >= APPEARANCE_GRID:
            cells = face_appearance(split, appearance_from, crop_size=crop_size)
            init.update(appearance_from=appearance_from, appearance_mean=tuple(cells.mean(0)),
                        appearance_var=tuple(cells.var(0)))
            both = np.hstack([both, cells])
        var = np.where(both.var(0) > 1e-12, both.var(0), 1.0)  # as fi_models.fusion's standardizer
        standardized = (both - both.mean(0)) / np.sqrt(var)
        z = (np.asarray(split.targets, np.float64) - np.asarray(target_mean)) / np.asarray(target_std)
        fit = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(standardized, z)
        init.update(ridge_kernel=tuple(map(tuple, fit.coef_.T)), ridge_bias=tuple(np.ravel(fit.intercept_)))
    return StatisticsInit(**init)
