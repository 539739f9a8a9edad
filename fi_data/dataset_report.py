"""Split sizes and per-split trait distributions of a clip table (the assignment's
"print the size of each set" and "plot the distributions of the 5 personality traits")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fi_data.annotations import youtube_id
from fi_data.traits import SPLITS, TRAITS


def split_sizes(clips: pd.DataFrame) -> pd.DataFrame:
    """Per split: number of clips, of distinct YouTube ids (speakers), share of all clips,
    and the mean of each trait.

    Args:
        clips: a clip table (columns ``clip_id``, ``split`` and ``TRAITS`` at least).

    Returns:
        DataFrame indexed by ``SPLITS`` plus ``"total"``; columns ``clips``, ``speakers``,
        ``share`` and ``mean_<trait>`` for each trait (NaN for an empty split).
    """
    rows = {}
    for name in (*SPLITS, "total"):
        part = clips if name == "total" else clips[clips["split"] == name]
        row = {"clips": len(part), "speakers": part["clip_id"].map(youtube_id).nunique(),
               "share": len(part) / len(clips) if len(clips) else np.nan}
        row.update({f"mean_{t}": part[t].mean() if len(part) else np.nan for t in TRAITS})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def print_split_sizes(clips: pd.DataFrame, file=None) -> str:
    """Print the size of each set (clips, speakers, share) and return the printed text."""
    table = split_sizes(clips)[["clips", "speakers", "share"]]
    text = table.to_string(formatters={"share": "{:.1%}".format})
    print(text, file=file)
    return text


def plot_trait_distributions(clips: pd.DataFrame, out_png: str | os.PathLike, bins: int = 20) -> Path:
    """Histogram of each of the five traits, one outline per split, with each split's mean.

    Args:
        clips: a clip table (columns ``split`` and ``TRAITS``; values in [0, 1]).
        out_png: output PNG path (parent folders are created).
        bins: number of equal-width bins over [0, 1].

    Returns:
        ``Path(out_png)``.
    """
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 6.4), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    sizes = split_sizes(clips)
    for ax, trait in zip(axes, TRAITS):
        for i, split in enumerate(SPLITS):
            values = clips.loc[clips["split"] == split, trait].to_numpy(dtype=float)
            if values.size:
                ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.5, color=f"C{i}")
                ax.axvline(values.mean(), color=f"C{i}", linestyle=":", linewidth=1)
        ax.set_title(trait)
        ax.set_xlabel("label (dotted: split mean)")
        ax.set_ylabel("density")
        ax.set_xlim(0, 1)
    legend_ax = axes[len(TRAITS)]
    legend_ax.axis("off")
    handles = [legend_ax.plot([], [], color=f"C{i}", linewidth=1.5)[0] for i in range(len(SPLITS))]
    labels = []
    for split in SPLITS:
        means = " ".join(f"{sizes.loc[split, 'mean_' + t]:.3f}" for t in TRAITS)
        labels.append(f"{split}: {int(sizes.loc[split, 'clips'])} clips\nmeans (OCEAN) {means}")
    legend_ax.legend(handles, labels, loc="center", fontsize=9, frameon=False)
    fig.savefig(out_png, dpi=100)
    return out_png
