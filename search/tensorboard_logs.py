"""TensorBoard: the HParams experiment of a search, and reading event files back.

Per-trial scalars and HParams come from Keras Tuner itself: a ``keras.callbacks.TensorBoard``
passed to ``tuner.search`` is redirected to ``<log_dir>/<trial_id>/execution<k>`` for each
trial, and Keras Tuner adds ``tensorboard.plugins.hparams.api.KerasCallback`` with the
trial's values (``keras_tuner/src/engine/tuner.py``, ``_configure_tensorboard_dir``).
Keras' TensorBoard callback logs ``epoch_loss``, ``epoch_one_minus_mae`` and
``epoch_learning_rate`` per epoch under ``train/`` and ``validation/``.

This module adds what Keras Tuner leaves out: the experiment summary (every
hyperparameter's domain and the metrics to show in the HParams tab, including conditional
hyperparameters that are inactive by default), the score the tuner ranks by (the BEST
epoch's validation 1-MAE, logged by :class:`BestObjective` as ``epoch_best_one_minus_mae``
under ``validation/``; the HParams tab shows a scalar's last value, which for the plain
``epoch_one_minus_mae`` is the last epoch's, not the trial's score), and small readers used
by the tests.

Types and values in the HParams tab: TensorBoard's HParams protocol has no integer type
(``api_pb2.DataType`` is STRING, BOOL or FLOAT64; tensorboard issue #1998), so numbers are
FLOAT64 there. Integer hyperparameters get a discrete domain of their integer values (the
tab then lists 16, 32, 64 rather than a real interval), and float values are rounded to
:data:`HPARAM_DIGITS` significant digits (Keras Tuner's stepped floats are sums such as
``0.1 * 3 = 0.30000000000000004``) in domains and session values alike.

Open it with::

    tensorboard --logdir tuner_runs/<run>/tensorboard
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from fi_models.metrics import ONE_MINUS_MAE, ccc, pcc

BEST_PREFIX = "best_"
""":class:`BestObjective` logs ``val_best_<metric>``: TensorBoard's ``epoch_best_<metric>``."""

HPARAM_DIGITS = 12
"""Significant digits of float hyperparameter values written to TensorBoard: enough to keep a
sampled learning rate as sampled, few enough to drop binary-sum noise (0.30000000000000004)."""

MAX_DISCRETE_INTS = 1000
"""An integer hyperparameter with more values than this keeps an interval domain."""

METRICS = (("validation", "epoch_" + BEST_PREFIX + ONE_MINUS_MAE, "validation 1-MAE, best epoch (the tuner's score)"),
           ("validation", "epoch_" + ONE_MINUS_MAE, "validation 1-MAE, last epoch"),
           ("validation", "epoch_loss", "validation loss"),
           ("train", "epoch_" + ONE_MINUS_MAE, "train 1-MAE"),
           ("train", "epoch_loss", "train loss"))
"""(run group, scalar tag, display name) of the metrics shown in the HParams tab."""


def write_experiment(logdir: str | os.PathLike, space: kt.HyperParameters) -> None:
    """Write the HParams experiment summary (domains of every hyperparameter + metrics) once.

    Args:
        logdir: the folder holding one sub-folder per trial (the TensorBoard callback's
            ``log_dir`` passed to the tuner). Nothing is written if it already holds an
            events file (a resumed search).
        space: the search space, e.g. ``tuner.oracle.get_space()``.
    """
    logdir = Path(logdir)
    if list(logdir.glob("events.out.tfevents.*")):
        return
    hparams = list(hparam_domains(space).values())
    metrics = [hparams_api.Metric(tag, group=group, display_name=name) for group, tag, name in METRICS]
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=metrics)


def hparam_value(value):
    """A hyperparameter value as TensorBoard should show it: NumPy scalars as Python ones,
    floats rounded to :data:`HPARAM_DIGITS` significant digits (0.30000000000000004 -> 0.3)."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and np.isfinite(value):
        return float(f"{value:.{HPARAM_DIGITS}g}")
    return value


def _domain(hp):
    """The ``hparams_api`` domain of one Keras Tuner hyperparameter (see the module docstring)."""
    types = kt.engine.hyperparameters
    if isinstance(hp, types.Boolean):
        return hparams_api.Discrete([True, False])
    if isinstance(hp, types.Fixed):
        return hparams_api.Discrete([hparam_value(hp.value)])
    if isinstance(hp, types.Choice):
        values = [hparam_value(v) for v in hp.values]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and \
                not all(isinstance(v, int) for v in values):
            values = [float(v) for v in values]  # one dtype per domain: ints among floats become floats
        return hparams_api.Discrete(values)
    if isinstance(hp, types.Int):
        values = range(hp.min_value, hp.max_value + 1, hp.step or 1)
        if hp.sampling not in (None, "linear") or len(values) > MAX_DISCRETE_INTS:
            return hparams_api.IntInterval(hp.min_value, hp.max_value)
        return hparams_api.Discrete(list(values))
    if isinstance(hp, types.Float):
        if hp.step is not None and hp.sampling in (None, "linear"):
            values = np.arange(hp.min_value, hp.max_value + 1e-7, hp.step)
            return hparams_api.Discrete(sorted({hparam_value(float(v)) for v in values}))
        return hparams_api.RealInterval(float(hp.min_value), float(hp.max_value))
    raise ValueError(f"hyperparameter type not recognised: {hp!r}")


def hparam_domains(space: kt.HyperParameters) -> dict:
    """``{name: hparams_api.HParam}`` of every hyperparameter of ``space`` (inactive ones included).

    Integers get a discrete domain of their values (an interval past
    :data:`MAX_DISCRETE_INTS` values or with log sampling); stepped floats a discrete domain
    of rounded values (:func:`hparam_value`); other floats a real interval.

    Raises:
        ValueError: for a hyperparameter type Keras Tuner does not define.
    """
    return {hp.name: hparams_api.HParam(hp.name, _domain(hp)) for hp in space.space}


def hparams_callback(logdir: str | os.PathLike, values: dict, session: str) -> hparams_api.KerasCallback:
    """A Keras callback that records ``values`` as the HParams of one session (e.g. the retraining).

    Args:
        logdir: the session's folder (the TensorBoard callback's ``log_dir``).
        values: hyperparameter name -> bool / int / float / str (floats are rounded,
            :func:`hparam_value`).
        session: the session id shown in TensorBoard.
    """
    clean = {k: hparam_value(v) for k, v in values.items()}
    return hparams_api.KerasCallback(str(logdir), clean, trial_id=session)


class BestObjective(keras.callbacks.Callback):
    """Add the best value so far of a validation metric to the epoch logs.

    Keras Tuner scores a trial by its best epoch; TensorBoard's HParams tab shows a scalar's
    last value. This callback adds ``val_best_<metric>`` (the running best of
    ``val_<metric>`` since the fit began), which a later ``keras.callbacks.TensorBoard`` logs
    as ``epoch_best_<metric>`` under ``validation/``: its last value is the session's score.
    Put it BEFORE the TensorBoard callback in the list (and after callbacks that add
    ``val_<metric>``, if any).

    Args:
        metric: the metric's logged name without ``val_`` (default 1-MAE).
        mode: ``"max"`` (higher is better) or ``"min"``.
        initial: a score to beat from the start (e.g. the untrained weights'), or None.
    """

    def __init__(self, metric: str = ONE_MINUS_MAE, mode: str = "max", initial: float | None = None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode, self.initial = metric, mode, initial
        self.best = None

    def on_train_begin(self, logs=None):
        self.best = self.initial

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "val_" + self.metric not in logs:
            return
        value = float(logs["val_" + self.metric])
        if np.isfinite(value) and (self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best = value
        if self.best is not None:
            logs["val_" + BEST_PREFIX + self.metric] = self.best


def configure_trial_tensorboard(callbacks: list, trial, logdir_of) -> None:
    """Keras Tuner's ``Tuner._configure_tensorboard_dir``, with rounded HParams and the score.

    For the ``keras.callbacks.TensorBoard`` in ``callbacks``: points it at the trial's
    folder, puts a :class:`BestObjective` before it (the session's score, the best epoch's
    validation 1-MAE) and appends the HParams callback with the trial's values
    (:func:`hparams_callback`: floats rounded; Hyperband's ``tuner/*`` values left out, as
    Keras Tuner does). ``callbacks`` (one execution's copy) is changed in place.

    Args:
        callbacks: the execution's callback list.
        trial: the Keras Tuner ``Trial``.
        logdir_of: ``log_dir -> the execution's folder`` (``Tuner._get_tensorboard_dir``
            with the trial id and execution bound).
    """
    for i, callback in enumerate(list(callbacks)):
        if isinstance(callback, keras.callbacks.TensorBoard):
            callback.log_dir = logdir_of(callback.log_dir)
            hp = trial.hyperparameters
            values = {p.name: hp.values[p.name] for p in hp.space if p.name in hp.values}
            callbacks.insert(callbacks.index(callback), BestObjective())
            callbacks.append(hparams_callback(callback.log_dir, values, str(trial.trial_id)))
            return


def _events(folder: Path):
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            yield path.parent, event_pb2.Event.FromString(record.numpy())


def read_session_hparams(logdir: str | os.PathLike) -> dict:
    """Every HParams session under ``logdir``: ``{session folder (relative): {name: value}}``."""
    logdir = Path(logdir)
    sessions = {}
    for folder, event in _events(logdir):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name != "hparams":
                continue
            data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            if data.HasField("session_start_info"):
                sessions[str(folder.relative_to(logdir))] = {
                    k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                    for k, v in data.session_start_info.hparams.items()}
    return sessions


def read_experiment(logdir: str | os.PathLike) -> dict:
    """The HParams experiment summary in ``logdir`` (not its sub-folders).

    Returns:
        ``{"hparams": {name: {"type": "DATA_TYPE_FLOAT64" | ..., "values": [...]} or
        {"type": ..., "interval": (min, max)}}, "metrics": [(group, tag), ...]}``; empty
        dicts / lists when there is no experiment.
    """
    logdir = Path(logdir)
    out = {"hparams": {}, "metrics": []}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            for value in event_pb2.Event.FromString(record.numpy()).summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if not data.HasField("experiment"):
                    continue
                for info in data.experiment.hparam_infos:
                    entry = {"type": api_pb2.DataType.Name(info.type)}
                    if info.HasField("domain_discrete"):
                        entry["values"] = [v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                                           for v in info.domain_discrete.values]
                    elif info.HasField("domain_interval"):
                        entry["interval"] = (info.domain_interval.min_value, info.domain_interval.max_value)
                    out["hparams"][info.name] = entry
                out["metrics"] = [(m.name.group, m.name.tag) for m in data.experiment.metric_infos]
    return out


def read_scalars(logdir: str | os.PathLike) -> dict:
    """Scalars under ``logdir``: ``{(run folder (relative), tag): [(step, value), ...]}``."""
    logdir = Path(logdir)
    scalars = {}
    for folder, event in _events(logdir):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "scalars" or value.HasField("simple_value"):
                number = value.simple_value if value.HasField("simple_value") else float(
                    tf.make_ndarray(value.tensor))
                scalars.setdefault((str(folder.relative_to(logdir)), value.tag), []).append((event.step, number))
    return scalars


class ValidationCorrelations(keras.callbacks.Callback):
    """Add the epoch's validation CCC and PCC (means over traits) to the epoch logs.

    Keras' own ``ConcordanceCorrelation``/``PearsonCorrelation`` average per-batch values;
    these are over the whole validation split at once (``fi_models.metrics.ccc``, Lin 1989,
    and ``pcc``), as in ``metrics.json``. Put this callback BEFORE ``keras.callbacks.TensorBoard``
    in the list: the logs it adds (``val_ccc``, ``val_pcc``) are then written as
    ``epoch_ccc``/``epoch_pcc`` under ``validation/`` and kept in the ``History``.

    Args:
        val_ds: the validation ``tf.data.Dataset`` of ``((audio, video), y)``, in a fixed order.

    A constant prediction has no Pearson r; its ``val_pcc`` is logged as 0 (its CCC is 0 too).
    """

    def __init__(self, val_ds):
        super().__init__()
        self.val_ds = val_ds
        self.y_true = np.concatenate([np.asarray(y) for _, y in val_ds], axis=0)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        y_pred = np.asarray(self.model.predict(self.val_ds, verbose=0), dtype=np.float64)
        if not np.isfinite(y_pred).all():
            return  # TerminateOnNaN ends the run; nothing meaningful to log
        logs["val_ccc"] = float(np.mean(ccc(self.y_true, y_pred)))
        r = pcc(self.y_true, y_pred)  # NaN for a constant trait: r is undefined there, logged as 0
        logs["val_pcc"] = float(np.nanmean(r)) if np.isfinite(r).any() else 0.0
