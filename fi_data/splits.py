"""Train / validation / test splits: the official one, or a speaker-disjoint re-split.

The official split (the organisers' annotation files) shares speakers between splits:
84% of the official test clips come from a YouTube video that also has a clip in the
training split (``../shared/DESIGN.md`` section 3), so test scores partly measure
recognising people seen in training. The ``speaker-disjoint`` mode regroups every clip
by its YouTube id (:func:`fi_data.annotations.youtube_id`) and deals whole groups to
the three splits, about 60 / 20 / 20 of the clips, deterministically for a seed, so each
YouTube id is in exactly one split and the test score measures generalisation to new
people.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fi_data.annotations import youtube_id
from fi_data.errors import UserError
from fi_data.traits import SPLITS

SPLIT_MODES = ("official", "speaker-disjoint")
"""Accepted values of ``split_mode`` (``speaker_disjoint`` is accepted as a spelling too)."""

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
"""Target share of clips for train, validation, test in the speaker-disjoint mode."""


def normalize_split_mode(mode: str) -> str:
    """``"speaker_disjoint"`` -> ``"speaker-disjoint"``; raises ValueError for unknown modes."""
    norm = str(mode).strip().lower().replace("_", "-")
    if norm not in SPLIT_MODES:
        raise UserError(f"unknown split mode {mode!r}; expected one of {SPLIT_MODES}")
    return norm


def speaker_disjoint_assignment(clip_ids, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> np.ndarray:
    """Assign each clip to a split so that no YouTube id is in two splits.

    The distinct YouTube ids are sorted, shuffled with ``numpy.random.default_rng(seed)``
    and dealt in that order: a group goes to train while fewer than ``fractions[0]`` of
    all clips are in train, then to validation until ``fractions[0] + fractions[1]``, then
    to test. The result depends only on the set of clip ids and the seed, not on row order.

    Args:
        clip_ids: iterable of clip ids (``<11-char YouTube id>.<NNN>``).
        fractions: three non-negative numbers summing to 1 (train, validation, test).
        seed: shuffling seed.

    Returns:
        Object array of split names (``SPLITS``), aligned with ``clip_ids``.

    Raises:
        ValueError: bad fractions, or a split would be left empty (too few YouTube ids).
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise UserError(f"fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}")
    groups = pd.Series([youtube_id(c) for c in clip_ids], dtype=object)
    sizes = groups.value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(len(sizes))
    bounds = np.cumsum(fractions)[:2] * len(groups)
    assigned, filled = {}, 0
    for i in order:
        gid, size = sizes.index[i], int(sizes.iloc[i])
        assigned[gid] = SPLITS[int(np.searchsorted(bounds, filled, side="right"))]
        filled += size
    result = groups.map(assigned).to_numpy(dtype=object)
    empty = [s for s, f in zip(SPLITS, fractions) if f > 0 and s not in set(result)]
    if empty:
        raise UserError(f"speaker-disjoint split of {len(groups)} clips from {len(sizes)} YouTube ids leaves "
                         f"{empty} empty; it needs more distinct speakers")
    return result


def apply_split(clips: pd.DataFrame, mode: str = "official", seed: int = 0,
                fractions=DEFAULT_FRACTIONS) -> pd.DataFrame:
    """Return a copy of a clip table with its ``split`` column set by ``mode``.

    ``"official"`` keeps the split from the annotation files; ``"speaker-disjoint"``
    re-splits with :func:`speaker_disjoint_assignment` (``seed``, ``fractions``).

    Raises:
        ValueError: unknown mode, or as :func:`speaker_disjoint_assignment`.
    """
    mode = normalize_split_mode(mode)
    out = clips.copy()
    if mode == "speaker-disjoint":
        out["split"] = speaker_disjoint_assignment(out["clip_id"], fractions, seed)
    return out


def shared_speaker_fraction(clips: pd.DataFrame, split: str = "test", other: str = "train") -> float:
    """Fraction of ``split``'s clips whose YouTube id also has a clip in ``other``.

    0.84 for the official test vs train split of the release; 0 for a speaker-disjoint split.
    Returns NaN when ``split`` has no clips.
    """
    ids = clips["clip_id"].map(youtube_id)
    mine = ids[clips["split"] == split]
    if mine.empty:
        return float("nan")
    return float(mine.isin(set(ids[clips["split"] == other])).mean())
