"""Tests of the report's rough edges: diverged trials, the retraining's epoch cap, TensorBoard
HParams types and scores, number formatting, epochs per trial, and the sample plot.

Everything runs on small hand-made tables, Keras Tuner ``Trial`` objects and a synthetic
cache; the only models trained are two-epoch fits of a one-layer Keras model.
"""

import json

import keras
import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest
from keras_tuner.src.engine.trial import Trial

from fi_data.cache_format import open_cache, write_synthetic_cache
from fi_data.sample_plots import sample_figure, used_clips
from search.config import SearchConfig
from search.report import epoch_cap_line, plot_curves, plot_trial_scores, _marked_trials
from search.trials import format_value
from search.tensorboard_logs import (BestObjective, configure_trial_tensorboard, read_experiment, read_scalars,
                                     read_session_hparams, write_experiment)
from search.train import RETRAIN_EPOCHS_FACTOR, retrain_epoch_cap
from search.trials import DIVERGED_MARGIN, mark_diverged, trial_info_path, trials_table, write_trials_csv


def _space() -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.Int("vgg_depth", 1, 3)
    hp.Choice("batch_size", [16, 32, 64])
    hp.Float("dropout", 0.0, 0.6, step=0.1)
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    hp.Choice("head", ["linear", "sigmoid"])
    return hp


def _trial(trial_id, values, score=None, best_step=0, status="COMPLETED"):
    hp = _space()
    hp.values.update(values)
    trial = Trial(hp, trial_id=trial_id, status=status)
    trial.score, trial.best_step = score, best_step
    return trial


# 1. Diverged trials ------------------------------------------------------------------------

def _scores_table(scores, diverged=None):
    table = pd.DataFrame({"trial_id": [f"{i:04d}" for i in range(len(scores))], "status": "COMPLETED",
                          "score": scores})
    return mark_diverged(table, diverged) if diverged is not None else table


def test_a_trial_far_below_the_mean_predictor_is_marked_diverged():
    baseline = 0.88
    table = _scores_table([0.90, 0.91, baseline - DIVERGED_MARGIN - 0.01, baseline - DIVERGED_MARGIN + 0.01, None],
                          baseline)
    assert table["diverged"].tolist()[:4] == [False, False, True, False]
    assert pd.isna(table["diverged"].iloc[4])  # no score (failed): not judged
    assert list(table.columns).index("diverged") == list(table.columns).index("score") + 1
    # without a baseline the column stays empty
    assert mark_diverged(_scores_table([0.2]), None)["diverged"].isna().all()


def test_trials_table_marks_diverged_trials_given_the_baseline(tmp_path):
    trials = [_trial("0000", {"dropout": 0.2}, score=0.91), _trial("0001", {"dropout": 0.2}, score=0.41),
              _trial("0002", {}, status="FAILED")]
    table = trials_table(trials, tmp_path, baseline_score=0.88)
    assert table["diverged"].tolist()[:2] == [False, True] and pd.isna(table["diverged"].iloc[2])
    assert trials_table(trials, tmp_path)["diverged"].isna().all()


def test_trial_plot_keeps_diverged_trials_off_the_scale_and_draws_the_baselines(tmp_path):
    table = _scores_table([0.895, 0.91, 0.12, 0.905, 0.30], 0.88)
    fig = plot_trial_scores(table, tmp_path / "t.png", {"mean predictor": 0.88, "clip-statistics ridge": 0.9})
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 0.85 < low < 0.88 and 0.91 < high < 0.95  # the scale is that of the useful trials and baselines
    lines = {round(line.get_ydata()[0], 4) for line in ax.get_lines() if len(set(line.get_ydata())) == 1
             and line.get_linestyle() == "--"}
    assert lines == {0.88, 0.9}
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("2 diverged trials below") for t in texts), texts
    # the diverged markers sit on the bottom edge
    marker = [line for line in ax.get_lines() if line.get_marker() == "v"][0]
    assert list(marker.get_xdata()) == [2, 4] and np.allclose(marker.get_ydata(), low)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_report_fills_the_diverged_column_of_trials_csv(tmp_path):
    path = tmp_path / "trials.csv"
    pd.DataFrame({"trial_id": ["0000", "0001"], "status": ["COMPLETED"] * 2, "tuner/trial_id": ["", "0000"],
                  "score": [0.9, 0.5]}).to_csv(path, index=False)
    trials = _marked_trials(path, 0.88)
    assert trials["diverged"].tolist() == [False, True]
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert raw["diverged"].tolist() == ["False", "True"] and raw["tuner/trial_id"].tolist() == ["", "0000"]


# 2. The retraining's epoch cap -------------------------------------------------------------

def test_retraining_gets_room_beyond_max_epochs_with_early_stopping():
    assert retrain_epoch_cap(SearchConfig(max_epochs=9, early_stopping_patience=5)) == RETRAIN_EPOCHS_FACTOR * 9 > 9
    assert retrain_epoch_cap(SearchConfig(max_epochs=9, early_stopping_patience=0)) == 9  # every epoch trained
    assert retrain_epoch_cap(SearchConfig(max_epochs=9, retrain_epochs=4)) == 4  # explicit wins


def test_report_advises_more_epochs_when_the_best_epoch_is_the_last():
    line = epoch_cap_line({"best_epoch": 27, "epochs_trained": 27, "epochs": 27})
    assert "best validation epoch is the last one (27 of 27)" in line and "--retrain-epochs 54" in line
    assert epoch_cap_line({"best_epoch": 12, "epochs_trained": 17, "epochs": 27}) is None  # early stopping ended it
    assert epoch_cap_line({"best_epoch": 0, "epochs_trained": 5, "epochs": 5}) is None  # untrained weights kept


# 3. TensorBoard HParams --------------------------------------------------------------------

def test_hparams_experiment_types_integers_as_integer_values_and_rounds_floats(tmp_path):
    write_experiment(tmp_path, _space())
    experiment = read_experiment(tmp_path)
    hparams = experiment["hparams"]
    assert hparams["vgg_depth"]["values"] == [1, 2, 3]  # discrete integer values, not a real interval
    assert hparams["batch_size"]["values"] == [16, 32, 64]
    assert all(float(v).is_integer() for v in hparams["vgg_depth"]["values"])
    assert hparams["dropout"]["values"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # not 0.30000000000000004
    assert hparams["learning_rate"]["interval"] == pytest.approx((1e-4, 1e-2))
    assert hparams["head"]["type"] == "DATA_TYPE_STRING"
    assert experiment["metrics"][0] == ("validation", "epoch_best_one_minus_mae")


def test_trial_sessions_log_rounded_values_and_the_best_epoch_score(tmp_path):
    keras.utils.set_random_seed(0)
    trial = _trial("0007", {"dropout": 0.1 * 3, "vgg_depth": 2, "learning_rate": 0.000555})
    assert trial.hyperparameters.values["dropout"] == 0.30000000000000004
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(tmp_path), write_graph=False)]
    configure_trial_tensorboard(callbacks, trial, lambda d: f"{d}/0007/execution0")
    assert isinstance(callbacks[0], BestObjective) and isinstance(callbacks[1], keras.callbacks.TensorBoard)

    class Scripted(keras.callbacks.Callback):  # a validation score that peaks at epoch 2 of 3
        def on_epoch_end(self, epoch, logs=None):
            logs["val_one_minus_mae"] = (0.80, 0.90, 0.85)[epoch]

    x, y = np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mae")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[Scripted(), *callbacks])
    session = read_session_hparams(tmp_path)["0007/execution0"]
    assert session["dropout"] == 0.3 and session["vgg_depth"] == 2 and session["learning_rate"] == 0.000555
    curve = [v for _, v in sorted(read_scalars(tmp_path)[("0007/execution0/validation", "epoch_best_one_minus_mae")])]
    assert curve == pytest.approx([0.80, 0.90, 0.90])  # its last value is the trial's score (best epoch)


# 4. Formatting and epochs per trial ---------------------------------------------------------

def test_values_are_shown_with_significant_digits_and_integers_as_integers():
    assert format_value(0.000555) == "0.000555"
    assert format_value(0.30000000000000004) == "0.3"
    assert format_value(32.0) == "32" and format_value(np.int64(64)) == "64"
    assert format_value(True) == "True" and format_value("mae") == "mae" and format_value(float("nan")) == "n/a"


def test_trials_csv_counts_the_epochs_each_trial_trained(tmp_path):
    parent = _trial("0000", {"tuner/initial_epoch": 0, "tuner/epochs": 3, "batch_size": 32.0, "dropout": 0.1 * 3},
                    score=0.9, best_step=2)
    child = _trial("0001", {"tuner/initial_epoch": 3, "tuner/epochs": 9, "batch_size": 32, "learning_rate": 0.000555},
                   score=0.91, best_step=4)
    for trial_id, epochs in (("0000", 3), ("0001", 9)):  # what the tuner writes: the absolute epoch reached
        path = trial_info_path(tmp_path, trial_id)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"epochs_trained": epochs, "wall_time_s": 1.0}))
    table = trials_table([parent, child], tmp_path, baseline_score=0.88).set_index("trial_id")
    assert table["epochs_trained"].tolist() == [3, 6] and table["last_epoch"].tolist() == [3, 9]
    assert table.loc["0001", "best_epoch"] == 8
    assert table.loc["0000", "dropout"] == 0.3 and table.loc["0001", "learning_rate"] == 0.000555
    write_trials_csv(table.reset_index(), tmp_path / "trials.csv")
    text = (tmp_path / "trials.csv").read_text()
    assert ",32," in text and "32.0" not in text and "0.30000000000000004" not in text


def test_retraining_loss_axis_names_the_loss(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2], "loss": [0.2, 0.1], "val_loss": [0.25, 0.2],
                            "one_minus_mae": [0.8, 0.9], "val_one_minus_mae": [0.78, 0.85]})
    fig = plot_curves(history, tmp_path / "c.png", best_epoch=2, loss="ccc_mae")
    assert fig.axes[0].get_ylabel() == "loss: MAE + (1 - CCC) (label units)"
    assert fig.axes[1].get_ylabel() == "1-MAE"


# 5. samples.png ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flagged_cache(tmp_path_factory):
    """A synthetic cache whose first training clip has silent (all-zero) audio, flagged so."""
    folder = tmp_path_factory.mktemp("cache")
    cache = write_synthetic_cache(folder, audio_shape=(24, 40, 1), frame_shape=(2, 36, 36, 3),
                                  params={"representation": "mfcc", "sample_rate": 16000, "hop_length": 256})
    audio = np.load(folder / "train" / "audio.npy")
    audio[1, 0] *= 50.0  # c0 spans far more than the others, as in sample-standardized MFCCs
    audio[0] = 0.0
    np.save(folder / "train" / "audio.npy", audio)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["clips"][cache.split("train").clip_ids[0]]["flags"] = ["silent_audio"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return open_cache(folder)


def test_sample_figure_has_a_title_units_and_labels(flagged_cache):
    fig = sample_figure(flagged_cache, n=2)
    assert fig.get_suptitle().startswith("First 2 train samples")
    audio_axes = [ax for ax in fig.axes if ax.get_title().startswith("mfcc:")]
    assert len(audio_axes) == 2
    audio = audio_axes[1]
    assert audio.get_xlabel() == "time (s)" and "standardized over time" in audio.get_title()
    assert audio.get_xlim()[1] == pytest.approx(40 * 256 / 16000, rel=0.05)  # 40 hops of 16 ms
    colour_bars = [ax for ax in fig.axes if ax.get_ylabel() == "z-score within the row"]
    assert len(colour_bars) == 2
    label_axes = [ax for ax in fig.axes if ax.get_title() == "Big Five labels"]
    assert label_axes and label_axes[0].get_xlabel() == "label (0 to 1)"
    assert [t.get_text() for t in label_axes[0].get_yticklabels()][0] == "openness"


def test_sample_figure_scales_each_coefficient_and_notes_flags(flagged_cache):
    fig = sample_figure(flagged_cache, n=2)
    silent, loud = [ax for ax in fig.axes if ax.get_title().startswith("mfcc:")]
    assert any("flags: silent_audio" in t.get_text() for t in silent.texts)
    assert not loud.texts
    data = np.asarray(loud.collections[0].get_array()).reshape(24, -1)
    # c0 no longer dominates: every row spans a comparable range
    spans = data.max(axis=1) - data.min(axis=1)
    assert spans.min() > 0.3 * spans.max()
    assert any("silent_audio" in ax.get_title(loc="left") for ax in fig.axes)  # the row's title carries the flags


def test_trait_distributions_count_only_the_clips_the_cache_uses(flagged_cache):
    used = list(flagged_cache.split("validation").clip_ids[:2])
    clips = pd.DataFrame({"clip_id": [*used, "zzzzzzzzzzz.001"], "split": "validation"})
    assert used_clips(clips, flagged_cache)["clip_id"].tolist() == used
