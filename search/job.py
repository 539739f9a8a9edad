"""Orchestration: the run -> retrain -> report sequence, and the choice of how trials run.

The top layer of ``search`` (it imports the engine, both runners, the retraining and the
report; nothing in ``search`` imports it, except the chief's start in ``search.entry``):

- :func:`run_search`: the search of a run folder, run in this process (``search.tuner``),
  in chunks of fresh child processes (``search.chunked``) or as the chief of a distributed
  search (``search.distributed``), then recorded (``search.tuner.record_search``).
- :func:`retrain_and_report`: retrain and score a configuration
  (``search.train.retrain_and_evaluate``), give a retraining-only folder what a run folder
  has (:func:`make_run_folder`), write ``report.md`` (``search.report.write_report``).
- :func:`run_job`: the whole job on a cache: :func:`run_search`, then
  :func:`retrain_and_report` of its best configuration.

``run_search.py``'s ``run``, ``search`` and ``retrain`` commands call these.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fi_data.cache_format import FeatureCache
from fi_data.errors import UserError
from search.checkpoints import trial_checkpoint
from search.chunked import search_in_processes
from search.config import SearchConfig
from search.distributed import Role, serve_search
from search.hypermodel import PersonalityHyperModel
from search.report import write_report
from search.runs import BestHyperparameters, RunPaths, cache_identity, prepare_run_dir
from search.train import retrain_and_evaluate
from search.tuner import (SearchResult, make_hypermodel, make_tuner, plan_for_budget, record_search,
                          search_in_process, smoke_check)


def run_search(cache: FeatureCache, run_dir, config: SearchConfig, *,
               hypermodel: PersonalityHyperModel | None = None) -> SearchResult:
    """Run (or resume) the hyperparameter search of ``config`` on ``cache`` into ``run_dir``.

    The dispatch between the three ways to run the trials: in this process
    (``search.tuner.search_in_process``), in fresh child processes (``search.chunked``), or
    served to distributed workers (``search.distributed``). Writes ``config.json``, the Keras
    Tuner project, ``tensorboard/trials``, ``trials.csv`` and ``best_hyperparameters.json``. Reads only the cache's train and validation splits.
    With ``config.trials_per_process`` (and no ``hypermodel`` given) the trials run in fresh
    child processes of at most that many trials each (``search.chunked``), because memory
    grows with every model trained in one process; otherwise they run in this process.
    As the chief of a distributed search (``KERASTUNER_TUNER_ID=chief``, see
    ``search.distributed``) it serves the oracle to the workers instead, until the search
    ends, and then returns the same result.

    Args:
        cache: the opened feature cache.
        run_dir: the run folder (created if missing; resumed if it holds this search).
        config: all settings.
        hypermodel: overrides ``search.tuner.make_hypermodel`` (tests, custom spaces); runs in-process.

    Returns:
        A ``search.tuner.SearchResult``.

    Raises:
        ValueError: invalid or conflicting settings (see ``prepare_run_dir``), or the smoke
            check's missing objective.
        SearchFailedError: too many consecutive failed trials, or no trial completed.
        RuntimeError: a child process died (e.g. killed for memory); rerun to resume.
        OSError: the chief cannot listen on its address.
    """
    start = time.monotonic()
    deadline = None if config.time_budget_s is None else time.time() + config.time_budget_s
    role = Role.current()
    if role.kind == "worker":
        raise UserError(f"KERASTUNER_TUNER_ID={role.worker_id!r} makes this process a distributed worker; "
                         "workers run search.distributed.run_worker, not run_search")
    in_process = hypermodel is not None or not config.trials_per_process
    hypermodel = hypermodel or make_hypermodel(cache, config)
    config, plan = plan_for_budget(hypermodel, run_dir, config)
    paths = prepare_run_dir(run_dir, config, cache)
    if role.kind == "chief":
        tuner, stopped_by = serve_search(hypermodel, paths, config)
    elif not in_process:
        smoke_check(hypermodel)  # a clear error here rather than in a child
        stopped_by = search_in_processes(cache, paths, config, deadline=deadline)
        tuner = make_tuner(hypermodel, paths, config)  # reloads the project's results
    else:
        tuner, stopped_by = search_in_process(hypermodel, paths, config, deadline=deadline)
    elapsed = time.monotonic() - start
    return record_search(tuner, paths, config, stopped_by, elapsed, plan)


def make_run_folder(run_dir, source, config: SearchConfig, best: BestHyperparameters, cache: FeatureCache) -> None:
    """Give a retraining's output folder what a run folder has (``config.json``,
    ``best_hyperparameters.json``, the ranked configurations), so that ``retrain --from`` and
    ``predict --run`` accept it. Nothing is rewritten when it retrained in place.

    Args:
        run_dir: the retraining's folder; source: the run folder or JSON file it came from.
        config, best, cache: what it retrained with.
    """
    run_dir, source = Path(run_dir), Path(source)
    out = RunPaths(run_dir)
    if source.is_dir() and source.resolve() == run_dir.resolve():
        return
    config.save(out.config, cache=cache_identity(cache), retrained_from=str(source))
    best.save(out.best_hyperparameters)
    ranked = RunPaths(source).top_hyperparameters if source.is_dir() else None
    if ranked is not None and ranked.is_file():
        shutil.copyfile(ranked, out.top_hyperparameters)


def best_trial_weights(run_dir, best: BestHyperparameters) -> Path | None:
    """The best trial's best-epoch weights in ``run_dir``'s Keras Tuner project
    (``search.checkpoints.trial_checkpoint``; the search keeps them), or None, said on stdout,
    when the trial left none (e.g. written on a distributed worker's own disk)."""
    if best.trial_id is None:
        return None
    path = trial_checkpoint(RunPaths(run_dir).project_dir, best.trial_id)
    if path.is_file():
        return path
    print(f"[retrain] trial {best.trial_id} left no checkpoint ({path}): training from scratch", flush=True)
    return None


def retrain_and_report(cache: FeatureCache, run_dir, best, config: SearchConfig, *, source=None,
                       **variation) -> dict:
    """Retrain and score ``best`` into ``run_dir``, then write its report.

    Args:
        cache, run_dir, best, config: as ``search.train.retrain_and_evaluate``.
        source: where ``best`` came from when ``run_dir`` is not the searched run folder (the
            ``retrain`` command): :func:`make_run_folder` runs before the report. None: the
            search's own folder.
        **variation: ``retrain_seeds``, ``ensemble`` and ``initial_weights`` of ``retrain_and_evaluate``.
            Without ``initial_weights``, the search's own retraining (``source`` None) with
            ``config.retrain_from_checkpoint`` continues from the best trial's
            weights (:func:`best_trial_weights`) rather than repeating the epochs the search
            already trained; a ``retrain`` of another folder starts from scratch.

    Returns:
        The ``metrics.json`` content.
    """
    if source is None and config.retrain_from_checkpoint and "initial_weights" not in variation:
        variation["initial_weights"] = best_trial_weights(run_dir, best)
    metrics = retrain_and_evaluate(cache, run_dir, best, config, **variation)
    if source is not None:
        make_run_folder(run_dir, source, config, best, cache)
    write_report(run_dir)
    return metrics


def run_job(cache: FeatureCache, run_dir, config: SearchConfig) -> dict:
    """The whole job: :func:`run_search`, then :func:`retrain_and_report` of its best hyperparameters.

    Returns:
        The ``metrics.json`` content (see ``search.train.retrain_and_evaluate``).

    Raises:
        The errors of those functions.
    """
    result = run_search(cache, run_dir, config)
    return retrain_and_report(cache, run_dir, result.best, result.config)
