"""Official and speaker-disjoint splits."""
import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from fi_data.annotations import ANNOTATION_FILES, read_annotations, youtube_id
from fi_data.splits import (SPLIT_MODES, apply_split, normalize_split_mode, shared_speaker_fraction,
                            speaker_disjoint_assignment)
from fi_data.traits import SPLITS

REAL = SHARED_DATA / "fi_annotations"


def clip_table(n_ids=300, seed=0):
    """Clips of n_ids speakers with 1-6 clips each, official splits mixing speakers."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:010d}{'-_a'[i % 3]}" for i in range(n_ids)]
    clip_ids = [f"{y}.{k:03d}" for y in ids for k in range(rng.integers(1, 7))]
    return pd.DataFrame({"clip_id": clip_ids, "split": rng.choice(SPLITS, len(clip_ids), p=[0.6, 0.2, 0.2])})


def test_no_speaker_in_two_splits_and_sizes_near_target():
    clips = clip_table()
    split = speaker_disjoint_assignment(clips["clip_id"], seed=0)
    per_speaker = pd.Series(split).groupby(clips["clip_id"].map(youtube_id)).nunique()
    assert (per_speaker == 1).all()
    shares = pd.Series(split).value_counts(normalize=True)
    # groups have at most 6 clips, so each boundary is off by less than 6 clips
    assert abs(shares["train"] - 0.6) < 6 / len(clips) and abs(shares["validation"] - 0.2) < 12 / len(clips)


def test_deterministic_for_a_seed_and_independent_of_row_order():
    clips = clip_table()
    a = speaker_disjoint_assignment(clips["clip_id"], seed=7)
    assert (a == speaker_disjoint_assignment(clips["clip_id"], seed=7)).all()
    assert (a != speaker_disjoint_assignment(clips["clip_id"], seed=8)).any()
    order = np.random.default_rng(1).permutation(len(clips))
    shuffled = speaker_disjoint_assignment(clips["clip_id"].iloc[order], seed=7)
    assert (shuffled == a[order]).all()


def test_hand_checked_small_case():
    # 3 speakers x 2 clips, fractions 1/3 each: every speaker fills one split on its own
    ids = ["aaaaaaaaaaa.000", "aaaaaaaaaaa.001", "bbbbbbbbbbb.000", "bbbbbbbbbbb.001", "-cccccccccc.000",
           "-cccccccccc.001"]
    for seed in range(5):
        split = speaker_disjoint_assignment(ids, fractions=(1 / 3, 1 / 3, 1 / 3), seed=seed)
        assert split[0] == split[1] and split[2] == split[3] and split[4] == split[5]
        assert sorted(split[::2]) == sorted(SPLITS)


def test_errors():
    with pytest.raises(ValueError, match="leaves .* empty"):
        speaker_disjoint_assignment(["aaaaaaaaaaa.000", "aaaaaaaaaaa.001"])
    with pytest.raises(ValueError, match="summing to 1"):
        speaker_disjoint_assignment(["aaaaaaaaaaa.000"], fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown split mode"):
        normalize_split_mode("random")
    assert [normalize_split_mode(m) for m in ("official", "Speaker_Disjoint")] == list(SPLIT_MODES)


def test_apply_split_keeps_official_and_copies():
    clips = clip_table()
    official = apply_split(clips, "official")
    assert official.equals(clips) and official is not clips
    disjoint = apply_split(clips, "speaker-disjoint", seed=2)
    assert (disjoint["clip_id"] == clips["clip_id"]).all() and shared_speaker_fraction(disjoint) == 0.0


def test_shared_speaker_fraction_by_hand():
    clips = pd.DataFrame({"clip_id": ["aaaaaaaaaaa.000", "aaaaaaaaaaa.001", "bbbbbbbbbbb.000", "ccccccccccc.000"],
                          "split": ["train", "test", "test", "validation"]})
    assert shared_speaker_fraction(clips) == 0.5
    assert np.isnan(shared_speaker_fraction(clips[clips["split"] != "test"]))


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real annotation pickles not found at {REAL}")
def test_real_release_speaker_overlap():
    labels = pd.concat([read_annotations(REAL / name) for name in ANNOTATION_FILES.values()], ignore_index=True)
    assert round(shared_speaker_fraction(labels, "test"), 2) == 0.84  # DESIGN.md section 3
    disjoint = apply_split(labels, "speaker-disjoint", seed=0)
    assert shared_speaker_fraction(disjoint, "test") == 0.0
    assert disjoint["split"].value_counts().to_dict() == {"train": 6002, "validation": 1998, "test": 2000}
