"""Every setting of a search run, in one dataclass that round-trips through ``config.json``.

The command line (``run_search.py``) fills a :class:`SearchConfig`; the search, the
retraining and the report read only this object. ``config.json`` in the run folder holds the
resolved settings, and a rerun in the same folder resumes the search only when the settings
that define the search (:data:`SEARCH_DEFINING`) are unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from fi_data.cache_format import write_json_atomic
from fi_data.errors import UserError
from fi_data.params import CROP_SIZE
from fi_data.settings import choice_problems, duration, positive_int, setting

@dataclasses.dataclass(frozen=True)
class TunerSpec:
    """One search algorithm: its name, what it is, and how :class:`SearchConfig` sets it up.

    Attributes:
        name: the ``--tuner`` value.
        oracle: the Keras Tuner oracle subclass in ``search.tuner`` that runs it (by name, so
            this module imports no Keras Tuner).
        tuner: the Keras Tuner ``Tuner`` subclass in ``search.tuner`` that trains its trials.
        settings: the oracle's keyword -> the :class:`SearchConfig` field that gives it (the
            objective, seed and failure policy are common to every oracle).
        help: a few words for ``--help``: Keras Tuner's class and what it does.
    """

    name: str
    oracle: str
    tuner: str
    settings: dict
    help: str


TUNER_SPECS = (
    TunerSpec("hyperband", "_HyperbandOracle", "_HyperbandTuner",
              {"max_epochs": "max_epochs", "factor": "factor", "hyperband_iterations": "hyperband_iterations"},
              "Hyperband, Li et al. 2018: many short trials, the best continued"),
    TunerSpec("random", "_RandomSearchOracle", "_PlainTuner", {"max_trials": "max_trials"},
              "RandomSearch: --max-trials trials of --max-epochs each"),
    TunerSpec("bayesian", "_BayesianOracle", "_PlainTuner", {"max_trials": "max_trials"},
              "BayesianOptimization: a Gaussian process picks each trial"),
)
"""The search algorithms, one row each; ``make_tuner``, the validation and ``--tuner`` read it."""

TUNERS = tuple(spec.name for spec in TUNER_SPECS)
"""Search algorithm names (the first is the default)."""


def tuner_spec(name: str) -> TunerSpec:
    """The :class:`TunerSpec` called ``name``.

    Raises:
        UserError: for a name not in :data:`TUNERS`.
    """
    for spec in TUNER_SPECS:
        if spec.name == name:
            return spec
    raise UserError(f"tuner {name!r} is not one of {TUNERS}")


JIT_CHOICES = ("auto", "on", "off")
"""``SearchConfig.jit_compile``: Keras' ``jit_compile="auto"``, True, False (``fi_models.fusion.compile_model``)."""

STRATEGIES = ("default", "mirrored")
"""How one trial trains: TensorFlow's default strategy (one device), or
``tf.distribute.MirroredStrategy`` (synchronous data parallelism over every GPU of a machine)."""

SEARCH_DEFINING = ("tuner", "max_epochs", "factor", "hyperband_iterations", "max_trials",
                   "executions_per_trial", "seed", "batch_sizes", "crop_size", "augment",
                   "audio_masking", "allow_resnet", "fixed_hyperparameters", "hyperparameter_choices",
                   "early_stopping_patience")
"""Settings that change what the tuner explores; resuming a run with other values is refused.

The time budget, the retraining settings, ``trials_per_process``, ``strategy``,
``worker_timeout_s``, ``overwrite`` and ``verbose`` may change between an interrupted run
and its resumption (or differ between the machines of a distributed search).
"""


@dataclasses.dataclass
class SearchConfig:
    """Settings of one search run (all of them; serialised to ``config.json``).

    Attributes:
        tuner: one of :data:`TUNERS`.
        max_epochs: most epochs one model trains (Hyperband's ``max_epochs``; the epochs of
            every RandomSearch / BayesianOptimization trial).
        factor: Hyperband's reduction factor (>= 2).
        hyperband_iterations: Hyperband iterations (>= 1).
        max_trials: trials of RandomSearch / BayesianOptimization (Hyperband ignores it).
        executions_per_trial: models trained per trial; the trial's score is their mean.
        seed: seeds the oracle, Keras (``keras.utils.set_random_seed`` before each trial and
            before retraining) and the input pipeline's shuffling and augmentation, so a run
            repeats exactly on a CPU (GPU kernels may differ in float rounding).
        time_budget_s: the search's deadline, in seconds from the start of this invocation's
            search (``None``: no budget): no trial starts after it, and a running trial stops
            at the end of its current epoch (recorded with the epochs it had).
        plan_epochs: with a time budget, let the search plan ``max_epochs`` (and
            ``hyperband_iterations`` / ``max_trials``) from measured epoch costs
            (``search.planner``) when a new search starts; False keeps the given values
            (a plan that cannot fit then gets a warning).
        batch_sizes: the batch sizes the search chooses from (the first is the default).
        eval_batch_size: batch size for predictions when scoring.
        crop_size: side of the square frame crop fed to the model, in pixels.
        augment: training-split augmentation (random crop, flip, brightness/contrast).
        audio_masking: time/frequency masking of MFCC-matrix audio while training.
        allow_resnet: offer ResNet50 as a visual backbone (slow on a CPU; opt-in).
        fixed_hyperparameters: hyperparameter name -> value held fixed in the search
            (``keras_tuner`` ``hp.Fixed``), e.g. ``{"backbone": "vgg", "vgg_depth": 2}``.
        hyperparameter_choices: hyperparameter name -> list of values the search chooses
            from instead of its default range (``hp.Choice``, the first value is the
            default), e.g. ``{"vgg_width": [8, 16]}`` to keep models small on a CPU.
        early_stopping_patience: epochs without a better validation objective before a trial,
            or the retraining, stops early.
        retrain_epochs: epochs of the retraining (``None``: 3 × ``max_epochs`` with early
            stopping, each model also stopping after half the time budget; else ``max_epochs``:
            ``search.train.retrain_epoch_cap``). With ``train_on_train_plus_val`` the best
            trial's best epoch count is used when known.
        train_on_train_plus_val: retrain on train + validation (no early stopping) instead of
            train with validation-based early stopping.
        retrain_from_checkpoint: the job's retraining continues from the best trial's best-epoch
            weights (``search.job.run_job``; with one seed on ``train``) instead of training
            the configuration again from scratch (off by default until measured:
            ``benchmarks/generalization.py --compare-scratch``).
        overwrite: delete an existing run folder's results and start over.
        max_consecutive_failures: stop the search with an error after this many failed
            trials in a row.
        trials_per_process: run the trials in fresh child processes of at most this many
            trials each, resuming the same Keras Tuner project (``None``: all in this
            process). Memory grows with every model trained in one TensorFlow process
            (about 30 MiB per small trial, ``benchmarks/bench_trial_memory.py``), so long
            searches need this to stay bounded. Distributed workers do the same.
        strategy: one of :data:`STRATEGIES`, passed to Keras Tuner as the
            ``distribution_strategy`` of every trial. With ``"mirrored"`` the tuned batch size
            is the global batch, split evenly over the replicas (GPUs).
        worker_timeout_s: distributed search (``search.distributed``): the chief gives a
            worker's trial to another worker after this many seconds without hearing from
            it. Workers send a heartbeat every quarter of it while they train.
        jit_compile: one of :data:`JIT_CHOICES`: XLA for every model's train/test/predict steps.
        mixed_precision: build every model under Keras' ``mixed_float16`` policy (outputs stay
            float32; ``fi_models.fusion.compile_model``).
        verbose: ``model.fit`` verbosity inside trials and the retraining (0, 1 or 2).
    """

    tuner: str = setting(TUNERS[0], choices=TUNERS,
                         help="Keras Tuner algorithm: " + "; ".join(f"{t.name} ({t.help})" for t in TUNER_SPECS))
    max_epochs: int = setting(30, parse=positive_int, help="most epochs one model trains")
    factor: int = setting(3, parse=positive_int, help="Hyperband reduction factor")
    hyperband_iterations: int = setting(1, parse=positive_int, help="Hyperband iterations")
    max_trials: int = setting(20, parse=positive_int, help="trials of random/bayesian search (Hyperband ignores it)")
    executions_per_trial: int = setting(1, parse=positive_int,
                                        help="models trained per trial; its score is their mean")
    seed: int = setting(0, help="seed of the oracle, Keras, shuffling and augmentation")
    time_budget_s: float | None = setting(None, help="the search's deadline in seconds")
    plan_epochs: bool = setting(False, help="plan max_epochs from measured epoch costs")
    batch_sizes: tuple = setting((32, 16, 64), help="batch sizes the search chooses from, the first being the default")
    eval_batch_size: int = setting(64, help="batch size of predictions when scoring")
    crop_size: int = setting(CROP_SIZE, parse=positive_int,
                             help="side of the square frame crop in pixels: random while training, center for "
                                  "validation/test")
    augment: bool = setting(True, help="no training augmentation (random crop becomes center crop; no flip or jitter)")
    audio_masking: bool = setting(False, help="time/frequency masking of MFCC/log-mel audio while training")
    allow_resnet: bool = setting(False, help="offer ResNet50 (random init) as a visual backbone: slow on a CPU")
    fixed_hyperparameters: dict = setting(default_factory=dict, help="hyperparameters held fixed")
    hyperparameter_choices: dict = setting(default_factory=dict, help="hyperparameters searched over given values")
    early_stopping_patience: int = setting(
        5, flag="--patience", parse=int,
        help="epochs without a better validation 1-MAE before a trial or the retraining stops")
    retrain_epochs: int | None = setting(
        None, parse=positive_int,
        help="epochs of the retraining, with early stopping on validation",
        default_text="3 x --max-epochs, each model stopping after half the time budget when there is one")
    train_on_train_plus_val: bool = setting(
        False, flag="--train-on-train-val",
        help="retrain on train + validation (no early stopping; the best trial's epoch count)")
    retrain_from_checkpoint: bool = setting(
        False, help="continue the retraining from the best trial's best checkpoint instead of training the best "
                    "configuration again from scratch (not yet measured on held-out variants, so off by default; "
                    "with --retrain-seeds above 1 or --train-on-train-val every model starts from scratch, and so "
                    "does the retrain command)")
    overwrite: bool = setting(False, help="delete the run folder's results and start over")
    max_consecutive_failures: int = setting(3, parse=positive_int,
                                            help="stop the search after this many failed trials in a row")
    trials_per_process: int | None = setting(10, help="trials per fresh child process (None: all in this one)")
    strategy: str = setting(STRATEGIES[0], choices=STRATEGIES,
                            help="train each trial with TensorFlow's default strategy (one device) or "
                                 "tf.distribute.MirroredStrategy over every GPU of this machine; the batch size is "
                                 "then the global batch")
    worker_timeout_s: float = setting(
        120.0, flag="--worker-timeout", parse=duration, metavar="DURATION", default_text="120s",
        help="chief: give a worker's trial to another worker after this long without a heartbeat from it, e.g. "
             "when it was killed")
    jit_compile: str = setting(
        "auto", flag="--jit", choices=JIT_CHOICES,
        help="XLA compilation of the training and prediction steps: auto (Keras decides: on a GPU when every layer "
             "supports it, never on a CPU), on, or off")
    mixed_precision: bool = setting(
        False, help="train in mixed precision (Keras' mixed_float16 policy: float16 compute, float32 weights and "
                    "outputs, dynamic loss scaling): faster on GPUs with tensor cores, slower on a CPU")
    verbose: int = setting(1, parse=int, choices=(0, 1, 2),
                           help="Keras training output: 0 silent, 1 progress bar, 2 one line per epoch and "
                                "TensorFlow's start-up lines")

    def __post_init__(self):
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        self.fixed_hyperparameters = dict(self.fixed_hyperparameters)
        self.hyperparameter_choices = {k: list(v) for k, v in dict(self.hyperparameter_choices).items()}
        problems = choice_problems(self)
        if not self.worker_timeout_s > 0:
            problems.append(f"worker_timeout_s must be > 0 seconds, got {self.worker_timeout_s!r}")
        for name in ("max_epochs", "hyperband_iterations", "max_trials", "executions_per_trial",
                     "eval_batch_size", "crop_size", "max_consecutive_failures", "trials_per_process"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.factor < 2:
            problems.append(f"factor must be >= 2, got {self.factor!r}")
        if self.early_stopping_patience < 0:
            problems.append(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            problems.append(f"batch_sizes must be positive integers, got {self.batch_sizes!r}")
        if self.time_budget_s is not None and not (0 < self.time_budget_s < float("inf")):
            problems.append(f"time_budget_s must be > 0 seconds or None, got {self.time_budget_s!r}")
        if self.retrain_epochs is not None and self.retrain_epochs < 1:
            problems.append(f"retrain_epochs must be >= 1 or None, got {self.retrain_epochs!r}")
        if not problems:  # the values need a valid crop size
            # deferred on purpose: the hypermodel imports Keras (and this module), the parser must not
            from search.hypermodel import check_hyperparameter_values
            problems += check_hyperparameter_values(self.fixed_hyperparameters, self.hyperparameter_choices,
                                                    crop_size=self.crop_size, allow_resnet=self.allow_resnet)
        if problems:
            raise UserError("invalid search settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        """Build from :meth:`to_dict` output.

        Raises:
            ValueError: for unknown keys (naming them) or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown search settings {unknown}; known: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | os.PathLike, **extra) -> None:
        """Write ``{"settings": to_dict(), **extra}`` to ``path`` atomically."""
        write_json_atomic(path, {"settings": self.to_dict(), **extra})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchConfig":
        """Read a ``config.json`` written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not valid JSON or holds invalid settings (naming it).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data["settings"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: not a readable search config.json ({e})") from e

    def search_differences(self, other: "SearchConfig") -> dict:
        """The :data:`SEARCH_DEFINING` settings that differ: ``{name: (self's, other's)}``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in SEARCH_DEFINING if mine[k] != theirs[k]}
