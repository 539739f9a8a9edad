"""Plot a few cached samples: their frames, their audio features and their five labels (PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from librosa.display import specshow
from matplotlib.figure import Figure

from fi_data.cache_format import FeatureCache, open_cache
from fi_data.traits import TRAITS


def plot_samples(cache: FeatureCache | str | os.PathLike, out_png: str | os.PathLike, n: int = 3,
                 split: str = "train") -> Path:
    """Save a PNG with one row per sample: its frames, its MFCCs and its five labels.

    The samples are the first ``n`` rows of ``split``. The audio panel is drawn with
    ``librosa.display.specshow`` (time axis in seconds from the cache's sample rate and hop
    length; for ``mean_mfcc`` caches, the single column of means).

    Args:
        cache: a :class:`FeatureCache` or its folder.
        out_png: where to write the figure (parent folders are created).
        n: number of samples (at most the split's size).
        split: which split to draw from.

    Returns:
        The path written.

    Raises:
        ValueError: if the split is empty or ``n < 1``.
    """
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    arrays = cache.split(split)
    n = min(n, len(arrays))
    if n < 1:
        raise ValueError(f"cannot plot samples: split {split!r} of {cache.path} is empty or n < 1")
    params = cache.params
    n_frames = arrays.frames.shape[1]
    fig = Figure(figsize=(2.0 * n_frames + 8, 2.4 * n), layout="constrained")
    grid = fig.add_gridspec(n, n_frames + 2, width_ratios=[1] * n_frames + [3, 1.6])
    for row in range(n):
        for f in range(n_frames):
            ax = fig.add_subplot(grid[row, f])
            ax.imshow(arrays.frames[row, f])
            ax.set_axis_off()
            if f == 0:
                ax.set_title(arrays.clip_ids[row], loc="left", fontsize=9)
        ax = fig.add_subplot(grid[row, n_frames])
        features = np.asarray(arrays.audio[row])[..., 0] if arrays.audio.ndim == 4 else np.asarray(arrays.audio[row])
        if features.shape[1] > 1:
            image = specshow(features, x_axis="time", sr=params.get("sample_rate", 22050),
                             hop_length=params.get("hop_length", 512), ax=ax)
        else:  # mean-MFCC vector: one column, whose cell edges specshow cannot infer
            image = specshow(features, x_coords=np.array([0.0, 1.0]), y_coords=np.arange(features.shape[0] + 1.0),
                             ax=ax)
        ax.set_ylabel("log-mel band" if params.get("representation") == "logmel" else "MFCC")
        ax.set_title(f"{params.get('representation', 'audio')} (standardized)", fontsize=9)
        fig.colorbar(image, ax=ax)
        ax = fig.add_subplot(grid[row, n_frames + 1])
        ax.barh(range(len(TRAITS)), arrays.targets[row], color="tab:blue")
        ax.set_yticks(range(len(TRAITS)), labels=TRAITS, fontsize=8)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        for i, value in enumerate(arrays.targets[row]):
            ax.text(min(float(value), 0.75) + 0.02, i, f"{value:.2f}", va="center", fontsize=8)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    return out_png
