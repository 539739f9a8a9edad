"""The identity-lookup baseline and the cluster bootstrap (search.evaluation)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fi_data.traits import TRAITS
from search.evaluation import annotation_baselines, cluster_bootstrap, format_interval, identity_lookup_predictions

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fi_annotations"


def test_identity_lookup_on_a_hand_made_table():
    train_ids = ["aaaaaaaaaaa.000", "aaaaaaaaaaa.001", "bbbbbbbbbbb.000"]
    train_y = np.array([[0.2] * 5, [0.4] * 5, [0.9] * 5])
    pred, shared = identity_lookup_predictions(train_ids, train_y, ["aaaaaaaaaaa.004", "ccccccccccc.000",
                                                                    "bbbbbbbbbbb.003"])
    np.testing.assert_allclose(pred[0], 0.3)  # the mean of its video's training clips
    np.testing.assert_allclose(pred[1], 0.5)  # unknown video: the training mean
    np.testing.assert_allclose(pred[2], 0.9)
    assert shared == pytest.approx(2 / 3)


def _sample(n_ids, per_id, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"{i:011d}.{k:03d}" for i in range(n_ids) for k in range(per_id)]
    person = np.repeat(rng.normal(0.5, 0.1, size=(n_ids, 5)), per_id, axis=0)
    y = person + rng.normal(0, 0.02, size=person.shape)
    model = person + rng.normal(0, 0.05, size=person.shape)
    return ids, y, model


def test_the_bootstrap_interval_contains_the_estimate_is_seeded_and_narrows_with_more_clips():
    ids, y, model = _sample(40, 3)
    preds = {"model": model, "mean": np.broadcast_to(y.mean(0), y.shape)}
    small = cluster_bootstrap(y, preds, ids, n_resamples=500, seed=1)
    assert small.equals(cluster_bootstrap(y, preds, ids, n_resamples=500, seed=1))
    assert not small.equals(cluster_bootstrap(y, preds, ids, n_resamples=500, seed=2))
    row = small.set_index(["quantity", "metric"]).loc[("model", "one_minus_mae")]
    assert row["low"] <= row["estimate"] <= row["high"]
    diff = small.set_index(["quantity", "metric"]).loc[("model - mean", "one_minus_mae")]
    assert diff["low"] > 0  # the model is clearly better than the mean here
    ids2, y2, model2 = _sample(400, 3)
    big = cluster_bootstrap(y2, {"model": model2}, ids2, n_resamples=500, seed=1).set_index(["quantity", "metric"])
    assert (big.loc[("model", "one_minus_mae"), "high"] - big.loc[("model", "one_minus_mae"), "low"]
            < 0.6 * (row["high"] - row["low"]))


def test_the_bootstrap_resamples_ids_not_clips():
    # Clips of one id are near copies: resampling ids must give a wider interval than
    # treating each clip as independent (every clip its own id).
    ids, y, model = _sample(30, 6)
    by_id = cluster_bootstrap(y, {"model": model}, ids, n_resamples=800).set_index(["quantity", "metric"])
    by_clip = cluster_bootstrap(y, {"model": model}, [f"{i:011d}.000" for i in range(len(ids))],
                                n_resamples=800).set_index(["quantity", "metric"])
    width = lambda t: t.loc[("model", "r2"), "high"] - t.loc[("model", "r2"), "low"]  # noqa: E731
    assert width(by_id) > 1.5 * width(by_clip)


def test_format_interval():
    assert format_interval(0.021, 0.015, 0.027) == "0.0210 [0.0150, 0.0270]"
    assert format_interval(0.002, -0.001, 0.005) == "+0.0020 [-0.0010, +0.0050]"


@pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason=f"{ANNOTATIONS} is absent (the real annotation pickles)")
def test_annotation_baselines_on_the_real_annotations():
    from fi_data.annotations import read_annotations

    labels = pd.concat([read_annotations(ANNOTATIONS / f"annotation_{name}.pkl", split)
                        for name, split in (("training", "train"), ("validation", "validation"), ("test", "test"))])
    table = annotation_baselines(labels).round(4)
    assert table.loc["test", "mean_one_minus_mae"] == 0.8814
    assert table.loc["test", "identity_one_minus_mae"] == 0.9049
    assert table.loc["validation", "identity_one_minus_mae"] == 0.9050
    assert table.loc["test", "clips"] == 2000 and 0.83 < table.loc["test", "shared_id_share"] < 0.85
    assert list(table.columns) == ["clips", "mean_one_minus_mae", "identity_one_minus_mae", "shared_id_share"]
    assert set(TRAITS) <= set(labels.columns)
