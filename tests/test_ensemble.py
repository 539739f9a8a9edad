"""Retraining with several seeds and the top-k ensemble (search.train)."""

import json

import keras
import numpy as np
import pytest

from fi_data.cache_format import write_synthetic_cache
from fi_models.fusion import build_model, compile_model
from search.config import SearchConfig
from search.train import averaging_model, retrain_and_evaluate

AUDIO, VIDEO = (24, 10, 1), (2, 32, 32, 3)


def test_the_averaging_model_round_trips_through_keras_and_averages_exactly(tmp_path):
    members = []
    for seed, units in ((0, 8), (1, 16)):
        keras.utils.set_random_seed(seed)
        members.append(compile_model(build_model(AUDIO, VIDEO, audio_branch="conv2d", depth=1, width=4,
                                                 fusion_units=units)))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, *AUDIO)).astype(np.float32), rng.uniform(size=(3, *VIDEO)).astype(np.float32))
    expected = (members[0].predict(x, verbose=0) + members[1].predict(x, verbose=0)) / 2
    ensemble = averaging_model(members)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    ensemble.save(tmp_path / "e.keras")
    loaded = keras.models.load_model(tmp_path / "e.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert [t.name for t in loaded.inputs] == ["audio", "video"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("cache"), {"train": 12, "validation": 6, "test": 6},
                                 audio_shape=AUDIO, frame_shape=(2, 36, 36, 3))


def test_retrain_seeds_and_ensemble_are_reported(cache, tmp_path):
    config = SearchConfig(max_epochs=2, batch_sizes=(4,), crop_size=32, early_stopping_patience=0)
    hps = {"fusion_units": 8, "batch_size": 4}
    metrics = retrain_and_evaluate(cache, tmp_path / "seeds", hps, config, retrain_seeds=2)
    seeds = metrics["seeds"]
    assert seeds["seeds"] == [0, 1] and seeds["saved_seed"] in (0, 1)
    assert len(seeds["per_seed"]["test"]) == 2
    values = [r["one_minus_mae"] for r in seeds["per_seed"]["test"]]
    assert seeds["summary"]["test"]["one_minus_mae"]["mean"] == pytest.approx(np.mean(values))
    saved = seeds["per_seed"]["validation"][seeds["seeds"].index(seeds["saved_seed"])]["one_minus_mae"]
    assert saved == max(r["one_minus_mae"] for r in seeds["per_seed"]["validation"])
    assert metrics["scores"]["validation"]["mean"]["one_minus_mae"] == pytest.approx(saved, abs=1e-6)

    other = {"fusion_units": 16, "batch_size": 4, "dropout": 0.2}
    metrics = retrain_and_evaluate(cache, tmp_path / "ens", hps, config, ensemble=[other])
    assert metrics["ensemble"]["members"][1]["fusion_units"] == 16
    assert set(metrics["ensemble"]["best_single"]) == {"train", "validation", "test"}
    model = keras.models.load_model(tmp_path / "ens" / "best_model.keras")
    assert model.name == "ensemble" and json.loads((tmp_path / "ens" / "metrics.json").read_text())["ensemble"]
