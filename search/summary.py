"""The end-of-run summary printed by ``run_search.py``: test scores beside the mean baseline.

Every number comes from the ``metrics.json`` content (:func:`search.train.retrain_and_evaluate`),
so the printout and the file always agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fi_data.traits import TRAITS
from search.runs import RunPaths, tensorboard_command
from search.trials import format_value
from search.verdict import variation_lines, verdict_lines


def scores_table(metrics: dict, split: str = "test") -> pd.DataFrame:
    """One split's scores as a table: rows ``TRAITS`` + ``"mean"``; columns 1-MAE, R² and
    prediction spread and CCC of the model, 1-MAE of the mean predictor (the training
    split's mean labels; its R² is about 0 by construction) and of the identity lookup
    (``search.evaluation``), and 1-MAE and R² of the clip-statistics ridge (``search.baselines``).

    Raises:
        KeyError: if ``metrics`` has no scores for ``split``.
    """
    scores = metrics["scores"][split]
    rows = {name: scores[name] for name in (*TRAITS, "mean")}
    table = pd.DataFrame.from_dict(rows, orient="index")
    columns = {"one_minus_mae": "1-MAE", "baseline_one_minus_mae": "mean 1-MAE",
               "ridge_one_minus_mae": "ridge 1-MAE", "identity_one_minus_mae": "identity 1-MAE",
               "r2": "R²", "ridge_r2": "ridge R²", "ccc": "CCC", "spread": "spread"}
    columns = {k: v for k, v in columns.items() if k in table}  # runs older than the ridge baseline
    return table[list(columns)].rename(columns=columns).astype(float)


def format_summary(metrics: dict, run_dir: str | os.PathLike) -> str:
    """The text printed at the end of a run.

    Args:
        metrics: ``metrics.json`` content.
        run_dir: the run folder (for the paths listed).

    Returns:
        Multi-line text: the verdict (``search.verdict``), test 1-MAE and R² per trait and on
        average beside the mean predictor and the ridge, validation mean 1-MAE, the best hyperparameters, and where the outputs are.
    """
    paths = RunPaths(Path(run_dir))
    test = scores_table(metrics, "test")
    val_mean = metrics["scores"]["validation"]["mean"]
    n_test = metrics["scores"]["test"].get("n")
    lines = [
        "",
        *verdict_lines(metrics),
        "",
        f"Test split ({n_test} clips): the retrained best model beside the mean predictor, the "
        "clip-statistics ridge and the identity lookup",
        test.to_string(float_format=lambda v: f"{v:.4f}"),
        "",
        f"Validation mean 1-MAE {val_mean['one_minus_mae']:.4f} (mean predictor "
        f"{val_mean['baseline_one_minus_mae']:.4f}"
        + (f", ridge {val_mean['ridge_one_minus_mae']:.4f}" if "ridge_one_minus_mae" in val_mean else "")
        + "); spread = SD(predictions) / SD(labels), "
        "near 0 means regression to the mean.",
        *variation_lines(metrics),
        "Best hyperparameters: " + ", ".join(f"{k}={format_value(v)}" for k, v in sorted(metrics["hyperparameters"].items())),
        "",
        f"Run folder:   {paths.root}",
        f"Report:       {paths.report}",
        f"Plots:        {paths.plots}",
        f"Metrics:      {paths.metrics}",
        f"Model:        {paths.best_model} (inputs described in {paths.preprocessing.name})",
        f"TensorBoard:  {tensorboard_command(paths.tensorboard)}",
    ]
    return "\n".join(lines)
