"""Tests of search/: a tiny Hyperband end to end, failures, the time budget, retraining, the space.

Everything trains tiny models (VGG depth 1, width 16, 32x32 crops of 6 frames, 16/8/8 clips)
on a synthetic cache in a temporary folder.
"""

import contextlib
import io
import json

import keras
import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

from fi_data.cache_format import FeatureCache, write_synthetic_cache
from fi_data.traits import SPLITS, TRAITS
from search.config import SearchConfig
from search.hypermodel import HYPERPARAMETERS, PersonalityHyperModel
from search.job import run_job, run_search
from search.runs import (BestHyperparameters, RunPaths, load_best_hyperparameters, load_run,
                         load_top_hyperparameters, prepare_run_dir)
from search.tensorboard_logs import read_scalars, read_session_hparams
from search.trials import trials_table, write_trials_csv
from search.train import retrain_and_evaluate
from search.tuner import OBJECTIVE, SearchFailedError, make_hypermodel, make_tuner, smoke_check

TINY = {"backbone": "vgg", "vgg_depth": 1, "vgg_width": 16, "temporal": "max", "fusion_units": 64}


def tiny_config(**overrides) -> SearchConfig:
    settings = dict(max_epochs=2, factor=3, crop_size=32, batch_sizes=(8,), fixed_hyperparameters=TINY,
                    early_stopping_patience=0, eval_batch_size=8, trials_per_process=None, verbose=0)
    settings.update(overrides)
    return SearchConfig(**settings)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("cache"), audio_shape=(24, 20, 1),
                                 frame_shape=(6, 36, 36, 3))


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """Mean-MFCC audio and 2 frames: the cheapest models to trace, for the failure-path tests."""
    return write_synthetic_cache(tmp_path_factory.mktemp("small_cache"), audio_shape=(24, 1),
                                 frame_shape=(2, 36, 36, 3))


@pytest.fixture(scope="module")
def job(cache, tmp_path_factory):
    """One whole job (2-trial Hyperband, retrain, score, report), recording data access."""
    run_dir = tmp_path_factory.mktemp("run")
    events = []
    split, fit = FeatureCache.split, keras.Model.fit

    def recording_split(self, name, mmap=True):
        events.append(("split", name))
        return split(self, name, mmap)

    def recording_fit(self, *args, **kwargs):
        history = fit(self, *args, **kwargs)
        events.append(("fit done", None))
        return history

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(FeatureCache, "split", recording_split)
        mp.setattr(keras.Model, "fit", recording_fit)
        metrics = run_job(cache, run_dir, tiny_config(retrain_from_checkpoint=True))
    return {"dir": run_dir, "paths": RunPaths(run_dir), "metrics": metrics, "events": events,
            "stdout": out.getvalue(),
            "trials": pd.read_csv(RunPaths(run_dir).trials_csv, dtype={"trial_id": str})}


def test_hyperband_trials_are_recorded_with_their_scores(job):
    trials = job["trials"]
    # max_epochs=2, factor=3: one bracket of ceil(1 + log3(2)) = 2 trials of 2 epochs.
    assert list(trials["trial_id"]) == ["0000", "0001"]
    assert list(trials["status"]) == ["COMPLETED", "COMPLETED"]
    assert list(trials["epochs_trained"]) == [2, 2]
    top = load_top_hyperparameters(job["dir"], 5)  # what --ensemble-top reads: distinct, best first
    assert [t.trial_id for t in top] == list(trials.sort_values("score", ascending=False)["trial_id"])
    assert top[0].values == load_best_hyperparameters(job["dir"]).values
    assert (trials["wall_time_s"] > 0).all() and (trials["peak_rss_mb"] > 50).all()
    assert trials["failure_message"].isna().all()
    for name in ("learning_rate", "dropout", "head", "standardize_targets", "loss", "batch_size"):
        assert name in trials.columns
    assert (trials["vgg_depth"] == 1).all() and (trials["batch_size"] == 8).all()
    # The score is the best epoch's validation 1-MAE, as logged to TensorBoard.
    scalars = read_scalars(job["paths"].trials_tensorboard)
    for row in trials.itertuples():
        curve = [v for _, v in sorted(scalars[(f"{row.trial_id}/execution0/validation", "epoch_one_minus_mae")])]
        assert row.score == pytest.approx(max(curve), abs=1e-6)
        assert row.best_epoch == int(np.argmax(curve)) + 1
    assert job["stdout"].count("[search] trial ") == 2
    # One bracket of one round: no later round can load a checkpoint, so only the best trial's
    # (the retraining's start) is kept.
    best = load_best_hyperparameters(job["dir"]).trial_id
    kept = sorted(p.relative_to(job["paths"].project_dir).as_posix()
                  for p in job["paths"].project_dir.glob("trial_*/checkpoint*"))
    assert kept == [f"trial_{best}/checkpoint.weights.h5"]
    assert "[search] checkpoints kept for later Hyperband rounds and the best trial: " in job["stdout"]
    assert "[search] trial 0001 COMPLETED: val_one_minus_mae" in job["stdout"]


def test_the_first_trial_is_the_space_defaults_and_the_next_a_draw(job):
    trials = job["trials"].set_index("trial_id")
    first, second = trials.loc["0000"], trials.loc["0001"]
    defaults = {"audio_branch": "stats", "dropout": 0.5, "head": "linear", "standardize_targets": True,
                "ridge_path": True, "loss": "mae", "learning_rate": 1e-3, "batch_size": 8}
    assert {k: first[k] for k in defaults} == pytest.approx(defaults)
    assert {k: second[k] for k in defaults} != defaults


def test_a_spent_budget_still_runs_one_trial_in_a_child_process(cache, tmp_path):
    """Chunked search (fresh processes) with the budget gone before the first child starts:
    the first child still runs a first trial, so there is a model to retrain."""
    result = run_search(cache, tmp_path / "run", tiny_config(time_budget_s=0.001, trials_per_process=1))
    assert result.stopped_by == "time_budget"
    assert list(result.trials["status"]) == ["COMPLETED"] and result.trials["epochs_trained"].iloc[0] == 1


def test_best_hyperparameters_are_those_of_the_best_trial(job):
    best = load_best_hyperparameters(job["dir"])
    trials = job["trials"].set_index("trial_id")
    assert best.trial_id == trials["score"].idxmax()
    assert best.score == pytest.approx(trials["score"].max())
    assert best.objective == OBJECTIVE.name == "val_one_minus_mae"
    assert not any(k.startswith("tuner/") for k in best.values)
    row = trials.loc[best.trial_id]
    for name, value in best.values.items():
        assert row[name] == pytest.approx(value) if isinstance(value, float) else str(row[name]) == str(value)
    assert job["metrics"]["hyperparameters"] == best.values


def test_the_retraining_continues_from_the_best_trials_checkpoint(job, cache, tmp_path):
    best = load_best_hyperparameters(job["dir"])
    started = job["metrics"]["started_from"]
    assert started["trial_id"] == best.trial_id and started["trial_best_epoch"] == best.best_epoch
    assert started["weights"].endswith(f"trial_{best.trial_id}/checkpoint.weights.h5")
    # Before its first epoch the model scores what the trial scored at its best epoch.
    assert job["metrics"]["initial_validation_score"] == pytest.approx(best.score, abs=1e-5)
    assert f"Started from trial {best.trial_id}'s best checkpoint" in (job["dir"] / "report.md").read_text()
    # A file that does not load is said and the model trains from scratch.
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not weights")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = retrain_and_evaluate(cache, tmp_path / "again", best, tiny_config(), initial_weights=broken)
    assert metrics["started_from"] is None and f"cannot start from {broken}" in out.getvalue()
    assert metrics["initial_validation_score"] != pytest.approx(best.score, abs=1e-5)


def test_test_split_is_read_only_after_retraining(job):
    events = job["events"]
    first_test = events.index(("split", "test"))
    last_fit = max(i for i, e in enumerate(events) if e[0] == "fit done")
    assert first_test > last_fit
    assert ("split", "train") in events[:first_test] and ("split", "validation") in events[:first_test]


def test_metrics_match_the_saved_model_and_the_baseline(job, cache):
    paths, metrics = job["paths"], job["metrics"]
    assert json.loads(paths.metrics.read_text()) == metrics
    predictions = pd.read_csv(paths.predictions)
    train_mean = np.asarray(cache.split("train").targets, dtype=np.float64).mean(axis=0)
    assert [metrics["baseline_mean"][t] for t in TRAITS] == pytest.approx(train_mean.tolist())
    for split in SPLITS:
        rows = predictions[predictions["split"] == split]
        assert list(rows["clip_id"]) == list(cache.split(split).clip_ids)
        y = np.asarray(cache.split(split).targets, dtype=np.float64)
        pred = rows[[f"pred_{t}" for t in TRAITS]].to_numpy()
        assert rows[[f"true_{t}" for t in TRAITS]].to_numpy() == pytest.approx(y, abs=1e-6)
        scores = metrics["scores"][split]
        assert scores["n"] == len(y)
        for i, trait in enumerate(TRAITS):
            assert scores[trait]["one_minus_mae"] == pytest.approx(1 - np.abs(y[:, i] - pred[:, i]).mean(), abs=1e-6)
            assert scores[trait]["baseline_one_minus_mae"] == pytest.approx(
                1 - np.abs(y[:, i] - train_mean[i]).mean(), abs=1e-6)
            assert scores[trait]["spread"] == pytest.approx(pred[:, i].std() / y[:, i].std(), rel=1e-4)
        assert scores["mean"]["one_minus_mae"] == pytest.approx(1 - np.abs(y - pred).mean(), abs=1e-6)
    # The saved model reloads and reproduces the test predictions from the cached arrays as they
    # are (uint8 frames): its first layer is the center crop and scaling, which the crop of the
    # inner model's input gives by hand.
    model = keras.models.load_model(paths.best_model)
    test = cache.split("test")
    preprocessing = json.loads(paths.preprocessing.read_text())
    crop = preprocessing["crop_size"]
    assert crop == 32 and preprocessing["mfcc_frames_mean"] == 20
    assert preprocessing["audio_shape"] == [24, 20, 1] and preprocessing["frame_shape"] == [6, 36, 36, 3]
    assert preprocessing["inputs"]["frames"]["dtype"] == "uint8"
    reloaded = model.predict((np.asarray(test.audio), np.asarray(test.frames)), verbose=0)
    test_rows = predictions[predictions["split"] == "test"][[f"pred_{t}" for t in TRAITS]].to_numpy()
    assert reloaded == pytest.approx(test_rows, abs=1e-5)
    top = (36 - crop) // 2
    video = np.asarray(test.frames)[:, :, top:top + crop, top:top + crop, :].astype(np.float32) / 255.0
    inner = model.get_layer(next(layer.name for layer in model.layers if isinstance(layer, keras.Model)))
    assert inner.predict((np.asarray(test.audio), video), verbose=0) == pytest.approx(test_rows, abs=1e-5)
    assert metrics["trained_on"] == ["train"] and metrics["epochs"] == 2
    history = pd.read_csv(paths.history)
    assert len(history) == metrics["epochs_trained"] == 2
    curve = history["val_one_minus_mae"]
    if metrics["best_epoch"] == 0:  # no epoch beat the untrained model (e.g. the ridge start), which is kept
        assert curve.max() <= metrics["initial_validation_score"]
    else:
        assert metrics["best_epoch"] == int(curve.idxmax()) + 1


def test_tensorboard_holds_hparams_per_trial_and_retraining_scalars(job):
    paths, trials = job["paths"], job["trials"]
    sessions = read_session_hparams(paths.tensorboard)
    for row in trials.itertuples():
        logged = sessions[f"trials/{row.trial_id}/execution0"]
        assert logged["learning_rate"] == pytest.approx(row.learning_rate)
        assert logged["head"] == row.head and logged["dropout"] == pytest.approx(row.dropout)
    assert sessions["retrain"]["learning_rate"] == pytest.approx(job["metrics"]["hyperparameters"]["learning_rate"])
    scalars = read_scalars(paths.tensorboard)
    history = pd.read_csv(paths.history)
    for run, tag, column in (("retrain/train", "epoch_loss", "loss"),
                             ("retrain/validation", "epoch_one_minus_mae", "val_one_minus_mae"),
                             ("retrain/validation", "epoch_ccc", "val_ccc"), ("retrain/validation", "epoch_pcc", "val_pcc")):
        assert [v for _, v in sorted(scalars[(run, tag)])] == pytest.approx(history[column].tolist(), abs=1e-6)
    best = job["metrics"]["best_epoch"]
    if best:  # the restored epoch's logged CCC is the saved model's validation CCC (whole split, Lin 1989)
        assert history["val_ccc"][best - 1] == pytest.approx(job["metrics"]["scores"]["validation"]["mean"]["ccc"],
                                                             abs=1e-4)
    assert ("retrain/train", "epoch_learning_rate") in scalars
    assert ("trials/0000/execution0/train", "epoch_learning_rate") in scalars


def test_report_and_plots(job):
    paths, metrics = job["paths"], job["metrics"]
    report = paths.report.read_text()
    assert f"Test 1-MAE **{metrics['scores']['test']['mean']['one_minus_mae']:.4f}**" in report
    assert f"tensorboard --logdir {paths.tensorboard}" in report
    for name in ("retrain_curves.png", "test_vs_baseline.png", "test_predicted_vs_true.png", "trial_scores.png"):
        data = (paths.plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"plots/{name}" in report
    saved = load_run(job["dir"])
    assert saved.config == tiny_config(retrain_from_checkpoint=True) and saved.metrics == metrics and saved.best.trial_id in set(job["trials"]["trial_id"])


def test_retrain_from_a_json_file_on_train_plus_validation(job, small_cache, tmp_path):
    source = json.loads(RunPaths(job["dir"]).best_hyperparameters.read_text())
    hand_written = tmp_path / "hp.json"
    hand_written.write_text(json.dumps({"learning_rate": 0.003, "head": "linear", "standardize_targets": False}))
    config = tiny_config(train_on_train_plus_val=True, retrain_epochs=3)
    metrics = retrain_and_evaluate(small_cache, tmp_path / "again", hand_written, config)
    assert metrics["trained_on"] == ["train", "validation"]
    assert metrics["epochs"] == metrics["epochs_trained"] == 3 and metrics["best_epoch"] is None
    assert metrics["hyperparameters"]["learning_rate"] == 0.003
    assert metrics["hyperparameters"]["vgg_depth"] == 1  # the config's fixed value
    assert metrics["hyperparameters"]["dropout"] == 0.5  # the default
    # A search's file brings the best trial's epoch count.
    best = load_best_hyperparameters(job["dir"])
    assert source["best_epoch"] == best.best_epoch
    hypermodel = make_hypermodel(small_cache, config)
    train, val = hypermodel.datasets(8, train_splits=("train", "validation"), validation=False)
    seen = np.concatenate([y.numpy() for _, y in train])
    expected = np.concatenate([small_cache.split("train").targets, small_cache.split("validation").targets])
    assert val is None and seen.shape == (24, 5)
    assert np.sort(seen, axis=0) == pytest.approx(np.sort(expected, axis=0))


class FaultyHyperModel(PersonalityHyperModel):
    """Injects a fault into chosen ``fit`` calls: ``"nan"`` labels or a raised error."""

    def __init__(self, cache, faults, **kwargs):
        super().__init__(cache, **kwargs)
        self.faults = list(faults)

    def fit(self, hp, model, *args, **kwargs):
        fault = self.faults.pop(0) if self.faults else None
        if fault == "raise":
            raise ValueError("injected failure")
        if fault == "nan":
            train, val = self.datasets(hp.get("batch_size"))
            return model.fit(train.map(lambda x, y: (x, y * np.nan)), validation_data=val, shuffle=False, **kwargs)
        return super().fit(hp, model, *args, **kwargs)


def faulty(cache, config, faults):
    return FaultyHyperModel(cache, [None, *faults], batch_sizes=config.batch_sizes, crop_size=config.crop_size,
                            fixed=config.fixed_hyperparameters)  # None: the smoke check's fit


def test_failed_trials_are_recorded_and_the_search_goes_on(small_cache, tmp_path, capsys):
    config = tiny_config(tuner="random", max_trials=3, max_epochs=1)
    result = run_search(small_cache, tmp_path, config, hypermodel=faulty(small_cache, config, ["nan", "raise"]))
    trials = result.trials
    assert list(trials["status"]) == ["FAILED", "FAILED", "COMPLETED"]
    assert trials["failure_message"][0].startswith("RuntimeError: NaN or Inf loss encountered")
    assert trials["failure_message"][1] == "ValueError: injected failure"
    assert trials["score"].isna().tolist() == [True, True, False]
    assert result.best.trial_id == "2"
    on_disk = pd.read_csv(tmp_path / "trials.csv")
    assert list(on_disk["status"]) == list(trials["status"])
    assert "[search] trial 0 FAILED: RuntimeError: NaN or Inf loss" in capsys.readouterr().out


def test_too_many_consecutive_failures_stop_with_a_clear_error(small_cache, tmp_path):
    config = tiny_config(tuner="random", max_trials=5, max_consecutive_failures=2)
    with pytest.raises(SearchFailedError, match=r"2 trials failed in a row \(limit 2\).*ValueError: injected failure"):
        run_search(small_cache, tmp_path, config, hypermodel=faulty(small_cache, config, ["raise"] * 5))
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert list(trials["status"]) == ["FAILED", "FAILED"]  # both saved, none lost


def test_missing_objective_gives_a_clear_error(small_cache):
    hypermodel = make_hypermodel(small_cache, tiny_config())
    with pytest.raises(ValueError, match=r"'val_r2' is not in the training logs; the logs hold "
                                         r"\['loss', 'one_minus_mae', 'val_loss', 'val_one_minus_mae'\]"):
        smoke_check(hypermodel, "val_r2")


def test_time_budget_stops_new_trials_and_the_seed_repeats_the_run(small_cache, tmp_path, capsys):
    config = tiny_config(tuner="random", max_trials=4, max_epochs=1, time_budget_s=1.0)
    result = run_search(small_cache, tmp_path / "a", config)
    assert result.stopped_by == "time_budget"
    assert list(result.trials["status"]) == ["COMPLETED"]
    assert result.best.trial_id == "0" and (tmp_path / "a" / "best_hyperparameters.json").is_file()
    out = capsys.readouterr().out
    assert "budget: 0.0 min left" in out and "time budget spent" in out
    # Same seed, same trial: same hyperparameters and the same trained score (to float
    # rounding: GPU kernels may sum in another order).
    again = run_search(small_cache, tmp_path / "b", config).trials
    columns = ["learning_rate", "dropout", "head", "standardize_targets", "loss"]
    assert again[columns].to_dict("records") == result.trials[columns].to_dict("records")
    assert again["score"][0] == pytest.approx(result.trials["score"][0], abs=1e-5)


def test_a_trial_saved_but_never_recorded_by_the_oracle_is_marked_failed(small_cache, tmp_path):
    config = tiny_config()
    paths = prepare_run_dir(tmp_path, config, small_cache)
    hypermodel = make_hypermodel(small_cache, config)
    tuner = make_tuner(hypermodel, paths, config)
    tuner.save()
    # What a kill between writing trial.json and oracle.json leaves behind.
    tuner.oracle._save_trial(kt.engine.trial.Trial(tuner.oracle.get_space(), trial_id="0007"))
    reloaded = make_tuner(hypermodel, paths, config)
    orphan = reloaded.oracle.get_trial("0007")
    assert orphan.status == "FAILED" and "never trained" in orphan.message
    on_disk = json.loads((paths.project_dir / "trial_0007" / "trial.json").read_text())
    assert on_disk["status"] == "FAILED"


def test_a_trial_killed_after_some_epochs_is_recorded_with_them(small_cache, tmp_path):
    config = tiny_config()
    paths = prepare_run_dir(tmp_path, config, small_cache)
    hypermodel = make_hypermodel(small_cache, config)
    tuner = make_tuner(hypermodel, paths, config)
    trial = kt.engine.trial.Trial(tuner.oracle.get_space(), trial_id="0008", status="RUNNING")
    trial.metrics.register("val_one_minus_mae", direction="max")
    for epoch, score in enumerate((0.81, 0.86, 0.84)):  # what the oracle saved after each epoch
        trial.metrics.update("val_one_minus_mae", score, step=epoch)
    tuner.oracle._save_trial(trial)
    tuner.save()
    reloaded = make_tuner(hypermodel, paths, config)
    orphan = reloaded.oracle.get_trial("0008")
    assert orphan.status == "FAILED"
    assert "stopped after 3 finished epoch(s) of this trial (best val_one_minus_mae 0.8600)" in orphan.message
    table = trials_table(reloaded.oracle.trials.values(), paths.project_dir)
    row = table.set_index("trial_id").loc["0008"]
    assert row["epochs_trained"] == 3 and str(table["epochs_trained"].dtype) == "Int64"
    write_trials_csv(table, paths.trials_csv)
    assert ",3," in paths.trials_csv.read_text() and ",3.0," not in paths.trials_csv.read_text()


def test_unknown_hyperparameters_are_refused_before_training(small_cache, tmp_path):
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['learnin_rate'\]"):
        retrain_and_evaluate(small_cache, tmp_path, {"learnin_rate": 0.1}, tiny_config())
    assert not (tmp_path / "best_model.keras").exists()


def test_resuming_with_other_settings_is_refused_and_overwrite_starts_over(cache, tmp_path):
    paths = prepare_run_dir(tmp_path, tiny_config(), cache)
    (paths.project_dir / "oracle.json").parent.mkdir(parents=True, exist_ok=True)
    (paths.project_dir / "oracle.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    prepare_run_dir(tmp_path, tiny_config(time_budget_s=60, verbose=1), cache)  # not search-defining
    with pytest.raises(ValueError, match=r"max_epochs: was 2, now 3.*overwrite"):
        prepare_run_dir(tmp_path, tiny_config(max_epochs=3), cache)
    prepare_run_dir(tmp_path, tiny_config(max_epochs=3, overwrite=True), cache)
    assert not paths.project_dir.exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert SearchConfig.load(paths.config).max_epochs == 3


def test_config_round_trip_and_validation(tmp_path):
    config = tiny_config(tuner="bayesian", time_budget_s=12.5)
    config.save(tmp_path / "c.json")
    assert SearchConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="tuner must be one of .*got 'grid'"):
        SearchConfig(tuner="grid")
    with pytest.raises(ValueError, match=r"factor must be >= 2, got 1.*time_budget_s must be > 0"):
        SearchConfig(factor=1, time_budget_s=0)
    with pytest.raises(ValueError, match=r"unknown search settings \['epochs'\]"):
        SearchConfig.from_dict({"epochs": 3})


def test_load_best_hyperparameters_forms(tmp_path):
    BestHyperparameters({"head": "sigmoid", "tuner/epochs": 4}, 0.9, "0003", 4, "val_one_minus_mae").save(
        tmp_path / "a.json")
    saved = load_best_hyperparameters(tmp_path / "a.json")
    assert saved == BestHyperparameters({"head": "sigmoid"}, 0.9, "0003", 4, "val_one_minus_mae")
    (tmp_path / "b.json").write_text('{"dropout": 0.2}')
    assert load_best_hyperparameters(tmp_path / "b.json") == BestHyperparameters({"dropout": 0.2})
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="c.json: expected a JSON object"):
        load_best_hyperparameters(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError, match="no best-hyperparameters file"):
        load_best_hyperparameters(tmp_path / "missing")


def test_search_space_defaults_and_conditions(cache):
    hypermodel = PersonalityHyperModel(cache, crop_size=32, allow_resnet=True)
    hp = kt.HyperParameters()
    values = hypermodel.declare(hp)
    assert values == {"audio_branch": "stats", "backbone": "stats", "fusion_units": 256, "dropout": 0.5,
                      "head": "linear", "standardize_targets": True, "ridge_path": True, "loss": "mae",
                      "learning_rate": 1e-3, "batch_size": 32}
    assert set(p.name for p in hp.space) == set(HYPERPARAMETERS)
    space = {p.name: p for p in hp.space}
    assert space["audio_branch"].values == ["stats", "blstm", "conv1d", "conv2d"]
    assert space["backbone"].values == ["stats", "vgg", "resnet50"]
    assert [(c.name, c.values) for c in space["ridge_path"].conditions] == [("standardize_targets", [True])]
    assert space["vgg_depth"].max_value == 5  # log2(32)
    assert [(c.name, c.values) for c in space["vgg_depth"].conditions] == [("backbone", ["vgg"])]
    assert [(c.name, c.values) for c in space["temporal_units"].conditions] == [
        ("backbone", ["vgg", "resnet50"]), ("temporal", ["lstm", "gru"])]
    assert space["learning_rate"].sampling == "log"
    other = kt.HyperParameters()
    other.values = {"backbone": "resnet50", "temporal": "gru"}  # the statistics backbone has no temporal
    values = hypermodel.declare(other)
    assert "vgg_depth" not in values and "vgg_width" not in values and values["temporal_units"] == 64
    assert "resnet50" not in str(PersonalityHyperModel(cache, crop_size=32).declare(kt.HyperParameters()))
    with pytest.raises(ValueError, match="--fix depth: unknown hyperparameter"):
        PersonalityHyperModel(cache, fixed={"depth": 2})


def test_mean_mfcc_cache_offers_only_the_mean_branch_and_remedy_uses_training_stats(small_cache):
    cache = small_cache
    hypermodel = PersonalityHyperModel(cache, crop_size=32, fixed={"vgg_depth": 1, "vgg_width": 4,
                                                                     "fusion_units": 8, "backbone": "vgg"})
    hp = kt.HyperParameters()
    hp.Fixed("audio_branch", "mean_dense")
    model = hypermodel.build(hp)
    space = kt.HyperParameters()
    PersonalityHyperModel(cache, crop_size=32).declare(space)
    assert {p.name: p for p in space.space}["audio_branch"].values == ["stats", "mean_dense"]
    assert hp.values["audio_branch"] == "mean_dense"
    scale = model.get_layer("traits")
    expected = np.asarray(cache.split("train").targets, dtype=np.float64)
    assert scale.mean == pytest.approx(expected.mean(axis=0).tolist())
    assert scale.std == pytest.approx(expected.std(axis=0).tolist())
    out = model.predict((np.zeros((2, 24, 1), np.float32), np.zeros((2, 2, 32, 32, 3), np.float32)), verbose=0)
    assert out.shape == (2, 5) and np.isfinite(out).all()
