"""search: HyperModel, tuner set-up, retraining, scoring, reports and prediction.

Modules (import them directly; this package imports nothing, so ``import search`` is cheap):

- ``search.config``: :class:`~search.config.SearchConfig`, every setting, saved as ``config.json``.
- ``search.hypermodel``: :class:`~search.hypermodel.PersonalityHyperModel`, the Keras Tuner
  search space over ``fi_models``, trained from the feature cache.
- ``search.tuner`` (the engine, imports no runner): Hyperband / RandomSearch /
  BayesianOptimization set-up with smoke check, failed trials, time budget, resume; trials
  in this process (``search_in_process``); ``StopReason``; ``record_search -> SearchResult``.
- ``search.chunked`` (a runner): the same search in fresh processes of a bounded number of trials.
- ``search.distributed`` (a runner): Keras Tuner's chief / workers, with liveness and stopping rules.
- ``search.entry``: the one way a search process starts (``python -m search.entry
  {trials,chief,worker} ...``): quiet TensorFlow import, then the runner.
- ``search.train``: ``retrain_and_evaluate(cache, run_dir, hyperparameters, config) -> dict``
  (``metrics.json``), the only code that opens the test split.
- ``search.report``: ``write_report(run_dir)``: ``report.md`` and ``plots/*.png``.
- ``search.job`` (orchestration, the top layer): ``run_search(cache, run_dir, config) ->
  SearchResult`` (in process, chunked or distributed), ``retrain_and_report``, ``run_job``:
  search, retrain, score, report.
- ``search.runs``: the run-folder layout, ``load_run``, ``load_best_hyperparameters``.
- ``search.trials``, ``search.tensorboard_logs``, ``search.memory``: ``trials.csv``,
  TensorBoard HParams, per-trial peak memory.
"""
