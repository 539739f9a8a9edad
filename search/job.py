"""The whole job on a cache: search (or resume), retrain the best, score, report."""

from __future__ import annotations

from fi_data.cache_format import FeatureCache
from search.config import SearchConfig
from search.report import write_report
from search.train import retrain_and_evaluate
from search.tuner import run_search


def run_job(cache: FeatureCache, run_dir, config: SearchConfig) -> dict:
    """Run :func:`search.tuner.run_search`, then :func:`search.train.retrain_and_evaluate` on
    its best hyperparameters, then :func:`search.report.write_report`.

    Returns:
        The ``metrics.json`` content (see ``retrain_and_evaluate``).

    Raises:
        The errors of those three functions.
    """
    result = run_search(cache, run_dir, config)
    metrics = retrain_and_evaluate(cache, run_dir, result.best, result.config)
    write_report(run_dir)
    return metrics
