"""Plot a few cached samples: their frames, their audio features and their five labels (PNG),
and select the clips a cache uses (for the trait-distribution plot)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from librosa.display import specshow
from matplotlib.figure import Figure

from fi_data.cache_format import FeatureCache, open_cache
from fi_data.traits import TRAITS


def used_clips(clips: pd.DataFrame, cache: FeatureCache) -> pd.DataFrame:
    """The rows of a clip table that the cache holds (status ``ok``, a row in its split's arrays).

    Pass this to ``fi_data.dataset_report.plot_trait_distributions`` so that its legend
    counts the clips used for training and scoring, not every clip discovered.

    Args:
        clips: a clip table (column ``clip_id`` at least), e.g. ``discover(...).clips``.
        cache: the opened feature cache built from it.

    Returns:
        The matching rows, in their original order.
    """
    ids = set()
    for split, info in cache.manifest.get("splits", {}).items():
        if info.get("n"):
            ids.update(cache.split(split).clip_ids)
    return clips[clips["clip_id"].isin(ids)]


def _rows_standardized(features: np.ndarray) -> np.ndarray:
    """Each row (coefficient) of ``(rows, T)`` minus its mean over time, over its SD (0 for a constant row)."""
    features = np.asarray(features, dtype=np.float64)
    sd = features.std(axis=1, keepdims=True)
    return np.divide(features - features.mean(axis=1, keepdims=True), sd, out=np.zeros_like(features), where=sd > 1e-8)


def plot_samples(cache: FeatureCache | str | os.PathLike, out_png: str | os.PathLike, n: int = 3,
                 split: str = "train") -> Path:
    """Save :func:`sample_figure` as a PNG (80 dpi) at ``out_png`` (parent folders are created).

    Returns:
        The path written.

    Raises:
        ValueError: if the split is empty or ``n < 1``.
    """
    fig = sample_figure(cache, n, split)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    return out_png


def sample_figure(cache: FeatureCache | str | os.PathLike, n: int = 3, split: str = "train") -> Figure:
    """A figure with one row per sample: its frames, its audio features and its five labels.

    The samples are the first ``n`` rows of ``split``. The audio panel is drawn with
    ``librosa.display.specshow``: the time axis in seconds from the cache's ``sample_rate``
    and ``hop_length`` (in frames when the cache does not record them); each coefficient's
    row standardized over time (the cached features are standardized per sample, so c0,
    the energy, would otherwise take the whole colour range and the others look flat); for
    ``mean_mfcc`` caches the single column of cached means. A sample kept with flags (e.g.
    ``silent_audio``, whose features are zeros and draw blank) carries them in red.

    Args:
        cache: a :class:`FeatureCache` or its folder.
        n: number of samples (at most the split's size).
        split: which split to draw from.

    Returns:
        The Matplotlib ``Figure``, ``(2 F + 8) x 2.4 n`` inches for F frames; per sample its
        axes are the F frames, the audio panel, its colour bar and the label bars.

    Raises:
        ValueError: if the split is empty or ``n < 1``.
    """
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    arrays = cache.split(split)
    n = min(n, len(arrays))
    if n < 1:
        raise ValueError(f"cannot plot samples: split {split!r} of {cache.path} is empty or n < 1")
    params = cache.params
    entries = cache.manifest.get("clips", {})
    representation = params.get("representation", "audio")
    rows_name = "log-mel band" if representation == "logmel" else "MFCC"
    n_frames = arrays.frames.shape[1]
    fig = Figure(figsize=(2.0 * n_frames + 8, 2.4 * n), layout="constrained")
    fig.suptitle(f"First {n} {split} samples of the feature cache {cache.path.name}: "
                 f"{n_frames} frames, audio features, labels", fontsize=11)
    grid = fig.add_gridspec(n, n_frames + 2, width_ratios=[1] * n_frames + [3, 1.6])
    for row in range(n):
        clip_id = arrays.clip_ids[row]
        flags = list(entries.get(clip_id, {}).get("flags", []))
        for f in range(n_frames):
            ax = fig.add_subplot(grid[row, f])
            ax.imshow(arrays.frames[row, f])
            ax.set_axis_off()
            if f == 0:
                ax.set_title(clip_id + (f"  flags: {', '.join(flags)}" if flags else ""), loc="left", fontsize=9,
                             color="tab:red" if flags else "black")
        ax = fig.add_subplot(grid[row, n_frames])
        features = np.asarray(arrays.audio[row])[..., 0] if arrays.audio.ndim == 4 else np.asarray(arrays.audio[row])
        if features.shape[1] > 1:
            shown = _rows_standardized(features)
            timed = "sample_rate" in params and "hop_length" in params
            image = specshow(shown, x_axis="time" if timed else None, sr=params.get("sample_rate", 22050),
                             hop_length=params.get("hop_length", 512), ax=ax, cmap="coolwarm", vmin=-3, vmax=3)
            ax.set_xlabel("time (s)" if timed else "frame (hop)")
            ax.set_title(f"{representation}: each row standardized over time", fontsize=9)
            bar_label = "z-score within the row"
        else:  # mean-MFCC vector: one column, whose cell edges specshow cannot infer
            shown = features
            image = specshow(features, x_coords=np.array([0.0, 1.0]), y_coords=np.arange(features.shape[0] + 1.0),
                             ax=ax)
            ax.set_title(f"{representation}: time-mean of the standardized {rows_name}s", fontsize=9)
            bar_label = "standardized value"
        ax.set_ylabel(f"{rows_name} index")
        fig.colorbar(image, ax=ax, label=bar_label)
        if flags or not np.any(shown):
            ax.text(0.5, 0.5, ("flags: " + ", ".join(flags)) if flags else "no audio features (all zero)",
                    transform=ax.transAxes, ha="center", va="center", color="tab:red", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "tab:red"})
        ax = fig.add_subplot(grid[row, n_frames + 1])
        ax.barh(range(len(TRAITS)), arrays.targets[row], color="tab:blue")
        ax.set_yticks(range(len(TRAITS)), labels=TRAITS, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("label (0 to 1)", fontsize=8)
        ax.set_title("Big Five labels", fontsize=9)
        ax.invert_yaxis()
        for i, value in enumerate(arrays.targets[row]):
            ax.text(min(float(value), 0.75) + 0.02, i, f"{value:.2f}", va="center", fontsize=8)
    return fig
