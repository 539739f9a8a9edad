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
from fi_models.fusion import OUTPUT_NAME
from fi_models.metrics import score_predictions
from fi_models.serving import SERVING_FACES_INPUT, SERVING_FRAMES_INPUT, serving_model
from search.baselines import ridge_baseline
from search.config import SearchConfig
from search.evaluation import cluster_bootstrap, identity_lookup_predictions
from search.hypermodel import KNOWN_HYPERPARAMETERS, PersonalityHyperModel
from search.runs import BestHyperparameters, RunPaths, cache_identity, load_best_hyperparameters
from search.tensorboard_logs import BestObjective, ValidationCorrelations, hparams_callback
from search.tuner import OBJECTIVE, DeadlineStop, make_hypermodel

BASELINE = "the TRAINING split's mean label per trait, predicted for every clip"

BASELINE_NAMES = {"baseline": "mean predictor", "ridge": "clip-statistics ridge", "identity": "identity lookup"}
"""Column prefix of each baseline in ``metrics.json`` scores -> its name in words."""


BOOTSTRAP_RESAMPLES = 1000
"""Resamples of the cluster bootstrap behind every interval in ``metrics.json``."""

RETRAIN_EPOCHS_FACTOR = 3
"""With early stopping and no explicit ``retrain_epochs``, the retraining may run up to this
many times the search's ``max_epochs``: the search's cap is set by its time budget and
Hyperband's brackets, and its best configuration often still improves at that epoch.
Early stopping (``early_stopping_patience``) ends the retraining once it stops improving."""

RETRAIN_TIME_SHARE = 0.5
"""With a search time budget and no explicit ``retrain_epochs``, each retrained model also
stops at the end of the epoch during which it passed this share of the budget, so that the
extra epochs of :data:`RETRAIN_EPOCHS_FACTOR` cannot make the whole job much longer than the
budget says (``stopped_by_time`` in ``metrics.json``)."""


def retrain_epoch_cap(config: SearchConfig) -> int:
    """The retraining's epoch cap on ``train`` with validation early stopping.

    ``config.retrain_epochs`` when given; else :data:`RETRAIN_EPOCHS_FACTOR` ×
    ``config.max_epochs`` when early stopping is on (``early_stopping_patience`` ≥ 1); else
    (no early stopping: every epoch is trained) ``config.max_epochs``.
    """
    if config.retrain_epochs:
        return int(config.retrain_epochs)
    if config.early_stopping_patience:
        return RETRAIN_EPOCHS_FACTOR * int(config.max_epochs)
    return int(config.max_epochs)


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
            "frames": {"name": SERVING_FRAMES_INPUT, "shape": list(cache.frame_shape), "dtype": "uint8",
                       "note": "the cached frames as they are: the model center-crops (crop_size) and scales "
                               "them to [0, 1] in its first layer (fi_models.serving)"},
            **({} if cache.face_shape is None else {"faces": {
                "name": SERVING_FACES_INPUT, "shape": list(cache.face_shape), "dtype": "uint8",
                "note": "the cached face crops as they are (preprocessing frames 'both'), cropped and scaled "
                        "like the frames"}}),
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
                         hypermodel: PersonalityHyperModel | None = None, retrain_seeds: int = 1,
                         ensemble: list | None = None, initial_weights: str | Path | None = None) -> dict:
    """Retrain a configuration (from scratch, or on from a trial's checkpoint), save it, and
    score it on every split.

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
        retrain_seeds: train the configuration this many times, with seeds ``config.seed``,
            ``config.seed + 1``, ...; the one with the best validation score is saved, and
            ``metrics["seeds"]`` holds every seed's scores and their mean and SD.
        ensemble: hyperparameters (as ``hyperparameters``) of further members: each is
            trained once, and ``best_model.keras`` averages the best configuration's model
            with them (:func:`averaging_model`); ``scores`` are then the ensemble's and
            ``metrics["ensemble"]["best_single"]`` the single model's mean row per split.
        initial_weights: a Keras weights file of this configuration (the best trial's
            checkpoint, ``search.checkpoints.trial_checkpoint``): the model starts from those
            weights and optimizer state instead of its initialisation, and trains on as below. Used only for
            training on ``train`` with one seed (with several seeds, or on train + validation
            for a fixed epoch count, every model starts from scratch); a file that does not
            load (missing, other shapes) is reported and the model starts from scratch.
            ``metrics["started_from"]`` records which.

    Training: on ``train`` for at most :func:`retrain_epoch_cap` epochs (``retrain_epochs``;
    by default :data:`RETRAIN_EPOCHS_FACTOR` × ``max_epochs`` with early stopping, else
    ``max_epochs``) with ``EarlyStopping`` on validation 1-MAE (patience
    ``early_stopping_patience``; the best epoch's weights are restored, the untrained weights
    counting as epoch 0: :class:`EarlyStoppingFromStart`); or, with ``train_on_train_plus_val``, on train +
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
    unknown = sorted(set(best.values) - set(KNOWN_HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; known: {list(KNOWN_HYPERPARAMETERS)}")
    hypermodel = hypermodel or make_hypermodel(cache, config)
    keras.backend.clear_session()
    shutil.rmtree(paths.retrain_tensorboard, ignore_errors=True)
    seeds = [config.seed + i for i in range(max(1, retrain_seeds))]
    if len(seeds) > 1 or config.train_on_train_plus_val:
        initial_weights = None
    runs = [_fit_one(hypermodel, best, config, seed, paths.retrain_tensorboard / ("" if i == 0 else f"seed{seed}"),
                     initial_weights=initial_weights)
            for i, seed in enumerate(seeds)]
    chosen = 0
    if len(runs) > 1 and runs[0]["stopper"] is not None:  # choose on validation (held out)
        chosen = int(np.argmax([r["stopper"].best for r in runs]))
    run = runs[chosen]
    model, history, stopper, resolved = run["model"], run["history"], run["stopper"], run["resolved"]
    trained_on, epochs, retrain_wall_s = run["trained_on"], run["epochs"], sum(r["wall_s"] for r in runs)
    members = []
    for k, values in enumerate(ensemble or []):
        members.append(_fit_one(hypermodel, _as_best(values), config, config.seed,
                                paths.retrain_tensorboard / f"ensemble{k}")["model"])
    delivered = averaging_model([model, *members]) if members else model
    _save_model(serving_model(delivered, cache.audio_shape, cache.frame_shape, hypermodel.crop_size,
                              cache.face_shape), paths.best_model)
    write_json_atomic(paths.preprocessing, preprocessing_record(cache, hypermodel))
    hist = pd.DataFrame(history.history)
    hist.insert(0, "epoch", np.asarray(history.epoch) + 1)
    hist.to_csv(paths.history, index=False)

    baseline_mean, _ = hypermodel.target_stats
    ridge = ridge_baseline(cache)  # fitted on train, variant chosen on validation
    train = cache.split("train")
    scores, predictions, intervals, shared = {}, [], {}, {}
    seed_scores, single = {}, {}
    for split in SPLITS:  # "test" last: it is opened only now, after training and saving.
        predicted = {}  # id(model) -> its predictions: each model predicts a split once

        def predict(m, split=split):
            if id(m) not in predicted:
                predicted[id(m)] = predict_split(m, cache, split, crop_size=hypermodel.crop_size,
                                                 batch_size=config.eval_batch_size)
            return predicted[id(m)]

        def mean_row(y_true, m):
            return score_predictions(y_true, predict(m)[2], baseline_mean, traits=TRAITS).loc["mean"].to_dict()

        clip_ids, y_true, y_pred = predict(delivered)
        if len(runs) > 1:
            seed_scores[split] = [mean_row(y_true, r["model"]) for r in runs]
        if members:
            single[split] = mean_row(y_true, model)
        identity, shared[split] = identity_lookup_predictions(train.clip_ids, train.targets, clip_ids)
        others = {"ridge": ridge["predictions"][split], "identity": identity}
        table = score_predictions(y_true, y_pred, baseline_mean, baselines=others, traits=TRAITS)
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
        "started_from": run["started_from"],
        "trained_on": trained_on,
        "epochs": epochs,
        "epochs_trained": len(history.epoch),
        "stopped_by_time": run["stopped_by_time"],
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
        "seeds": None if len(runs) == 1 else {
            "seeds": seeds, "saved_seed": seeds[chosen],
            "chosen_by": "best validation 1-MAE" if runs[0]["stopper"] is not None else
                         "the first seed (trained on validation too: nothing held out to choose on)",
            "per_seed": seed_scores,
            "summary": {split: {m: {"mean": float(np.mean([r[m] for r in rows])), "sd": float(np.std([r[m] for r in rows]))}
                                for m in ("one_minus_mae", "r2", "ccc")} for split, rows in seed_scores.items()}},
        "ensemble": None if not members else {
            "members": [resolved, *[_as_best(v).values for v in ensemble]],
            "member_trials": [best.trial_id, *[_as_best(v).trial_id for v in ensemble]],
            "best_single": single,
            "note": "best_model.keras averages the members' predictions; scores are the ensemble's"},
    })
    write_json_atomic(paths.metrics, metrics)
    return metrics


def averaging_model(members: list, name: str = "ensemble") -> keras.Model:
    """One Keras model whose output is the mean of the ``members``' outputs.

    Args:
        members: models with the same inputs (``audio``, ``video``) and outputs ``(b, 5)``.

    Returns:
        A ``keras.Model`` with inputs named like the first member's and the averaged
        output named ``fi_models.fusion.OUTPUT_NAME``; it saves and loads as one ``.keras``
        file, so ``predict`` and ``retrain --from`` use it like a single model.
    """
    first = members[0]
    inputs = [keras.Input(tuple(t.shape[1:]), name=t.name.split(":")[0], dtype=t.dtype) for t in first.inputs]
    for k, m in enumerate(members):
        m.name = f"member_{k}"
    outputs = keras.layers.Average(name=OUTPUT_NAME, dtype="float32")([m(inputs) for m in members])
    return keras.Model(inputs, outputs, name=name)


def _fit_one(hypermodel: PersonalityHyperModel, best: BestHyperparameters, config: SearchConfig, seed: int,
             log_dir: Path, *, initial_weights: str | Path | None = None) -> dict:
    """Build and train one model of ``best``'s values with ``seed`` (the retraining's rules),
    starting from ``initial_weights`` when given and loadable.

    Returns:
        dict ``model, history, stopper`` (None with ``train_on_train_plus_val``), ``resolved``
        (active values), ``trained_on``, ``epochs``, ``wall_s``, ``started_from`` (None: from
        scratch; else the weights file and the trial's id and best epoch).
    """
    keras.utils.set_random_seed(seed)
    hp = kt.HyperParameters()
    hp.values = dict(best.values)
    model = hypermodel.build(hp)
    started_from = None
    if initial_weights is not None:
        try:
            model.optimizer.build(model.trainable_variables)  # so that the trial's Adam moments load too
            model.load_weights(str(initial_weights))
            started_from = {"weights": str(initial_weights), "trial_id": best.trial_id,
                            "trial_best_epoch": best.best_epoch}
        except (OSError, ValueError) as e:  # a file that does not load may have loaded in part: rebuild
            print(f"[retrain] cannot start from {initial_weights} ({type(e).__name__}: {e}); "
                  f"training from scratch", flush=True)
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            model = hypermodel.build(hp)
    resolved = {p.name: hp.values[p.name] for p in hp.space if hp.is_active(p)}
    batch_size = int(resolved["batch_size"])
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False),
                 hparams_callback(log_dir, resolved, "retrain"),
                 keras.callbacks.TerminateOnNaN(raise_error=True)]
    if config.train_on_train_plus_val:
        trained_on = ["train", "validation"]
        epochs = best.best_epoch or config.retrain_epochs or config.max_epochs
        train_ds, val_ds = hypermodel.datasets(batch_size, train_splits=trained_on, validation=False)
        stopper = None
    else:
        trained_on = ["train"]
        epochs = retrain_epoch_cap(config)
        train_ds, val_ds = hypermodel.datasets(batch_size)
        callbacks.insert(0, ValidationCorrelations(val_ds))  # before TensorBoard, which then logs them
        callbacks.insert(1, BestObjective())  # the best epoch's score, for the HParams tab
        # patience 0 (no early stopping) still restores the best epoch's weights.
        stopper = EarlyStoppingFromStart(val_ds, monitor=OBJECTIVE.name, mode="max",
                                         patience=config.early_stopping_patience or epochs)
        callbacks.append(stopper)
    time_limit = None
    if config.time_budget_s and not config.retrain_epochs:
        time_limit = DeadlineStop(time.time() + RETRAIN_TIME_SHARE * config.time_budget_s)
        callbacks.append(time_limit)
    started = time.monotonic()
    try:
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                            verbose=config.verbose, shuffle=False)
    except RuntimeError as e:
        raise RuntimeError(f"retraining {resolved} failed: {e}") from e
    stopped_by_time = bool(time_limit is not None and len(history.epoch) < epochs and time.time() >= time_limit.deadline
                           and not (stopper is not None and stopper.stopped_epoch))
    return {"model": model, "history": history, "stopper": stopper, "resolved": resolved,
            "trained_on": trained_on, "epochs": epochs, "wall_s": time.monotonic() - started,
            "stopped_by_time": stopped_by_time, "started_from": started_from}
