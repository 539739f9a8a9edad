"""TensorBoard: the HParams experiment of a search, and reading event files back.

Per-trial scalars and HParams come from Keras Tuner itself: a ``keras.callbacks.TensorBoard``
passed to ``tuner.search`` is redirected to ``<log_dir>/<trial_id>/execution<k>`` for each
trial, and Keras Tuner adds ``tensorboard.plugins.hparams.api.KerasCallback`` with the
trial's values (``keras_tuner/src/engine/tuner.py``, ``_configure_tensorboard_dir``).
Keras' TensorBoard callback logs ``epoch_loss``, ``epoch_one_minus_mae`` and
``epoch_learning_rate`` per epoch under ``train/`` and ``validation/``.

This module adds what Keras Tuner leaves out: the experiment summary (every
hyperparameter's domain and the metrics to show in the HParams tab, including conditional
hyperparameters that are inactive by default), and small readers used by the tests.

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
from keras_tuner.src.engine.tuner_utils import convert_hyperparams_to_hparams
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.hparams import plugin_data_pb2

from fi_models.metrics import ONE_MINUS_MAE, ccc, pcc

METRICS = (("validation", "epoch_" + ONE_MINUS_MAE, "validation 1-MAE"),
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
    everything = space.copy()
    for hp in everything.space:  # also inactive conditional ones, so each gets a column
        everything.values.setdefault(hp.name, hp.default)
    hparams = list(convert_hyperparams_to_hparams(everything, hparams_api))
    metrics = [hparams_api.Metric(tag, group=group, display_name=name) for group, tag, name in METRICS]
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=metrics)


def hparams_callback(logdir: str | os.PathLike, values: dict, session: str) -> hparams_api.KerasCallback:
    """A Keras callback that records ``values`` as the HParams of one session (e.g. the retraining).

    Args:
        logdir: the session's folder (the TensorBoard callback's ``log_dir``).
        values: hyperparameter name -> bool / int / float / str.
        session: the session id shown in TensorBoard.
    """
    clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
    return hparams_api.KerasCallback(str(logdir), clean, trial_id=session)


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
