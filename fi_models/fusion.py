"""The fused audio-visual model, its output head, the standardized-target remedy, compiling.

``build_model`` wires (assignment, "Model fusion")::

    audio (N, M, 1) or (N, 1) -> audio branch ----\\
                                                    Concatenate -> Dense 256 ReLU -> Dropout
    video (F, H, W, 3) in [0, 1] -> visual branch -/                -> Dense 5 -> head -> (batch, 5)

Regression-to-the-mean remedy "standardized targets": given the TRAINING split's per-trait
label mean ``m`` and SD ``s`` (:func:`target_statistics`), the last Dense layer predicts a
standardized score ``z`` per trait and a fixed, non-trainable :class:`LabelScale` layer
outputs ``m + s * z``. The network thus learns standardized targets, as if the labels had
been z-scored (unit-scale last layer; the outputs start near the training mean instead of
near 0 as with a plain linear head), while the model's outputs, loss, metrics and
predictions stay in label units: nothing has to be mapped back at prediction time, and the
mean/SD travel inside the saved ``.keras`` file. ``benchmarks/remedy_effect.py`` measures
its effect beside the sigmoid head and the ``"ccc_mae"`` loss of ``fi_models.losses``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from fi_data.traits import TRAITS
from fi_models.audio import build_audio_branch
from fi_models.losses import get_loss
from fi_models.metrics import OneMinusMAE
from fi_models.visual import build_visual_branch

HEADS = ("linear", "sigmoid")
"""Output activations accepted by :func:`build_model`."""

OUTPUT_NAME = "traits"
"""Name of the output layer (one ``(batch, 5)`` tensor in ``TRAITS`` order)."""


def _check_statistics(mean, std, activation: str) -> tuple:
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    k = len(TRAITS)
    if mean.shape != (k,) or std.shape != (k,):
        raise ValueError(f"target mean/std must have {k} values (TRAITS order), got {mean.size} and {std.size}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError(f"target mean {mean.tolist()} / std {std.tolist()} hold NaN or Inf")
    if (std <= 0).any():
        raise ValueError(f"target std must be > 0 for every trait, got {std.tolist()} "
                         "(a constant training label cannot be standardized)")
    if activation == "sigmoid" and ((mean <= 0) | (mean >= 1)).any():
        raise ValueError(f"the sigmoid head needs target means strictly inside (0, 1), got {mean.tolist()}")
    return mean, std


@keras.saving.register_keras_serializable(package="fi_models")
class LabelScale(layers.Layer):
    """Fixed map from standardized scores ``z`` to label units (the remedy's last layer).

    ``activation="linear"``: ``y = mean + std * z``.
    ``activation="sigmoid"``: ``y = sigmoid(logit(mean) + z * std / (mean * (1 - mean)))``,
    which keeps ``y`` in ``(0, 1)``, gives ``y = mean`` at ``z = 0`` and has the linear
    version as its first-order Taylor expansion at ``z = 0`` (the slope of ``logit`` at
    ``mean`` is ``1 / (mean (1 - mean))``), so ``z`` stays a standardized score.

    Args:
        mean, std: per-trait training statistics, 5 floats each, std > 0 (and mean in (0, 1)
            for sigmoid). Stored in the layer config (not as weights), so they are never
            trained and reload with the model.
        activation: ``"linear"`` or ``"sigmoid"``.

    Input/output: float32 ``(batch, 5)``.

    Raises:
        ValueError: for statistics of the wrong length, non-finite, std <= 0, or an unknown
            activation.
    """

    def __init__(self, mean, std, activation: str = "linear", **kwargs):
        super().__init__(**kwargs)
        if activation not in HEADS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {HEADS}")
        mean, std = _check_statistics(mean, std, activation)
        self.mean = mean.tolist()
        self.std = std.tolist()
        self.activation = activation

    def call(self, z):
        mean = ops.convert_to_tensor(self.mean, dtype=z.dtype)
        std = ops.convert_to_tensor(self.std, dtype=z.dtype)
        if self.activation == "linear":
            return mean + std * z
        logit_mean = ops.log(mean / (1.0 - mean))
        return ops.sigmoid(logit_mean + z * std / (mean * (1.0 - mean)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "activation": self.activation}


def target_statistics(targets) -> tuple:
    """Per-trait mean and population SD of training labels, for the standardized-target remedy.

    Args:
        targets: array ``(n, 5)`` in ``TRAITS`` order (the TRAINING split's targets), n >= 2.

    Returns:
        ``(mean, std)``: two float64 arrays ``(5,)``.

    Raises:
        ValueError: wrong shape, fewer than 2 rows, NaN/Inf, or a trait with SD 0.
    """
    arr = np.asarray(targets, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(TRAITS) or arr.shape[0] < 2:
        raise ValueError(f"targets shape {arr.shape}: expected (n >= 2, {len(TRAITS)}) in TRAITS order")
    mean, std = arr.mean(axis=0), arr.std(axis=0)
    _check_statistics(mean, std, "linear")
    return mean, std


def build_model(audio_shape, video_shape, *, audio_branch: str = "conv2d", backbone: str = "vgg",
                depth: int = 3, width: int = 32, temporal: str = "max", temporal_units: int = 64,
                fusion_units: int = 256, dropout: float = 0.5, head: str = "linear", target_mean=None,
                target_std=None, weights=None, name: str = "personality_model") -> keras.Model:
    """Build the audio-visual personality model (uncompiled; see :func:`compile_model`).

    Args:
        audio_shape: one audio sample, ``(N, M, 1)`` MFCCs or ``(N, 1)`` mean MFCCs, float32.
        video_shape: one clip's frames ``(F, H, W, 3)``, float32 RGB in ``[0, 1]``.
        audio_branch: one of ``fi_models.audio.AUDIO_BRANCHES`` (must fit ``audio_shape``).
        backbone, depth, width, temporal, temporal_units, weights: the visual branch, see
            ``fi_models.visual.build_visual_branch``.
        fusion_units: width of the Dense ReLU layer after the concatenation.
        dropout: rate of the Dropout after that layer and of the audio branch's Dropout.
        head: ``"linear"`` or ``"sigmoid"`` output activation.
        target_mean, target_std: the TRAINING split's per-trait label mean and SD (5 values
            each, e.g. from :func:`target_statistics`). Given together, they turn on the
            standardized-target remedy (module docstring, :class:`LabelScale`); with
            ``head="sigmoid"`` the output is ``sigmoid(logit(m) + z s / (m (1 - m)))``.
        name: the model's name.

    Returns:
        A ``keras.Model`` with inputs ``[keras.Input(audio_shape, name="audio"),
        keras.Input(video_shape, name="video")]`` (in that order, so ``model((a, v))``,
        datasets of ``((audio, video), y)`` and dicts keyed ``"audio"``/``"video"`` all
        work) and one output ``(batch, 5)`` float32 named ``OUTPUT_NAME`` in ``TRAITS``
        order, in label units.

    Raises:
        ValueError: unknown ``head``; only one of ``target_mean``/``target_std`` given or
            invalid statistics; any error of the branch builders.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    if (target_mean is None) != (target_std is None):
        raise ValueError("give both target_mean and target_std (the remedy needs both) or neither")
    audio_in = keras.Input(tuple(audio_shape), name="audio")
    video_in = keras.Input(tuple(video_shape), name="video")
    audio_features = build_audio_branch(audio_branch, audio_shape, dropout=dropout)(audio_in)
    video_features = build_visual_branch(video_shape, backbone=backbone, depth=depth, width=width,
                                         temporal=temporal, temporal_units=temporal_units,
                                         weights=weights)(video_in)
    x = layers.Concatenate(name="fusion_concat")([audio_features, video_features])
    x = layers.Dense(fusion_units, activation="relu", name="fusion_dense")(x)
    x = layers.Dropout(dropout, name="fusion_dropout")(x)
    if target_mean is None:
        outputs = layers.Dense(len(TRAITS), activation=head, name=OUTPUT_NAME)(x)
    else:
        z = layers.Dense(len(TRAITS), name="standardized_traits")(x)
        outputs = LabelScale(target_mean, target_std, activation=head, name=OUTPUT_NAME)(z)
    return keras.Model([audio_in, video_in], outputs, name=name)


def compile_model(model: keras.Model, *, learning_rate: float = 1e-3, loss: str = "mae",
                  jit_compile="auto") -> keras.Model:
    """Compile ``model`` with Adam, a loss from ``fi_models.losses.LOSSES`` and the 1-MAE metric.

    Args:
        model: e.g. from :func:`build_model`.
        learning_rate: Adam's learning rate.
        loss: ``"mae"``, ``"mse"`` or ``"ccc_mae"`` (see ``fi_models.losses``).
        jit_compile: passed to ``Model.compile`` (``"auto"``, True, False).

    Returns:
        The same model, compiled; its metric logs as ``fi_models.metrics.ONE_MINUS_MAE``.

    Raises:
        ValueError: for an unknown loss or a learning rate <= 0.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=get_loss(loss),
                  metrics=[OneMinusMAE()], jit_compile=jit_compile)
    return model
