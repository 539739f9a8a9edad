"""search: HyperModel, tuner set-up, retraining, scoring, reports and prediction.

Modules (import them directly; this package imports nothing, so ``import search`` is cheap):

- ``search.config``: :class:`~search.config.SearchConfig`, every setting, saved as ``config.json``.
- ``search.hypermodel``: :class:`~search.hypermodel.PersonalityHyperModel`, the Keras Tuner
  search space over ``fi_models``, trained from the feature cache.
- ``search.tuner``: ``run_search(cache, run_dir, config) -> SearchResult``: Hyperband /
  RandomSearch / BayesianOptimization with smoke check, failed trials, time budget, resume.
- ``search.chunked``: the same search in fresh processes of a bounded number of trials.
- ``search.train``: ``retrain_and_evaluate(cache, run_dir, hyperparameters, config) -> dict``
  (``metrics.json``), the only code that opens the test split.
- ``search.report``: ``write_report(run_dir)``: ``report.md`` and ``plots/*.png``.
- ``search.job``: ``run_job(cache, run_dir, config)``: search, retrain, score, report.
- ``search.runs``: the run-folder layout, ``load_run``, ``load_best_hyperparameters``.
- ``search.trials``, ``search.tensorboard_logs``, ``search.memory``: ``trials.csv``,
  TensorBoard HParams, per-trial peak memory.
"""
