"""Retrain the best configuration, then score train / validation / test beside the mean baseline.

:func:`retrain_and_evaluate` rebuilds the model from hyperparameter values (a search's best,
a saved run, or a hand-written JSON file), trains it on the training split with
validation-based early stopping (best weights restored) or on train + validation for a
fixed number of epochs, saves it, and only then opens the test split to score it once.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pandas as pd

from fi_data.cache_format import FeatureCache, write_json_atomic
from fi_data.pipeline import make_dataset
from fi_data.traits import SPLITS, TRAITS
from fi_models.metrics import score_predictions
from search.config import SearchConfig
from search.hypermodel import HYPERPARAMETERS, PersonalityHyperModel
from search.baselines import ridge_baseline
from search.evaluation import cluster_bootstrap, identity_lookup_predictions
from search.runs import BestHyperparameters, RunPaths, cache_identity, load_best_hyperparameters
from search.tensorboard_logs import hparams_callback
from search.tuner import OBJECTIVE, make_hypermodel

BASELINE = "the TRAINING split's mean label per trait, predicted for every clip"

BASELINE_NAMES = {"baseline": "mean predictor", "ridge": "clip-statistics ridge", "identity": "identity lookup"}
"""Column prefix of each baseline in ``metrics.json`` scores -> its name in words."""


BOOTSTRAP_RESAMPLES = 1000
"""Resamples of the cluster bootstrap behind every interval in ``metrics.json``."""


class EarlyStoppingFromStart(keras.callbacks.EarlyStopping):
    """``EarlyStopping(restore_best_weights=True)`` that counts the untrained weights as epoch 0.

    Before the first epoch it scores the model on ``validation_data``; when no epoch beats
    that score the initial weights are restored (``best_epoch`` -1). A model with the ridge
    path starts as the clip-statistics ridge, so its retraining can then never end below it
    on validation.
    """

    def __init__(self, validation_data, **kwargs):
        super().__init__(restore_best_weights=True, **kwargs)
        self.validation_data = validation_data
        self.initial_score = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        logs = self.model.evaluate(self.validation_data, verbose=0, return_dict=True)
        self.initial_score = float(logs[self.monitor.removeprefix("val_")])
        self.best, self.best_epoch = self.initial_score, -1
        self.best_weights = self.model.get_weights()


def _as_best(hyperparameters) -> BestHyperparameters:
    if isinstance(hyperparameters, BestHyperparameters):
        return hyperparameters
    if isinstance(hyperparameters, kt.HyperParameters):
        return BestHyperparameters(values=dict(hyperparameters.values))
    if isinstance(hyperparameters, dict):
        return BestHyperparameters(values=dict(hyperparameters))
    return load_best_hyperparameters(hyperparameters)


def _json_ready(obj):
    """NaN / Inf -> None and NumPy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def predict_split(model: keras.Model, cache: FeatureCache, split: str, *, crop_size: int,
                  batch_size: int) -> tuple:
    """Labels and predictions of one split (center crops, row order).

    Returns:
        ``(clip_ids, y_true, y_pred)``: a tuple of n ids and two float32 arrays ``(n, 5)``
        in ``TRAITS`` order.
    """
    arrays = cache.split(split)
    dataset = make_dataset(arrays, training=False, batch_size=batch_size, crop_size=crop_size)
    y_pred = np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)
    return arrays.clip_ids, np.asarray(arrays.targets, dtype=np.float32), y_pred


def _save_model(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)


def preprocessing_record(cache: FeatureCache, hypermodel: PersonalityHyperModel) -> dict:
    """What an input to ``best_model.keras`` must look like (written to ``preprocessing.json``)."""
    mean, std = hypermodel.target_stats
    return {
        "model": "best_model.keras",
        "inputs": {
            "audio": {"name": "audio", "shape": list(hypermodel.audio_shape), "dtype": "float32",
                      "note": "the cache's audio representation (see cache_params)"},
            "video": {"name": "video", "shape": list(hypermodel.video_shape), "dtype": "float32",
                      "range": [0.0, 1.0],
                      "note": "center crop of the cached frames, scaled to [0, 1]: "
                              "fi_data.pipeline.prepare_clip(audio, frames, crop_size)"},
        },
        "output": {"shape": [len(TRAITS)], "traits": list(TRAITS), "units": "label units, [0, 1]"},
        "crop_size": hypermodel.crop_size,
        "audio_shape": list(cache.audio_shape),
        "frame_shape": list(cache.frame_shape),
        "mfcc_frames_mean": cache.manifest.get("mfcc_frames_mean"),
        "cache": cache_identity(cache),
        "cache_params": cache.params,
        "training_target_mean": dict(zip(TRAITS, mean.tolist())),
        "training_target_std": dict(zip(TRAITS, std.tolist())),
        "versions": cache.manifest.get("versions", {}),
    }


def retrain_and_evaluate(cache: FeatureCache, run_dir, hyperparameters, config: SearchConfig, *,
                         hypermodel: PersonalityHyperModel | None = None) -> dict:
    """Retrain a configuration from scratch, save it, and score it on every split.

    Args:
        cache: the opened feature cache.
        run_dir: run folder for the outputs (``best_model.keras``, ``preprocessing.json``,
            ``retrain_history.csv``, ``predictions.csv``, ``metrics.json``,
            ``tensorboard/retrain``); created if missing.
        hyperparameters: a :class:`BestHyperparameters`, a dict of values, a
            ``keras_tuner.HyperParameters``, or the path of a run folder or JSON file
            (:func:`search.runs.load_best_hyperparameters`). Missing values take defaults.
        config: the settings (seed, epochs, patience, ``train_on_train_plus_val``, batch
            size for scoring, crop size, ...).
        hypermodel: overrides ``search.tuner.make_hypermodel(cache, config)``.

    Training: on ``train`` for ``config.retrain_epochs`` (default ``max_epochs``) epochs with
    ``EarlyStopping`` on validation 1-MAE (patience ``early_stopping_patience``; the best
    epoch's weights are restored, the untrained weights counting as epoch 0:
    :class:`EarlyStoppingFromStart`); or, with ``train_on_train_plus_val``, on train +
    validation for the best trial's best epoch count when known (else ``retrain_epochs``),
    without early stopping. The test split is opened only after training and saving.

    Returns:
        The ``metrics.json`` content: ``scores[split][trait or "mean"]`` holds
        ``one_minus_mae, r2, ccc, pcc, spread`` (the model), ``baseline_*`` (the mean
        predictor), ``ridge_*`` (the clip-statistics ridge, ``search.baselines.ridge_baseline``)
        and ``identity_*`` (the identity lookup, ``search.evaluation``) with
        ``one_minus_mae, r2, ccc`` each (NaN written as null); ``intervals[split]`` (validation,
        test) the cluster-bootstrap table of ``search.evaluation.cluster_bootstrap`` as
        records (quantities ``model``, ``baseline``, ``ridge``, ``identity`` and the paired
        ``model - <baseline>``), plus ``hyperparameters``,
        ``trained_on``, ``epochs_trained``, ``best_epoch`` (0: no epoch beat the untrained
        weights), ``retrain_wall_s``, ``baseline_mean``, ``ridge`` (variant, alphas,
        validation score of each variant) and the file names of the model and its
        preprocessing record. ``predictions.csv`` holds the ridge's predictions too.

    Raises:
        FileNotFoundError / ValueError: unreadable hyperparameters (see
            ``load_best_hyperparameters``).
        RuntimeError: the retraining's loss became NaN / Inf.
    """
    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    best = _as_best(hyperparameters)
    unknown = sorted(set(best.values) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; known: {list(HYPERPARAMETERS)}")
    hypermodel = hypermodel or make_hypermodel(cache, config)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)

    hp = kt.HyperParameters()
    hp.values = dict(best.values)
    model = hypermodel.build(hp)
    resolved = {p.name: hp.values[p.name] for p in hp.space if hp.is_active(p)}
    batch_size = int(resolved["batch_size"])

    shutil.rmtree(paths.retrain_tensorboard, ignore_errors=True)
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(paths.retrain_tensorboard), write_graph=False),
                 hparams_callback(paths.retrain_tensorboard, resolved, "retrain"),
                 keras.callbacks.TerminateOnNaN(raise_error=True)]
    if config.train_on_train_plus_val:
        trained_on = ["train", "validation"]
        epochs = best.best_epoch or config.retrain_epochs or config.max_epochs
        train_ds, val_ds = hypermodel.datasets(batch_size, train_splits=trained_on, validation=False)
        stopper = None
    else:
        trained_on = ["train"]
        epochs = config.retrain_epochs or config.max_epochs
        train_ds, val_ds = hypermodel.datasets(batch_size)
        # patience 0 (no early stopping) still restores the best epoch's weights.
        stopper = EarlyStoppingFromStart(val_ds, monitor=OBJECTIVE.name, mode="max",
                                         patience=config.early_stopping_patience or epochs)
        callbacks.append(stopper)
    started = time.monotonic()
    try:
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                            verbose=config.verbose, shuffle=False)
    except RuntimeError as e:
        raise RuntimeError(f"retraining {resolved} failed: {e}") from e
    retrain_wall_s = time.monotonic() - started
    _save_model(model, paths.best_model)
    write_json_atomic(paths.preprocessing, preprocessing_record(cache, hypermodel))
    hist = pd.DataFrame(history.history)
    hist.insert(0, "epoch", np.asarray(history.epoch) + 1)
    hist.to_csv(paths.history, index=False)

    baseline_mean, _ = hypermodel.target_stats
    ridge = ridge_baseline(cache)  # fitted on train, variant chosen on validation
    train = cache.split("train")
    scores, predictions, intervals, shared = {}, [], {}, {}
    for split in SPLITS:  # "test" last: it is opened only now, after training and saving.
        clip_ids, y_true, y_pred = predict_split(model, cache, split, crop_size=hypermodel.crop_size,
                                                 batch_size=config.eval_batch_size)
        identity, shared[split] = identity_lookup_predictions(train.clip_ids, train.targets, clip_ids)
        others = {"ridge": ridge["predictions"][split], "identity": identity}
        table = score_predictions(y_true, y_pred, baseline_mean, baselines=others)
        scores[split] = {"n": len(clip_ids), **table.to_dict(orient="index")}
        if split != "train":
            boot = cluster_bootstrap(y_true, {"model": y_pred, "baseline": np.broadcast_to(baseline_mean, y_true.shape),
                                              **others}, clip_ids, n_resamples=BOOTSTRAP_RESAMPLES, seed=config.seed)
            intervals[split] = boot.to_dict(orient="records")
        frame = pd.DataFrame({"split": split, "clip_id": list(clip_ids)})
        for i, trait in enumerate(TRAITS):
            frame[f"true_{trait}"] = y_true[:, i]
            frame[f"pred_{trait}"] = y_pred[:, i]
            frame[f"ridge_{trait}"] = ridge["predictions"][split][:, i]
        predictions.append(frame)
    pd.concat(predictions, ignore_index=True).to_csv(paths.predictions, index=False)

    metrics = _json_ready({
        "objective": OBJECTIVE.name,
        "model": paths.best_model.name,
        "preprocessing": paths.preprocessing.name,
        "hyperparameters": resolved,
        "source": {"trial_id": best.trial_id, "search_score": best.score, "search_best_epoch": best.best_epoch},
        "trained_on": trained_on,
        "epochs": epochs,
        "epochs_trained": len(history.epoch),
        "best_epoch": stopper.best_epoch + 1 if stopper is not None else None,
        "initial_validation_score": stopper.initial_score if stopper is not None else None,
        "retrain_wall_s": round(retrain_wall_s, 1),
        "baseline": BASELINE,
        "baselines": BASELINE_NAMES,
        "ridge": {k: v for k, v in ridge.items() if k != "predictions"},
        "identity_shared_id_share": shared,
        "intervals": intervals,
        "bootstrap": f"{BOOTSTRAP_RESAMPLES} resamples of YouTube ids (search.evaluation.cluster_bootstrap), "
                     f"seed {config.seed}, 95% percentile intervals",
        "baseline_mean": dict(zip(TRAITS, baseline_mean.tolist())),
        "scores": scores,
    })
    write_json_atomic(paths.metrics, metrics)
    return metrics
