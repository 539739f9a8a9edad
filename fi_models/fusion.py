"""The fused audio-visual model, its output head, the standardized-target remedy, compiling.

``build_model`` wires (assignment, "Model fusion")::

    audio (N, M, 1) or (N, 1) -> audio branch ----\\
                                                    Concatenate -> Dense 256 ReLU -> Dropout
    video (F, H, W, 3) in [0, 1] -> visual branch -/                -> Dense k -> head -> (batch, k)

with ``k = len(traits)``: the trait names, and so the number of outputs, are passed in by the
caller (``traits=``, e.g. ``fi_data.traits.TRAITS``); ``fi_models`` imports nothing from
``fi_data`` or ``search``.

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

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from fi_models.audio import build_audio_branch
from fi_models.losses import get_loss
from fi_models.metrics import OneMinusMAE, check_traits
from fi_models.statistics import AudioStatistics, FaceAppearance, FrameStatistics
from fi_models.visual import build_visual_branch

HEADS = ("linear", "sigmoid")
"""Output activations accepted by :func:`build_model`."""

OUTPUT_NAME = "traits"
"""Name of the output layer (one ``(batch, len(traits))`` tensor, column ``i`` = ``traits[i]``)."""

STATS = "stats"
"""Audio branch and visual backbone name of the statistics branches: the clip statistics of
``fi_models.statistics`` (``AudioStatistics`` / ``FrameStatistics``), standardized with the
training split's moments, fed to the fusion layer as they are (no learned layer of their own)."""


APPEARANCE_INPUTS = (None, "face", "video")
"""Where the ridge path may read face appearance (:class:`StatisticsInit` ``appearance_from``)."""


@dataclasses.dataclass(frozen=True)
class StatisticsInit:
    """What the statistics branches and the ridge path are built from (all from the TRAINING split).

    Attributes:
        audio_mean, audio_var: per-feature mean and variance of ``AudioStatistics`` over the
            training clips, float ``(d_a,)``.
        video_mean, video_var: the same for ``FrameStatistics``, ``(d_v,)``.
        ridge_kernel, ridge_bias: optional ridge regression from the standardized statistics
            ``[audio, video]`` (``(d_a + d_v,)``) to the standardized targets: kernel
            ``(d_a + d_v, len(traits))``, bias ``(len(traits),)``
            (``search.baselines.fit_statistics_ridge``).
            Given, the model gets a fixed linear path with these weights and its learned part
            starts at 0, so the untrained model predicts exactly the ridge and training
            learns a residual on top of it (wide & deep, Cheng et al. 2016, with the wide
            part fitted in closed form).
        appearance_from: ``None``, or the input whose :class:`fi_models.statistics.FaceAppearance`
            cells join the ridge path's features (after ``[audio, video]``, so the kernel is
            ``(d_a + d_v + grid², len(traits))``): ``"face"`` (the face stream of frames
            "both") or ``"video"`` (when the video input is itself the face crops, frames
            "face"). Whole frames get none (``fi_models.statistics`` says why).
        appearance_mean, appearance_var: per-cell mean and variance of those cells over the
            training clips, ``(grid²,)``; given with ``appearance_from``.
    """

    audio_mean: tuple
    audio_var: tuple
    video_mean: tuple
    video_var: tuple
    ridge_kernel: tuple | None = None
    ridge_bias: tuple | None = None
    appearance_from: str | None = None
    appearance_mean: tuple | None = None
    appearance_var: tuple | None = None

    def __post_init__(self):
        if self.appearance_from not in APPEARANCE_INPUTS:
            raise ValueError(f"appearance_from={self.appearance_from!r}: expected one of {APPEARANCE_INPUTS}")
        if (self.appearance_from is None) != (self.appearance_mean is None) or (
                (self.appearance_mean is None) != (self.appearance_var is None)):
            raise ValueError("give appearance_from, appearance_mean and appearance_var together, or none of them")


def _standardizer(mean, var, name: str) -> layers.Normalization:
    """``layers.Normalization`` with fixed moments; a feature of (near) zero variance is only
    centred (its variance is taken as 1), so an unseen value cannot blow up."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    var = np.asarray(var, dtype=np.float64).reshape(-1)
    if mean.shape != var.shape or not (np.isfinite(mean).all() and np.isfinite(var).all()):
        raise ValueError(f"{name}: statistics moments must be finite and of equal length, "
                         f"got {mean.shape} and {var.shape}")
    var = np.where(var > 1e-12, var, 1.0)
    return layers.Normalization(mean=mean.tolist(), variance=var.tolist(), name=name)


def _check_statistics(mean, std, activation: str, traits: tuple | None = None) -> tuple:
    """Validated float64 ``(k,)`` target mean and SD; ``k = len(traits)`` when given, else any k >= 1."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if traits is not None:
        k = len(traits)
        if mean.shape != (k,) or std.shape != (k,):
            raise ValueError(f"target mean/std must have {k} values, one per trait of {traits} in that order, "
                             f"got {mean.size} and {std.size}")
    elif mean.size == 0 or mean.shape != std.shape:
        raise ValueError(f"target mean/std must have the same number (>= 1) of values, one per trait, "
                         f"got {mean.size} and {std.size}")
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
        mean, std: per-trait training statistics, ``k >= 1`` floats each (one per trait, in the
            model's trait order), std > 0 (and mean in (0, 1) for sigmoid). Stored in the
            layer config (not as weights), so they are never trained and reload with the model.
        activation: ``"linear"`` or ``"sigmoid"``.

    Input/output: float32 ``(batch, k)``.

    Raises:
        ValueError: for statistics that are empty or of unequal lengths, non-finite, std <= 0,
            or an unknown activation.
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
        targets: array ``(n, k)`` (the TRAINING split's targets, one column per trait), n >= 2,
            k >= 1.

    Returns:
        ``(mean, std)``: two float64 arrays ``(k,)``, in the column order of ``targets``.

    Raises:
        ValueError: not 2-D, fewer than 2 rows or no column, NaN/Inf, or a trait with SD 0.
    """
    arr = np.asarray(targets, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"targets shape {arr.shape}: expected (n >= 2, k >= 1), one column per trait")
    mean, std = arr.mean(axis=0), arr.std(axis=0)
    _check_statistics(mean, std, "linear")
    return mean, std


def build_model(audio_shape, video_shape, *, traits: Sequence[str], audio_branch: str = "conv2d",
                backbone: str = "vgg", depth: int = 3, width: int = 32, temporal: str = "max",
                temporal_units: int = 64, fusion_units: int = 256, dropout: float = 0.5, head: str = "linear",
                target_mean=None, target_std=None, statistics: StatisticsInit | None = None, weights=None,
                face_shape=None, face_depth: int = 3, face_width: int = 32,
                name: str = "personality_model") -> keras.Model:
    """Build the audio-visual personality model (uncompiled; see :func:`compile_model`).

    Args:
        audio_shape: one audio sample, ``(N, M, 1)`` MFCCs or ``(N, 1)`` mean MFCCs, float32.
        video_shape: one clip's frames ``(F, H, W, 3)``, float32 RGB in ``[0, 1]``.
        traits: the names of the predicted traits, in output-column order (required; e.g.
            ``fi_data.traits.TRAITS``); the model has ``len(traits)`` outputs. The names are
            only checked (:func:`fi_models.metrics.check_traits`), not stored in the model.
        audio_branch: one of ``fi_models.audio.AUDIO_BRANCHES`` (must fit ``audio_shape``),
            or :data:`STATS` (needs ``statistics``).
        backbone, depth, width, temporal, temporal_units, weights: the visual branch, see
            ``fi_models.visual.build_visual_branch``; ``backbone=STATS`` (needs
            ``statistics``) replaces it by the frame statistics (``temporal`` unused).
        fusion_units: width of the Dense ReLU layer after the concatenation.
        dropout: rate of the Dropout after that layer and of the audio branch's Dropout.
        head: ``"linear"`` or ``"sigmoid"`` output activation.
        target_mean, target_std: the TRAINING split's per-trait label mean and SD
            (``len(traits)`` values each, in ``traits`` order, e.g. from
            :func:`target_statistics`). Given together, they turn on the standardized-target
            remedy (module docstring, :class:`LabelScale`); with
            ``head="sigmoid"`` the output is ``sigmoid(logit(m) + z s / (m (1 - m)))``.
        statistics: a :class:`StatisticsInit`: the moments of the statistics branches and,
            optionally, the fixed ridge path (which needs ``target_mean``/``target_std``:
            the ridge predicts standardized scores; kernel ``(d_a + d_v, len(traits))``, or
            ``(d_a + d_v + grid², len(traits))`` with face appearance; ``appearance_from="face"``
            needs ``face_shape``).
        face_shape: one clip's face crops ``(F, S, S, 3)``, float32 RGB in ``[0, 1]``, or None
            (no face stream). Given, a third input ``face`` feeds its own visual branch, always
            a learned VGG frame encoder (``face_depth`` blocks, ``face_width`` filters in the
            first) pooled by the max over frames, and its features join the fusion: a face
            crop carries expression and gaze, which clip statistics cannot, so this branch has
            no statistics variant.
        name: the model's name.

    Returns:
        A ``keras.Model`` with inputs ``[keras.Input(audio_shape, name="audio"),
        keras.Input(video_shape, name="video")]`` (in that order, so ``model((a, v))``,
        datasets of ``((audio, video), y)`` and dicts keyed ``"audio"``/``"video"`` all
        work; with ``face_shape`` a third, ``"face"``) and one output ``(batch, len(traits))``
        float32 named ``OUTPUT_NAME``, column ``i`` predicting ``traits[i]``, in label units.

    Raises:
        ValueError: invalid ``traits`` (empty, a bare string, non-string or duplicate names);
            unknown ``head``; only one of ``target_mean``/``target_std`` given, or statistics
            that are invalid or not ``len(traits)`` long; a statistics branch or ridge path
            without what it needs (face appearance from the face stream without ``face_shape``),
            or a ridge kernel/bias not ``(d_a + d_v [+ grid²], len(traits))`` /
            ``(len(traits),)``; any error of the branch builders or of ``FaceAppearance``.
    """
    traits = check_traits(traits)
    n_outputs = len(traits)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    if (target_mean is None) != (target_std is None):
        raise ValueError("give both target_mean and target_std (the remedy needs both) or neither")
    if statistics is None and STATS in (audio_branch, backbone):
        raise ValueError(f"the {STATS!r} branches need the training split's statistics moments (statistics=...)")
    ridge = statistics is not None and statistics.ridge_kernel is not None
    if ridge and target_mean is None:
        raise ValueError("the ridge path predicts standardized targets: give target_mean and target_std")
    if target_mean is not None:
        _check_statistics(target_mean, target_std, head, traits)
    appearance = statistics.appearance_from if ridge else None
    if appearance == "face" and face_shape is None:
        raise ValueError("the ridge path reads face appearance from the face stream: give face_shape")
    audio_in = keras.Input(tuple(audio_shape), name="audio")
    video_in = keras.Input(tuple(video_shape), name="video")
    if statistics is not None:
        audio_stats = _standardizer(statistics.audio_mean, statistics.audio_var, "audio_statistics_standardized")(
            AudioStatistics(name="audio_statistics")(audio_in))
        video_stats = _standardizer(statistics.video_mean, statistics.video_var, "frame_statistics_standardized")(
            FrameStatistics(name="frame_statistics")(video_in))
    if audio_branch == STATS:
        audio_features = audio_stats
    else:
        audio_features = build_audio_branch(audio_branch, audio_shape, dropout=dropout)(audio_in)
    if backbone == STATS:
        video_features = video_stats
    else:
        video_features = build_visual_branch(video_shape, backbone=backbone, depth=depth, width=width,
                                             temporal=temporal, temporal_units=temporal_units,
                                             weights=weights)(video_in)
    inputs, streams = [audio_in, video_in], [audio_features, video_features]
    if face_shape is not None:
        face_in = keras.Input(tuple(face_shape), name="face")
        inputs.append(face_in)
        streams.append(build_visual_branch(face_shape, backbone="vgg", depth=face_depth, width=face_width,
                                           temporal="max", name="face_branch")(face_in))
    x = layers.Concatenate(name="fusion_concat")(streams)
    x = layers.Dense(fusion_units, activation="relu", name="fusion_dense")(x)
    x = layers.Dropout(dropout, name="fusion_dropout")(x)
    if target_mean is None:
        # dtype="float32": under a mixed_float16 policy the output (and so the loss) stays float32
        # (Keras mixed-precision guidance); under the default float32 policy nothing changes.
        outputs = layers.Dense(n_outputs, activation=head, name=OUTPUT_NAME, dtype="float32")(x)
        return keras.Model(inputs, outputs, name=name)
    # With the ridge path the learned part starts at 0: the untrained model is the ridge.
    z = layers.Dense(n_outputs, name="standardized_traits",
                     kernel_initializer="zeros" if ridge else "glorot_uniform")(x)
    ridge_layer = None
    if ridge:
        wide = [audio_stats, video_stats]
        if appearance is not None:
            source = face_in if appearance == "face" else video_in
            wide.append(_standardizer(statistics.appearance_mean, statistics.appearance_var,
                                      "face_appearance_standardized")(FaceAppearance(name="face_appearance")(source)))
        both = layers.Concatenate(name="statistics_concat")(wide)
        ridge_layer = layers.Dense(n_outputs, trainable=False, name="ridge_path")
        z = layers.Add(name="ridge_plus_residual")([ridge_layer(both), z])
    outputs = LabelScale(target_mean, target_std, activation=head, name=OUTPUT_NAME, dtype="float32")(z)
    model = keras.Model(inputs, outputs, name=name)
    if ridge_layer is not None:
        kernel = np.asarray(statistics.ridge_kernel, dtype=np.float32)
        bias = np.asarray(statistics.ridge_bias, dtype=np.float32).reshape(-1)
        expected = (ridge_layer.kernel.shape[0], n_outputs)
        if kernel.shape != expected or bias.shape != (n_outputs,):
            raise ValueError(f"ridge kernel {kernel.shape} / bias {bias.shape}: expected {expected} and "
                             f"({n_outputs},) for these statistics and the {n_outputs} traits {traits}")
        ridge_layer.set_weights([kernel, bias])
    return model


def compile_model(model: keras.Model, *, learning_rate: float = 1e-3, loss: str = "mae",
                  jit_compile: bool | str = "auto") -> keras.Model:
    """Compile ``model`` with Adam, a loss from ``fi_models.losses.LOSSES`` and the 1-MAE metric.

    Mixed precision: build the model under ``keras.mixed_precision.set_global_policy(
    "mixed_float16")`` (layers then compute in float16 with float32 weights; the output layer
    :data:`OUTPUT_NAME` is float32 whatever the policy, so the loss and metrics are float32).
    Keras then wraps the Adam optimizer in a ``keras.optimizers.LossScaleOptimizer`` (dynamic
    loss scaling) by itself, because the model's ``dtype_policy`` is ``mixed_float16``.

    Args:
        model: e.g. from :func:`build_model`.
        learning_rate: Adam's learning rate.
        loss: ``"mae"``, ``"mse"`` or ``"ccc_mae"`` (see ``fi_models.losses``).
        jit_compile: compile the train/test/predict steps with XLA (``Model.compile(
            jit_compile=True)``); False runs them as plain ``tf.function`` graphs; ``"auto"``
            (default) leaves the choice to Keras (XLA on a GPU when every layer supports it,
            never on a CPU-only machine). XLA compiles once per model (seconds to a minute),
            so it pays off only over many steps; ``benchmarks/bench_gpu.py --jit`` measures it.

    Returns:
        The same model, compiled; its metric logs as ``fi_models.metrics.ONE_MINUS_MAE``.

    Raises:
        ValueError: for an unknown loss, a learning rate <= 0, or a ``jit_compile`` that is
            not True, False or ``"auto"``.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=get_loss(loss),
                  metrics=[OneMinusMAE()], jit_compile=jit_compile)
    return model
