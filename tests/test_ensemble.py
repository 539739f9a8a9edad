"""Retraining with several seeds and the top-k ensemble (search.train)."""

import json

import keras
import keras_tuner as kt
import numpy as np
import pytest
from keras_tuner.engine.trial import Trial

import run_search
from fi_data.cache_format import write_synthetic_cache
from fi_data.traits import TRAITS
from fi_models.fusion import build_model, compile_model
from search.config import SearchConfig
from search.runs import RunPaths, load_top_hyperparameters, save_top_hyperparameters
from search.train import averaging_model, retrain_and_evaluate
from search.tuner import top_configurations
from search.verdict import variation_lines

AUDIO, VIDEO = (24, 10, 1), (2, 32, 32, 3)


def test_the_averaging_model_round_trips_through_keras_and_averages_exactly(tmp_path):
    members = []
    for seed, units in ((0, 8), (1, 16)):
        keras.utils.set_random_seed(seed)
        members.append(compile_model(build_model(AUDIO, VIDEO, traits=TRAITS, audio_branch="conv2d", depth=1,
                                                 width=4, fusion_units=units)))
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
    assert model.get_layer("ensemble") is not None and json.loads((tmp_path / "ens" / "metrics.json").read_text())["ensemble"]
    lines = variation_lines(metrics)
    assert len(lines) == 1 and lines[0].startswith("Ensemble of 2 configurations")
    single = metrics["ensemble"]["best_single"]["test"]["one_minus_mae"]
    assert f"vs {single:.4f} for the best configuration alone" in lines[0]


def _trial(trial_id, score, status="COMPLETED", **values):
    hp = kt.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    trial = Trial(hp, trial_id=trial_id, status=status)
    trial.score, trial.best_step = score, 0
    return trial


def test_top_configurations_are_distinct_best_first_and_round_trip(tmp_path):
    trials = [_trial("0", 0.90, fusion_units=8), _trial("1", 0.95, fusion_units=16),
              _trial("2", 0.97, fusion_units=16, **{"tuner/initial_epoch": 2}),  # continuation of "1"
              _trial("3", 0.99, status="FAILED", fusion_units=32), _trial("4", 0.92, fusion_units=64)]
    top = top_configurations(trials, k=3)
    assert [t.trial_id for t in top] == ["2", "4", "0"]
    assert top[0].values == {"fusion_units": 16} and top[0].best_epoch == 3
    (tmp_path / "config.json").write_text("{}")
    save_top_hyperparameters(top, RunPaths(tmp_path).top_hyperparameters)
    assert [t.values for t in load_top_hyperparameters(tmp_path, 2)] == [{"fusion_units": 16}, {"fusion_units": 64}]
    with pytest.raises(FileNotFoundError, match="top_hyperparameters.json"):
        load_top_hyperparameters(tmp_path / "elsewhere", 2)


def test_variation_lines_give_the_seeds_mean_and_sd():
    metrics = {"scores": {"test": {"mean": {"one_minus_mae": 0.9}}},
               "seeds": {"seeds": [0, 1], "saved_seed": 1, "chosen_by": "best validation 1-MAE",
                         "summary": {"test": {"one_minus_mae": {"mean": 0.905, "sd": 0.002},
                                              "r2": {"mean": 0.4, "sd": 0.05}, "ccc": {"mean": 0.5, "sd": 0.1}}}}}
    assert variation_lines(metrics) == [
        "Seeds 0, 1 (the same configuration retrained): test 1-MAE 0.9050 ± 0.0020, R² 0.4000 ± 0.0500 "
        "(mean ± SD); saved: seed 1 (best validation 1-MAE)."]


def test_ensemble_top_needs_a_run_folder(tmp_path, capsys):
    hps = tmp_path / "hps.json"
    hps.write_text(json.dumps({"fusion_units": 8}))
    assert run_search.main(["retrain", "--from", str(hps), "--ensemble-top", "2"]) == 2
    assert "needs a run folder" in capsys.readouterr().err
