"""The search engine: Keras Tuner set-up, smoke check, failed trials, time budget, resume.

The lowest layer of the search: it runs trials in this process (:func:`search_in_process`)
and imports no runner. The runners import it: ``search.chunked`` (trials in fresh child
processes) and ``search.distributed`` (chief / workers); ``search.job`` picks one of the
three (``search.job.run_search``) and runs the search, the retraining and the report.

Keras Tuner does most of the work; this module adds what it lacks, each at one of its hooks:

- Hyperband (default), RandomSearch or BayesianOptimization on
  ``Objective("val_one_minus_mae", "max")``, seeded (oracle seed; ``keras.utils.
  set_random_seed`` before each trial from the run seed and the trial id, so a resumed or
  re-run trial trains the same way).
- Before searching, :func:`smoke_check` fits the default model on one batch and checks
  that the objective is in the logs.
- Failed trials: Keras Tuner already records a trial that raises as ``FAILED`` with its
  traceback and goes on; ``TerminateOnNaN(raise_error=True)`` turns a NaN loss into such a
  failure. Its own ``max_consecutive_failed_trials`` raises *before* saving the last trial
  (it would be lost), so it is turned off and :class:`SearchFailedError` is raised from
  ``on_trial_end`` after the trial is saved.
- A time budget is a deadline (wall-clock ``time.time()``, shared by every process of the
  search): no new trial starts after it (:class:`TimeBudgetSpent` from ``pre_create_trial``),
  a running trial stops at the end of its current epoch (:class:`DeadlineStop`) and is
  recorded with the epochs it had (``stopped_at_deadline`` in ``trials.csv``); the search's
  best so far is still returned. Before a new search with a budget, ``search.planner``
  measures epoch costs and plans ``max_epochs`` so that a full Hyperband bracket fits.
- Resume: Keras Tuner reloads ``oracle.json`` and the trials and re-runs the trial that was
  running when the process died (``Oracle.reload`` queues it for retry). The oracle's files
  are written atomically here, so a kill during a save cannot corrupt them; a trial whose
  file was saved but that the oracle never recorded is marked FAILED with a reason.
- Per trial: wall time, peak memory (``search.memory``), epochs trained go to
  ``fi_trial.json``; ``trials.csv`` is rewritten (``search.trials.rewrite_trials_csv``) and
  one line printed after every trial. :func:`record_search` writes a finished search's
  results (``search_summary.json``, ``best_hyperparameters.json``, ...); :class:`StopReason`
  names why a search returned.
- Memory grows with every model trained in one process, so by default the trials run in
  fresh processes of ``trials_per_process`` trials (``search.chunked``), each resuming the
  project like a rerun after a crash.
- The space is declared once without building models (``declare_hyperparameters``),
  instead of Keras Tuner's one model build per conditional scope.
- Distributed tuning (``search.distributed``): with Keras Tuner's ``KERASTUNER_*``
  environment set, ``search.job.run_search`` serves the oracle as the chief, and workers
  run the trials (``search.distributed.run_worker``); a worker's tuner sends the chief a
  heartbeat while it trains (:func:`worker_heartbeat`). ``SearchConfig.strategy`` picks the
  ``distribution_strategy`` each trial trains under (:func:`make_strategy`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import shutil
import threading
import time
import zlib
from pathlib import Path

import grpc
import keras
import keras_tuner as kt
import pandas as pd
import tensorflow as tf
from keras_tuner.engine.trial import TrialStatus
from keras_tuner.src.engine import conditions

from fi_data.cache_format import FeatureCache, write_json_atomic
from fi_data.errors import UserError
from fi_models.metrics import ONE_MINUS_MAE
from search import memory, planner
from search.checkpoints import checkpoint_bytes, prune_checkpoints
from search.config import STRATEGIES, SearchConfig, tuner_spec
from search.hypermodel import PersonalityHyperModel
from search.runs import (PROJECT_NAME, BestHyperparameters, RunPaths, save_top_hyperparameters,
                         tensorboard_command)
from search.tensorboard_logs import configure_trial_tensorboard, write_experiment
from search.trials import best_epoch, failure_summary, rewrite_trials_csv, trial_info_path

# keras-tuner 1.4.8 left a debug print in conditions.Parent.to_proto (its only print): every
# trial sent over gRPC (a distributed chief's and workers' tuners) would print the first value
# of each conditional scope ("vgg", "lstm").
conditions.print = lambda *args, **kwargs: None

OBJECTIVE = kt.Objective("val_" + ONE_MINUS_MAE, direction="max")
"""The search objective: validation 1-MAE (``fi_models.metrics.ONE_MINUS_MAE``), maximised."""


class StopReason(enum.StrEnum):
    """Why a search returned (a ``str``: ``StopReason.TIME_BUDGET == "time_budget"``, and so it
    is written to ``search_summary.json`` and printed)."""

    SEARCH_FINISHED = "search_finished"
    """The oracle had no more trials."""
    TIME_BUDGET = "time_budget"
    """The time budget was spent."""
    TRIAL_LIMIT = "trial_limit"
    """This process started its maximum number of trials (more remain; see ``search.chunked``)."""


IDLE_WAIT_S = 1.0
"""Seconds a tuner waits before asking again when the oracle answered IDLE (a distributed
Hyperband round waiting for other workers' results); Keras Tuner itself asks in a busy loop."""


class TimeBudgetSpent(Exception):
    """Raised by the tuner before a new trial once the time budget is spent."""


class DeadlineStop(keras.callbacks.Callback):
    """Stop training at the end of the epoch during which the wall clock passed ``deadline``.

    Args:
        deadline: ``time.time()`` seconds (a wall clock, so that the chunked child
            processes of one search share it).
    """

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = float(deadline)

    def on_epoch_end(self, epoch, logs=None):
        if time.time() >= self.deadline:
            self.model.stop_training = True


class TrialLimitReached(Exception):
    """Raised by the tuner before a new trial once this process started its share of trials."""


class SearchFailedError(RuntimeError):
    """Too many consecutive failed trials, or no trial completed."""


class _AtomicOracleFiles:
    """Oracle mixin: write ``oracle.json`` and each ``trial.json`` atomically (temp + rename).

    Keras Tuner writes them in place (``keras_tuner.src.utils.save_json``); a kill -9 in the
    middle would leave a truncated file that makes the project unreloadable.
    """

    def save(self):
        write_json_atomic(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        write_json_atomic(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())


class _DefaultsFirst:
    """Oracle mixin: the search's first trial is the space's defaults, the later ones as the oracle draws them.

    Keras Tuner's oracles draw every trial at random (Hyperband's first round, random search,
    Bayesian optimization's initial points). The HyperModel's defaults are the configuration
    that learns fastest from little data and starts at the clip-statistics ridge
    (``search.hypermodel``); trying it first means even a search stopped by its budget after
    one trial has a model as good as the ridge on validation to retrain. The random draws that
    follow are those the oracle would have made (its seed state is not advanced).
    """

    def _random_values(self):
        if self.trials:  # only the search's very first trial (populate_space runs before it is stored)
            return super()._random_values()
        hps = kt.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if hps.is_active(hp):  # only active hyperparameters get values, as Keras Tuner does
                hps.values[hp.name] = hp.default
        return hps.values


class _HyperbandOracle(_AtomicOracleFiles, _DefaultsFirst, kt.oracles.HyperbandOracle):
    pass


class _RandomSearchOracle(_AtomicOracleFiles, _DefaultsFirst, kt.oracles.RandomSearchOracle):
    pass


class _BayesianOracle(_AtomicOracleFiles, _DefaultsFirst, kt.oracles.BayesianOptimizationOracle):
    pass


class _SearchTunerMixin:
    """Tuner mixin: seeding, bookkeeping and stopping rules (see the module docstring)."""

    def __init__(self, oracle, hypermodel, *, fi_config: SearchConfig, fi_paths: RunPaths,
                 max_new_trials: int | None = None, deadline: float | None = None, **kwargs):
        self.fi_config = fi_config
        self.fi_paths = fi_paths
        self.max_new_trials = max_new_trials
        self.deadline = deadline
        self._trials_started = 0
        self._trial_start = {}
        self._epochs_trained = {}
        self._awaiting_trial = False
        self.running_trial_id = None  # the trial being trained now (read by a worker's heartbeat thread)
        # kt.Hyperband.__init__ only builds a HyperbandOracle; ours is built by make_tuner,
        # so the plain Tuner constructor is called for every tuner kind.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, directory=str(fi_paths.root),
                          project_name=PROJECT_NAME, overwrite=False, **kwargs)
        self.oracle.verbose = 0  # Keras Tuner's multi-line display; on_trial_end prints one line.
        self._settle_orphans()

    def _get_tuner_fname(self):
        # Keras Tuner names the tuner's state file after KERASTUNER_TUNER_ID ("tuner0" alone,
        # "chief" in a distributed search) and reloads the oracle only when that file exists.
        # The chief and a single process share one name, so a search started in either mode
        # resumes in the other; each worker keeps its own file.
        name = self.tuner_id if self._is_worker() else "tuner0"
        return os.path.join(str(self.project_dir), f"{name}.json")

    def _populate_initial_space(self):
        # Keras Tuner builds one model per conditional scope to discover the space (a
        # documented override point). The HyperModel's declare_hyperparameters registers
        # every hyperparameter, conditional ones included, without building a model.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _settle_orphans(self):
        """Mark trials saved as RUNNING that the reloaded oracle neither runs nor retries."""
        if self._is_worker():  # distributed tuning: the chief's oracle owns the trials
            return
        pending = set(self.oracle._retry_queue) | {t.trial_id for t in self.oracle.ongoing_trials.values()}
        for trial in self.oracle.trials.values():
            if trial.status == TrialStatus.RUNNING and trial.trial_id not in pending:
                trial.status = TrialStatus.FAILED
                epochs = len(trial.metrics.get_history(OBJECTIVE.name)) if trial.metrics.exists(OBJECTIVE.name) else 0
                if epochs:  # the oracle saved each finished epoch's score
                    best = trial.metrics.get_best_value(OBJECTIVE.name)
                    trial.message = (f"InterruptedError: the process stopped after {epochs} finished epoch(s) of "
                                     f"this trial (best {OBJECTIVE.name} {best:.4f}); it is not counted")
                    info = trial_info_path(self.fi_paths.project_dir, trial.trial_id)
                    if not info.is_file():
                        write_json_atomic(info, {"epochs_trained": epochs, "interrupted": True})
                else:
                    trial.message = ("InterruptedError: the process stopped while this trial was being created; "
                                     "it never trained")
                self.oracle._save_trial(trial)

    def time_left(self) -> float | None:
        """Seconds left before the deadline (None: no budget)."""
        if self.deadline is None:
            if self.fi_config.time_budget_s is None:
                return None
            return self.fi_config.time_budget_s
        return self.deadline - time.time()

    def on_search_begin(self):
        super().on_search_begin()
        if self.deadline is None and self.fi_config.time_budget_s is not None:
            self.deadline = time.time() + self.fi_config.time_budget_s

    def pre_create_trial(self):
        super().pre_create_trial()
        if self._awaiting_trial:  # the last request got no trial (IDLE): do not ask in a busy loop
            time.sleep(IDLE_WAIT_S)
        self._awaiting_trial = True
        left = self.time_left()
        # The first trial always starts (stopping after its first epoch when the budget is
        # already spent), so that even a tiny budget leaves a model to retrain.
        if left is not None and left <= 0 and self._any_completed():
            raise TimeBudgetSpent("time budget spent")
        if self.max_new_trials is not None and self._trials_started >= self.max_new_trials:
            raise TrialLimitReached(f"{self._trials_started} trials started in this process")

    def _any_completed(self) -> bool:
        if self._is_worker():  # the chief decides; a worker only stops at its deadline
            return True
        return any(t.status == TrialStatus.COMPLETED for t in self.oracle.trials.values())

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._awaiting_trial = False
        self.running_trial_id = trial.trial_id
        # Logs of this trial id can only come from an attempt that was killed: start clean.
        shutil.rmtree(self.fi_paths.trials_tensorboard / str(trial.trial_id), ignore_errors=True)
        keras.utils.set_random_seed(zlib.crc32(f"{self.fi_config.seed}/{trial.trial_id}".encode()) % 2**31)
        memory.reset_peak()
        self._trial_start[trial.trial_id] = time.monotonic()
        self._trials_started += 1

    def run_trial(self, trial, *args, **kwargs):
        if self.deadline is not None:
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), DeadlineStop(self.deadline)]
        histories = super().run_trial(trial, *args, **kwargs)
        values = trial.hyperparameters.values
        initial = int(values.get("tuner/initial_epoch", 0))
        trained = initial + max(len(h.epoch) for h in histories)
        planned = int(values.get("tuner/epochs", kwargs.get("epochs") or trained))
        self._epochs_trained[trial.trial_id] = (
            trained, bool(self.deadline is not None and time.time() >= self.deadline and trained < planned))
        return histories

    def on_trial_end(self, trial):
        self.running_trial_id = None
        trained, at_deadline = self._epochs_trained.pop(trial.trial_id, (None, False))
        info = {"wall_time_s": round(time.monotonic() - self._trial_start.pop(trial.trial_id), 3),
                "peak_rss_mb": round(memory.peak_rss_mb(), 1),
                "peak_gpu_mb": memory.peak_gpu_mb(),
                "epochs_trained": trained, "stopped_at_deadline": at_deadline}
        # Written before the oracle records the end, so that a distributed chief finds it.
        write_json_atomic(trial_info_path(self.fi_paths.project_dir, trial.trial_id), info)
        super().on_trial_end(trial)  # oracle.end_trial (status, score) and save
        trial = self.oracle.get_trial(trial.trial_id)  # the oracle's copy holds the score
        print(self.trial_line(trial, info), flush=True)
        if not self._is_worker():  # a distributed worker's oracle is a client without the trials
            prune_checkpoints(self)  # only those a later Hyperband round can load stay
            rewrite_trials_csv(self.fi_paths.trials_csv, self.oracle.trials.values(), self.fi_paths.project_dir)
            self.check_consecutive_failures()

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        # Keras Tuner's own, plus the best epoch's score and rounded values in the HParams tab.
        configure_trial_tensorboard(callbacks, trial,
                                    lambda log_dir: self._get_tensorboard_dir(log_dir, trial.trial_id, execution))

    def trial_line(self, trial, info: dict) -> str:
        """The one line printed when ``trial`` ends; ``info`` is its ``fi_trial.json`` (may be empty)."""
        best = self.best_trial()
        score = f"{OBJECTIVE.name} {trial.score:.4f}" if trial.score is not None else failure_summary(trial.message)
        parts = [f"[search] trial {trial.trial_id} {trial.status}: {score}",
                 f"best {best.score:.4f} (trial {best.trial_id})" if best else "best: none yet"]
        if info:
            parts.append(f"{info['epochs_trained'] or 0} epochs"
                         + (" (stopped at the deadline)" if info.get("stopped_at_deadline") else "")
                         + f", {info['wall_time_s']:.1f} s, peak {info['peak_rss_mb']:.0f} MiB")
        left = self.time_left()
        if left is not None:
            parts.append(f"budget: {max(left, 0.0) / 60:.1f} min left")
        return " | ".join(parts)

    def best_trial(self):
        """The completed trial with the best score, or None."""
        best = self.oracle.get_best_trials(1)
        return best[0] if best and best[0].status == TrialStatus.COMPLETED else None

    def check_consecutive_failures(self):
        """Raise :class:`SearchFailedError` once the last ``max_consecutive_failures`` ended trials failed."""
        limit = self.fi_config.max_consecutive_failures
        ended = [self.oracle.trials[i] for i in self.oracle.end_order]
        streak = 0
        for t in reversed(ended):
            if t.status != TrialStatus.FAILED:
                break
            streak += 1
        if streak >= limit:
            raise SearchFailedError(
                f"{streak} trials failed in a row (limit {limit}); the last one failed with: "
                f"{failure_summary(ended[-1].message)}. Every trial is listed in {self.fi_paths.trials_csv}; "
                f"full tracebacks are in {self.fi_paths.project_dir}/trial_<id>/trial.json.")

    def save(self):
        # BaseTuner.save writes the tuner's JSON in place; write it atomically like the oracle's.
        if not self._is_worker():
            self.oracle.save()
        write_json_atomic(self._get_tuner_fname(), self.get_state())


class _HyperbandTuner(_SearchTunerMixin, kt.Hyperband):
    pass


class _PlainTuner(_SearchTunerMixin, kt.Tuner):
    pass


def make_hypermodel(cache: FeatureCache, config: SearchConfig) -> PersonalityHyperModel:
    """The :class:`PersonalityHyperModel` for ``cache`` with ``config``'s space settings."""
    return PersonalityHyperModel(cache, batch_sizes=config.batch_sizes, crop_size=config.crop_size,
                                 allow_resnet=config.allow_resnet, fixed=config.fixed_hyperparameters,
                                 choices=config.hyperparameter_choices, augment=config.augment, audio_masking=config.audio_masking,
                                 seed=config.seed, verbose=config.verbose, jit_compile=config.jit_compile,
                                 mixed_precision=config.mixed_precision)


_TUNER_CLASSES = {cls.__name__: cls for cls in (_HyperbandOracle, _RandomSearchOracle, _BayesianOracle,
                                                 _HyperbandTuner, _PlainTuner)}
"""The classes ``search.config.TUNER_SPECS`` names (by name, so the config imports no Keras Tuner)."""


def make_tuner(hypermodel: kt.HyperModel, paths: RunPaths, config: SearchConfig, *,
               max_new_trials: int | None = None, deadline: float | None = None) -> kt.Tuner:
    """Create (or reload, when ``paths`` holds its project) the configured Keras Tuner tuner.

    Args:
        hypermodel, paths, config: the space, the run folder, the settings.
        max_new_trials: ``search`` starts at most this many trials (None: no limit).
        deadline: ``time.time()`` after which no trial starts and the running one stops at
            the end of its epoch (None: ``config.time_budget_s`` from the search's start).

    Returns:
        A ``keras_tuner.Tuner`` (Hyperband, RandomSearch or BayesianOptimization oracle)
        whose project is ``paths.project_dir``, training under ``config.strategy``. In a
        distributed worker (``KERASTUNER_*`` set) its oracle is Keras Tuner's client of the chief's.
    """
    spec = tuner_spec(config.tuner)
    settings = {keyword: getattr(config, field) for keyword, field in spec.settings.items()}
    oracle = _TUNER_CLASSES[spec.oracle](objective=OBJECTIVE, seed=config.seed, max_consecutive_failed_trials=None,
                                         **settings)
    return _TUNER_CLASSES[spec.tuner](oracle, hypermodel, fi_config=config, fi_paths=paths, max_new_trials=max_new_trials, deadline=deadline,
               executions_per_trial=config.executions_per_trial,
               distribution_strategy=make_strategy(config.strategy))


def make_strategy(name: str):
    """The ``tf.distribute.Strategy`` of ``SearchConfig.strategy`` (None: TensorFlow's default).

    ``"mirrored"``: ``tf.distribute.MirroredStrategy()``, synchronous data parallelism over
    every GPU TensorFlow sees (the CPU when there is none: one replica). The batch size is
    the global batch, split over the replicas.

    Raises:
        ValueError: for a name not in ``search.config.STRATEGIES``.
    """
    if name not in STRATEGIES:
        raise UserError(f"strategy {name!r} is not one of {STRATEGIES}")
    if name == "default":
        return None
    return tf.distribute.MirroredStrategy()


@contextlib.contextmanager
def worker_heartbeat(tuner, interval_s: float):
    """While the body runs, tell the chief every ``interval_s`` seconds that this worker's
    trial is alive (a ``GetTrial`` request from a daemon thread; the chief's side is
    ``search.distributed.ChiefServicer``). Nothing outside a distributed worker."""
    if not tuner._is_worker():
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.wait(interval_s):
            trial_id = tuner.running_trial_id
            if trial_id is not None:
                try:
                    tuner.oracle.get_trial(trial_id)
                except grpc.RpcError:
                    pass  # the chief is away; the tuner's own requests wait for it

    thread = threading.Thread(target=beat, name="kerastuner-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def smoke_check(hypermodel: PersonalityHyperModel, objective: str = OBJECTIVE.name) -> None:
    """Fit the default model on one training batch, validate on one batch, find ``objective``.

    Catches a wrong objective name (or a model that does not train at all) in seconds
    instead of after a failed search.

    Raises:
        ValueError: if ``objective`` is not among the keys the fit logs (the message lists
            the keys that are there).
        RuntimeError: if building or fitting the default model raises (chained).
    """
    hp = kt.HyperParameters()
    try:
        model = hypermodel.build(hp)
        model.run_eagerly = True  # one eager step: no graph to trace, so the check costs little
        history = hypermodel.fit(hp, model, epochs=1, steps_per_epoch=1, validation_steps=1, verbose=0)
    except Exception as e:
        raise RuntimeError(f"smoke check: the default model failed to train on one batch: {e}") from e
    finally:
        keras.backend.clear_session()
    if objective not in history.history:
        raise ValueError(f"smoke check: the objective {objective!r} is not in the training logs; "
                         f"the logs hold {sorted(history.history)}")


def search_callbacks(paths: RunPaths, config: SearchConfig) -> list:
    """Callbacks for every trial (Keras Tuner deep-copies them per execution)."""
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(paths.trials_tensorboard), write_graph=False),
                 keras.callbacks.TerminateOnNaN(raise_error=True)]
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=OBJECTIVE.name, mode="max",
                                                       patience=config.early_stopping_patience))
    return callbacks


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What ``search.job.run_search`` returns (made by :func:`record_search`).

    Attributes:
        paths: the run folder's :class:`RunPaths`.
        best: the best completed trial's :class:`BestHyperparameters`.
        trials: the ``trials.csv`` table.
        stopped_by: ``StopReason.SEARCH_FINISHED`` or ``StopReason.TIME_BUDGET``.
        elapsed_s: wall time of this invocation's search, in seconds.
        config: the settings the search ran with (the planned ``max_epochs`` included).
    """

    paths: RunPaths
    best: BestHyperparameters
    trials: pd.DataFrame
    stopped_by: StopReason
    elapsed_s: float
    config: SearchConfig | None = None


def search_in_process(hypermodel: PersonalityHyperModel, paths: RunPaths, config: SearchConfig, *,
                      max_new_trials: int | None = None, deadline: float | None = None) -> tuple:
    """Run (or resume) the search in this process: smoke check, tuner, ``tuner.search``.

    ``trials.csv`` is written even when the search stops with an error (by the process that
    holds the oracle: not by a distributed worker, whose heartbeat runs during ``search``).

    Args:
        hypermodel, paths, config: as prepared by ``search.job.run_search``.
        max_new_trials: start at most this many trials here (None: no limit).
        deadline: as :func:`make_tuner`.

    Returns:
        ``(tuner, stopped_by)``, ``stopped_by`` a :class:`StopReason`.

    Raises:
        ValueError / RuntimeError: from :func:`smoke_check`.
        SearchFailedError: too many consecutive failed trials.
    """
    keras.utils.set_random_seed(config.seed)
    smoke_check(hypermodel)
    tuner = make_tuner(hypermodel, paths, config, max_new_trials=max_new_trials, deadline=deadline)
    write_experiment(paths.trials_tensorboard, tuner.oracle.get_space())
    print(f"[search] {config.tuner} search in {paths.root}; watch it with: "
          + tensorboard_command(paths.tensorboard), flush=True)
    stopped_by = StopReason.SEARCH_FINISHED
    try:
        with worker_heartbeat(tuner, config.worker_timeout_s / 4):
            tuner.search(epochs=config.max_epochs, callbacks=search_callbacks(paths, config))
    except TimeBudgetSpent as e:
        stopped_by = StopReason.TIME_BUDGET
        print(f"[search] {e}: no new trials", flush=True)
    except TrialLimitReached:
        stopped_by = StopReason.TRIAL_LIMIT
    finally:
        if not tuner._is_worker():
            rewrite_trials_csv(paths.trials_csv, tuner.oracle.trials.values(), paths.project_dir)
            print(f"[search] checkpoints kept for later Hyperband rounds and the best trial: "
                  f"{checkpoint_bytes(paths.project_dir) / 2**20:.0f} MiB in {paths.project_dir}", flush=True)
    return tuner, stopped_by


def plan_for_budget(hypermodel: PersonalityHyperModel, run_dir, config: SearchConfig) -> tuple:
    """Plan the epochs of a new search with a time budget (``search.planner``), print the plan.

    With ``config.plan_epochs`` the planned ``max_epochs`` / ``hyperband_iterations`` /
    ``max_trials`` replace the config's; without it the config is kept and a warning is
    printed when its first bracket cannot fit. A resumed search keeps the settings in its
    ``config.json`` (they define the search) and is not measured again.

    Returns:
        ``(config, plan)``: the config to run, and the ``search.planner.Plan`` (None when
        there is no budget or the search resumes).
    """
    if config.time_budget_s is None:
        return config, None
    paths = RunPaths(Path(run_dir))
    if paths.config.is_file() and not config.overwrite:
        if config.plan_epochs:
            old = SearchConfig.load(paths.config)
            config = dataclasses.replace(config, max_epochs=old.max_epochs, max_trials=old.max_trials,
                                         hyperband_iterations=old.hyperband_iterations)
            print(f"[search] resuming with the planned max_epochs {config.max_epochs} of {paths.config}", flush=True)
        return config, None
    print("[search] measuring the cost of an epoch (the default model and 3 random ones) to plan the budget ...",
          flush=True)
    cost = planner.measure_epoch_cost(hypermodel, seed=config.seed)
    plan = planner.plan_search(cost, config.time_budget_s, tuner=config.tuner, factor=config.factor,
                       max_epochs=None if config.plan_epochs else config.max_epochs,
                       max_trials=None if config.plan_epochs else config.max_trials)
    print(f"[search] {plan.line()}", flush=True)
    if config.plan_epochs:
        config = dataclasses.replace(config, max_epochs=plan.max_epochs, max_trials=plan.max_trials or config.max_trials,
                                     hyperband_iterations=plan.hyperband_iterations)
    elif not plan.fits:
        print(f"[search] WARNING: with --max-epochs {config.max_epochs} the first bracket needs about "
              f"{plan.seconds / 60:.1f} min, more than the {config.time_budget_s / 60:.1f}-min budget allows; "
              "trials will be cut at the deadline. Leave --max-epochs out to let the search plan it.", flush=True)
    return config, plan


TOP_SAVED = 5
"""How many distinct configurations ``top_hyperparameters.json`` ranks (for ``--ensemble-top``)."""


def top_configurations(trials, k: int = TOP_SAVED) -> list:
    """The ``k`` best distinct configurations among completed trials, best first.

    A Hyperband continuation repeats its parent's values (plus ``tuner/*`` bookkeeping), so
    trials are compared on their values without ``tuner/*``; each configuration keeps its
    best-scoring trial.

    Args:
        trials: Keras Tuner ``Trial`` objects (``oracle.trials.values()``).

    Returns:
        list of :class:`search.runs.BestHyperparameters` (score, trial id, best epoch).
    """
    done = sorted((t for t in trials if t.status == TrialStatus.COMPLETED and t.score is not None),
                  key=lambda t: -float(t.score))
    out, seen = [], set()
    for t in done:
        values = {k_: v for k_, v in t.hyperparameters.values.items() if not k_.startswith("tuner/")}
        key = json.dumps(values, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        out.append(BestHyperparameters(values=values, score=float(t.score), trial_id=str(t.trial_id),
                                       best_epoch=best_epoch(t), objective=OBJECTIVE.name))
        if len(out) == k:
            break
    return out


def record_search(tuner: kt.Tuner, paths: RunPaths, config: SearchConfig, stopped_by: StopReason,
                  elapsed_s: float, plan=None) -> SearchResult:
    """Write a finished search's results into its run folder and return them.

    Writes ``search_summary.json`` (why and when it stopped, the plan), ``trials.csv``,
    ``best_hyperparameters.json`` and ``top_hyperparameters.json`` from ``tuner``'s oracle
    (which holds every trial: this process's, the chunked children's, or the workers').

    Args:
        tuner: the tuner that ran the search, or one that reloaded its project.
        paths, config: the run folder and the settings the search ran with.
        stopped_by: why it returned; elapsed_s: its wall time.
        plan: the ``search.planner.Plan`` of :func:`plan_for_budget`, or None.

    Raises:
        SearchFailedError: no trial completed.
    """
    write_json_atomic(paths.search_summary, {
        "stopped_by": stopped_by, "wall_s": round(elapsed_s, 1), "time_budget_s": config.time_budget_s,
        "over_budget_s": None if config.time_budget_s is None else round(elapsed_s - config.time_budget_s, 1),
        "max_epochs": config.max_epochs, "hyperband_iterations": config.hyperband_iterations,
        "plan": None if plan is None else {**dataclasses.asdict(plan), "line": plan.line()}})
    table = rewrite_trials_csv(paths.trials_csv, tuner.oracle.trials.values(), paths.project_dir)
    best_trial = tuner.best_trial()
    if best_trial is None:
        raise SearchFailedError(f"no trial completed; see {paths.trials_csv}")
    values = {k: v for k, v in best_trial.hyperparameters.values.items() if not k.startswith("tuner/")}
    best = BestHyperparameters(values=values, score=float(best_trial.score), trial_id=str(best_trial.trial_id),
                               best_epoch=best_epoch(best_trial), objective=OBJECTIVE.name)
    best.save(paths.best_hyperparameters)
    save_top_hyperparameters(top_configurations(tuner.oracle.trials.values()), paths.top_hyperparameters)
    return SearchResult(paths, best, table, stopped_by, elapsed_s, config)
