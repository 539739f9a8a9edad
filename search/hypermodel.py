"""The Keras Tuner ``HyperModel`` over the ``fi_models`` family, trained on the feature cache.

``build(hp)`` declares every hyperparameter first and then calls
``fi_models.fusion.build_model`` / ``compile_model`` (no model code lives here);
``fit(hp, model, *args, **kwargs)`` builds the ``tf.data`` datasets of the cache's train and
validation splits with the tuned batch size and forwards ``**kwargs`` (the tuner's
callbacks, epochs) to ``model.fit``. The test split is never opened here.

The search space (:data:`HYPERPARAMETERS`). The defaults (the first trial) are the choices
that learn fastest from little data: statistics branches with the ridge path, which start at
the clip-statistics ridge baseline and need no convolution; the assignment's reference
branches (conv2d / BLSTM / Conv1D audio, VGG + max / LSTM frames) stay in the space::

    audio_branch         stats (clip statistics, ``fi_models.statistics``; default), blstm |
                         conv1d | conv2d (MFCC matrix (N, M, 1)), or mean_dense (mean MFCCs
                         (N, 1)): only the branches that fit the cached audio
    backbone             stats (frame statistics; default) | vgg (| resnet50 with allow_resnet)
      vgg_depth          1..min(5, log2(crop))   only when backbone == vgg   (default 3)
      vgg_width          16 | 32 | 64            only when backbone == vgg   (default 32)
      temporal           max | lstm | gru        only when backbone != stats (default max)
        temporal_units   32 | 64 | 128           only when temporal != max  (default 64)
    face_vgg_depth       1..min(5, log2(crop))   only with a face stream     (default 3)
    face_vgg_width       16 | 32 | 64            only with a face stream     (default 32)
    fusion_units         64 | 128 | 256 | 512    dense width after fusion    (default 256)
    dropout              0.0 .. 0.6, step 0.1                                (default 0.5)
    head                 linear | sigmoid                                    (default linear)
    standardize_targets  True | False: the regression-to-the-mean remedy: the network learns
                         targets standardized with the TRAINING split's per-trait mean/SD
                         (``fi_models.fusion.LabelScale``)                   (default True)
      ridge_path         True | False, only with standardized targets: a fixed linear path
                         from the clip statistics (and, with face crops, the face's
                         16x16 appearance), the closed-form ridge of the training
                         split (``search.baselines.statistics_init``); the rest of the
                         network starts at 0 and learns a residual    (default True)
    loss                 mae | mse | ccc_mae (``fi_models.losses``)          (default mae)
    learning_rate        1e-4 .. 1e-2, log scale (Adam)                      (default 1e-3)
    batch_size           SearchConfig.batch_sizes                            (default first)
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from fi_data.cache_format import FeatureCache
from fi_data.errors import UserError
from fi_data.params import CROP_SIZE
from fi_data.pipeline import make_dataset
from fi_data.settings import default_of
from fi_data.traits import TRAITS
from search.baselines import statistics_init
from search.config import SearchConfig
from fi_models.audio import AUDIO_BRANCHES, compatible_audio_branches
from fi_models.fusion import HEADS, STATS, build_model, compile_model, target_statistics
from fi_models.losses import LOSSES
from fi_models.visual import BACKBONES, TEMPORAL_CHOICES

# Hyperband continues a trial from its predecessor's checkpoint: Keras restores the weights
# into a freshly compiled model whose optimizer has no slots yet, and warns once per trial
# that the optimizer's saved variables are not loaded. That is Keras Tuner's normal
# behaviour (the continued trial starts a new Adam state), so the warning is silenced.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning)
# Keras Tuner passes shuffle=True to model.fit, which Keras ignores (with a warning on every
# trial) for a tf.data.Dataset; the datasets here shuffle themselves (fi_data.pipeline).
warnings.filterwarnings("ignore", message="`shuffle=True` was passed", category=UserWarning)

HYPERPARAMETERS = ("audio_branch", "backbone", "vgg_depth", "vgg_width", "temporal", "temporal_units",
                   "fusion_units", "dropout", "head", "standardize_targets", "ridge_path", "loss",
                   "learning_rate", "batch_size")
"""Names of every hyperparameter the HyperModel declares on a cache without face crops (keys of ``fixed``)."""

FACE_HYPERPARAMETERS = ("face_vgg_depth", "face_vgg_width")
"""Declared too when the cache has face crops (preprocessing frames "both"): the face branch."""

KNOWN_HYPERPARAMETERS = HYPERPARAMETERS + FACE_HYPERPARAMETERS
"""Every name ``--fix`` / ``--choices`` and a saved configuration may use."""

DEFAULT_BATCH_SIZES = default_of(SearchConfig, "batch_sizes")
"""The search's default batch sizes (``SearchConfig.batch_sizes``), the first being the default."""


def _one_of(values):
    return (lambda v: v in values), f"one of {list(values)}"


def _int_in(low, high=None):
    text = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low
            and (high is None or v <= high)), text


def _float_in(low, high, *, low_open=False, high_open=False):
    def ok(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return ok, f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def value_rules(crop_size: int = CROP_SIZE, allow_resnet: bool = False) -> dict:
    """What each hyperparameter may be set to with ``--fix`` / ``--choices``.

    Wider than the default search ranges (``--choices vgg_width=8,16`` is fine), but the
    values ``fi_models.fusion.build_model`` can build: the right type and a usable range.

    Returns:
        dict name -> ``(predicate, description)`` for every name in :data:`KNOWN_HYPERPARAMETERS`.
    """
    return {
        "audio_branch": _one_of((STATS, *AUDIO_BRANCHES)),
        "backbone": _one_of((STATS, *(BACKBONES if allow_resnet else ("vgg",)))),
        "vgg_depth": _int_in(1, max(1, min(5, int(math.log2(crop_size))))),
        "vgg_width": _int_in(1),
        "face_vgg_depth": _int_in(1, max(1, min(5, int(math.log2(crop_size))))), "face_vgg_width": _int_in(1), "temporal": _one_of(TEMPORAL_CHOICES), "temporal_units": _int_in(1),
        "fusion_units": _int_in(1), "dropout": _float_in(0.0, 1.0, high_open=True), "head": _one_of(HEADS),
        "standardize_targets": _one_of((True, False)), "ridge_path": _one_of((True, False)),
        "loss": _one_of(LOSSES), "learning_rate": _float_in(0.0, 1.0, low_open=True), "batch_size": _int_in(1),
    }


def check_hyperparameter_values(fixed: dict, choices: dict, *, crop_size: int = CROP_SIZE,
                                allow_resnet: bool = False) -> list:
    """Every problem with ``--fix`` / ``--choices`` values, found before any data is read.

    Args:
        fixed: name -> value; choices: name -> list of values (as ``SearchConfig``).
        crop_size: the frame crop (it bounds ``vgg_depth``); allow_resnet: whether
            ``backbone=resnet50`` is offered.

    Returns:
        list of one-line problems, each naming the flag, the hyperparameter and the value
        (empty when all is well). Unknown names, names both fixed and given choices, empty
        choices, and values outside :func:`value_rules` are problems.
    """
    rules = value_rules(crop_size, allow_resnet)
    problems = []
    for flag, entries in (("--fix", {k: [v] for k, v in fixed.items()}), ("--choices", choices)):
        for name, values in entries.items():
            if name not in rules:
                problems.append(f"{flag} {name}: unknown hyperparameter; known: {', '.join(KNOWN_HYPERPARAMETERS)}")
                continue
            if not values:
                problems.append(f"{flag} {name}: no values given")
            ok, text = rules[name]
            bad = [v for v in values if not ok(v)]
            if bad:
                problems.append(f"{flag} {name}={','.join(map(str, bad))}: expected {text}"
                                + (" (give --allow-resnet to offer resnet50)" if "resnet50" in bad else ""))
    for name in sorted(set(fixed) & set(choices)):
        problems.append(f"{name}: both --fix and --choices; give one")
    return problems


DEFAULT_AUDIO_BRANCH = STATS
"""Default audio branch: the clip statistics (they fit every cached audio shape)."""


class PersonalityHyperModel(kt.HyperModel):
    """Search space over ``fi_models.fusion.build_model``, trained from a :class:`FeatureCache`.

    Args:
        cache: the opened feature cache. Only its ``train`` and ``validation`` splits are
            read (``train`` also for the target mean/SD of the remedy).
        batch_sizes: batch sizes to choose from; the first is the default.
        crop_size: side of the square frame crop, in pixels (the model's video input is
            ``(F, crop_size, crop_size, 3)``).
        allow_resnet: offer ResNet50 (random init) as the visual backbone.
        fixed: hyperparameter name -> value, declared with ``hp.Fixed`` instead of a range.
        choices: hyperparameter name -> list of values, declared with ``hp.Choice`` (first
            value the default) instead of the range below, e.g. ``{"vgg_width": [8, 16]}``.
        augment, audio_masking: training-split augmentation, see ``fi_data.pipeline``.
        seed: seed of the input pipeline's shuffling and augmentation.
        verbose: ``model.fit`` verbosity.
        jit_compile: ``"auto"``, ``"on"`` or ``"off"``: XLA for every model (``compile_model``).
        mixed_precision: build every model under Keras' ``mixed_float16`` policy.

    Raises:
        ValueError: a ``fixed``/``choices`` problem of :func:`check_hyperparameter_values`, or
            no audio branch of ``fi_models`` fits the cached audio shape (naming what was expected).
    """

    def __init__(self, cache: FeatureCache, *, batch_sizes=DEFAULT_BATCH_SIZES, crop_size: int = CROP_SIZE,
                 allow_resnet: bool = False, fixed: dict | None = None, choices: dict | None = None,
                 augment: bool = True,
                 audio_masking: bool = False, seed: int = 0, verbose: int = 0, jit_compile: str = "auto",
                 mixed_precision: bool = False):
        super().__init__(name="personality_hypermodel")
        self.cache = cache
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.crop_size = int(crop_size)
        self.allow_resnet = bool(allow_resnet)
        self.fixed = dict(fixed or {})
        self.choices = {k: list(v) for k, v in dict(choices or {}).items()}
        problems = check_hyperparameter_values(self.fixed, self.choices, crop_size=self.crop_size,
                                               allow_resnet=self.allow_resnet)
        if problems:
            raise UserError("; ".join(problems))
        self.augment = augment
        self.audio_masking = audio_masking
        self.seed = seed
        self.verbose = verbose
        self.jit_compile = {"auto": "auto", "on": True, "off": False}[jit_compile]
        self.mixed_precision = bool(mixed_precision)
        self.audio_shape = tuple(cache.audio_shape)
        self.video_shape = (int(cache.frame_shape[0]), self.crop_size, self.crop_size, 3)
        # a cache with face crops (frames "both") gives the model a face stream of the same crop
        self.face_shape = None if cache.face_shape is None else (int(cache.face_shape[0]), self.crop_size,
                                                                 self.crop_size, 3)
        self.audio_branches = compatible_audio_branches(self.audio_shape)
        if not self.audio_branches:
            raise UserError(f"{cache.path}: cached audio of shape {self.audio_shape} fits no audio branch; "
                             "expected (N, M, 1) MFCCs or (N, 1) mean MFCCs")
        self.audio_branches = (STATS, *self.audio_branches)
        self.max_vgg_depth = max(1, min(5, int(math.log2(self.crop_size))))
        self._target_stats = None
        self._statistics = None

    @property
    def target_stats(self) -> tuple:
        """``(mean, std)`` float64 ``(5,)`` of the TRAINING split's targets (read once)."""
        if self._target_stats is None:
            self._target_stats = target_statistics(np.asarray(self.cache.split("train").targets))
        return self._target_stats

    @property
    def appearance_from(self) -> str | None:
        """Where the ridge path reads face appearance (``fi_models.statistics.FaceAppearance``):
        ``"face"`` for a cache of frames "both", ``"video"`` for frames "face" (its frames are the
        face crops), ``None`` for whole frames."""
        return {"both": "face", "face": "video"}.get(self.cache.params.get("frames", "whole"))

    @property
    def statistics(self):
        """The ``fi_models.fusion.StatisticsInit`` of the TRAINING split (computed once, seconds;
        with face crops its ridge path also reads their appearance, :attr:`appearance_from`)."""
        if self._statistics is None:
            mean, std = self.target_stats
            self._statistics = statistics_init(self.cache.split("train"), mean, std, crop_size=self.crop_size,
                                               appearance_from=self.appearance_from)
        return self._statistics

    def _declare(self, hp: kt.HyperParameters, name: str, declare):
        """``hp.Fixed(name, value)`` when ``name`` is fixed, ``hp.Choice`` over the given
        values when it has ``choices``, else ``declare()`` (its default range)."""
        if name in self.fixed:
            return hp.Fixed(name, self.fixed[name])
        if name in self.choices:
            return hp.Choice(name, self.choices[name], default=self.choices[name][0])
        return declare()

    def declare(self, hp: kt.HyperParameters) -> dict:
        """Declare every hyperparameter on ``hp`` and return the active values.

        Returns:
            dict name -> value; conditional hyperparameters that are inactive (e.g.
            ``vgg_depth`` for ResNet50) are absent.
        """
        d = self._declare
        branches = self.audio_branches
        default_branch = DEFAULT_AUDIO_BRANCH if DEFAULT_AUDIO_BRANCH in branches else branches[0]
        backbones = (STATS, *(BACKBONES if self.allow_resnet else ("vgg",)))
        v = {
            "audio_branch": d(hp, "audio_branch", lambda: hp.Choice("audio_branch", list(branches),
                                                                    default=default_branch)),
            "backbone": d(hp, "backbone", lambda: hp.Choice("backbone", list(backbones), default=STATS)),
        }
        with hp.conditional_scope("backbone", ["vgg"]):
            v["vgg_depth"] = d(hp, "vgg_depth", lambda: hp.Int("vgg_depth", 1, self.max_vgg_depth,
                                                               default=min(3, self.max_vgg_depth)))
            v["vgg_width"] = d(hp, "vgg_width", lambda: hp.Choice("vgg_width", [16, 32, 64], default=32))
        with hp.conditional_scope("backbone", [b for b in BACKBONES]):
            v["temporal"] = d(hp, "temporal", lambda: hp.Choice("temporal", list(TEMPORAL_CHOICES), default="max"))
            with hp.conditional_scope("temporal", [t for t in TEMPORAL_CHOICES if t != "max"]):
                v["temporal_units"] = d(hp, "temporal_units",
                                        lambda: hp.Choice("temporal_units", [32, 64, 128], default=64))
        if self.face_shape is not None:
            v["face_vgg_depth"] = d(hp, "face_vgg_depth", lambda: hp.Int("face_vgg_depth", 1, self.max_vgg_depth,
                                                                         default=min(3, self.max_vgg_depth)))
            v["face_vgg_width"] = d(hp, "face_vgg_width", lambda: hp.Choice("face_vgg_width", [16, 32, 64],
                                                                            default=32))
        v["fusion_units"] = d(hp, "fusion_units", lambda: hp.Choice("fusion_units", [64, 128, 256, 512],
                                                                    default=256))
        v["dropout"] = d(hp, "dropout", lambda: hp.Float("dropout", 0.0, 0.6, step=0.1, default=0.5))
        v["head"] = d(hp, "head", lambda: hp.Choice("head", list(HEADS), default="linear"))
        v["standardize_targets"] = d(hp, "standardize_targets",
                                     lambda: hp.Boolean("standardize_targets", default=True))
        with hp.conditional_scope("standardize_targets", [True]):
            v["ridge_path"] = d(hp, "ridge_path", lambda: hp.Boolean("ridge_path", default=True))
        v["loss"] = d(hp, "loss", lambda: hp.Choice("loss", list(LOSSES), default="mae"))
        v["learning_rate"] = d(hp, "learning_rate", lambda: hp.Float("learning_rate", 1e-4, 1e-2,
                                                                     sampling="log", default=1e-3))
        v["batch_size"] = d(hp, "batch_size", lambda: hp.Choice("batch_size", list(self.batch_sizes),
                                                                default=self.batch_sizes[0]))
        return {k: val for k, val in v.items() if val is not None}

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        """Keras Tuner's hook: register the whole space (conditional entries included) on ``hp``."""
        self.declare(hp)

    def build(self, hp: kt.HyperParameters):
        """Declare all hyperparameters, then build and compile the ``fi_models`` model.

        Returns:
            A compiled ``keras.Model``: inputs audio ``(b, *audio_shape)`` and video
            ``(b, F, crop, crop, 3)`` float32 in [0, 1] (and face, the same, for a cache with
            face crops); output ``(b, 5)`` in ``TRAITS`` order.
        """
        v = self.declare(hp)
        # every model of this process is built under the same policy (Keras keeps it globally)
        keras.config.set_dtype_policy("mixed_float16" if self.mixed_precision else "float32")
        visual = {"depth": v["vgg_depth"], "width": v["vgg_width"]} if v["backbone"] == "vgg" else {}
        for key in ("temporal", "temporal_units"):
            if key in v:
                visual[key] = v[key]
        mean, std = self.target_stats if v["standardize_targets"] else (None, None)
        statistics = None
        if STATS in (v["audio_branch"], v["backbone"]) or v.get("ridge_path"):
            statistics = self.statistics
            if not v.get("ridge_path"):
                statistics = dataclasses.replace(statistics, ridge_kernel=None, ridge_bias=None)
        if self.face_shape is not None:
            visual.update(face_shape=self.face_shape, face_depth=v["face_vgg_depth"], face_width=v["face_vgg_width"])
        model = build_model(self.audio_shape, self.video_shape, traits=TRAITS, audio_branch=v["audio_branch"],
                            backbone=v["backbone"], fusion_units=v["fusion_units"], dropout=v["dropout"],
                            head=v["head"], target_mean=mean, target_std=std, statistics=statistics, **visual)
        return compile_model(model, learning_rate=v["learning_rate"], loss=v["loss"], jit_compile=self.jit_compile)

    def datasets(self, batch_size: int, *, train_splits=("train",), validation: bool = True) -> tuple:
        """The training dataset (of one or more splits) and the validation dataset (or None).

        Several training splits (retraining on train + validation) are mixed batch by batch
        with ``tf.data.Dataset.sample_from_datasets`` in proportion to their sizes, so no
        split is ever concatenated in memory.

        Returns:
            ``(train_ds, val_ds)``: ``tf.data.Dataset`` s of ``((audio, video), y)``.
        """
        parts = [make_dataset(self.cache.split(s), training=True, batch_size=batch_size, seed=self.seed + i,
                              crop_size=self.crop_size, augment=self.augment, audio_masking=self.audio_masking)
                 for i, s in enumerate(train_splits)]
        if len(parts) == 1:
            train = parts[0]
        else:
            sizes = np.array([len(self.cache.split(s)) for s in train_splits], dtype=np.float64)
            train = tf.data.Dataset.sample_from_datasets(parts, weights=(sizes / sizes.sum()).tolist(),
                                                         seed=self.seed, stop_on_empty_dataset=False)
            # Every batch of every part comes out once; telling Keras the count spares it a
            # first epoch of unknown length (and its "ran out of data" warning).
            batches = int(sum(np.ceil(sizes / batch_size)))
            train = train.apply(tf.data.experimental.assert_cardinality(batches))
        val = make_dataset(self.cache.split("validation"), training=False, batch_size=batch_size,
                           crop_size=self.crop_size) if validation else None
        return train, val

    def fit(self, hp: kt.HyperParameters, model, *args, **kwargs):
        """Train ``model`` on the cache's train split, validating on its validation split.

        The datasets come from the cache, so no positional data arguments are accepted;
        ``**kwargs`` (``callbacks``, ``epochs``, ``initial_epoch``, ``steps_per_epoch``, ...)
        go to ``model.fit``.

        Returns:
            The ``keras.callbacks.History`` of ``model.fit``.

        Raises:
            TypeError: if positional data arguments are given.
        """
        if args:
            raise TypeError("PersonalityHyperModel.fit reads its data from the cache; "
                            f"got {len(args)} unexpected positional argument(s)")
        train, val = self.datasets(int(hp.get("batch_size")))
        kwargs.setdefault("verbose", self.verbose)
        kwargs.setdefault("shuffle", False)  # the training dataset reshuffles itself every epoch
        return model.fit(train, validation_data=val, **kwargs)
