"""``run_search.py compare RUN [RUN ...]``: one row per finished run, as markdown and CSV.

Every number comes from the run folders' files (``metrics.json``, ``config.json``,
``search.json``, ``trials.csv``). The split protocol shows as the share of test clips whose
YouTube id also has training clips (0 for ``--split speaker-disjoint``, 0.84 on the official
First Impressions split), which is what decides whether the identity lookup is a strong
baseline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from search.evaluation import format_interval
from search.runs import RunPaths


def _interval(metrics: dict, quantity: str, metric: str) -> str:
    for r in metrics.get("intervals", {}).get("test", []):
        if r["quantity"] == quantity and r["metric"] == metric:
            return format_interval(r["estimate"], r["low"], r["high"])
    value = metrics["scores"]["test"]["mean"].get({"model": "", "baseline": "baseline_"}.get(quantity, f"{quantity}_")
                                                  + metric)
    return "n/a" if value is None else f"{value:.4f}"


def run_row(run_dir: str | os.PathLike) -> dict:
    """The comparison row of one finished run folder.

    Raises:
        FileNotFoundError: the folder has no ``metrics.json`` (not retrained yet), naming it.
    """
    paths = RunPaths(Path(run_dir))
    if not paths.metrics.is_file():
        raise FileNotFoundError(f"{paths.metrics}: missing; only finished (retrained) runs can be compared")
    metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    config = json.loads(paths.config.read_text(encoding="utf-8")) if paths.config.is_file() else {}
    search = json.loads(paths.search_summary.read_text(encoding="utf-8")) if paths.search_summary.is_file() else {}
    trials = len(pd.read_csv(paths.trials_csv)) if paths.trials_csv.is_file() else None
    test = metrics["scores"]["test"]
    row = {"run": paths.root.name, "dataset": config.get("cache", {}).get("key"),
           "clips (train/val/test)": "/".join(str(metrics["scores"][s]["n"]) for s in ("train", "validation", "test")),
           "test ids shared with train": metrics.get("identity_shared_id_share", {}).get("test"),
           "trials": trials, "search wall s": search.get("wall_s"),
           "test 1-MAE": _interval(metrics, "model", "one_minus_mae"), "test R²": _interval(metrics, "model", "r2"),
           "test CCC": _interval(metrics, "model", "ccc"),
           "mean predictor 1-MAE": _interval(metrics, "baseline", "one_minus_mae"),
           "ridge 1-MAE": _interval(metrics, "ridge", "one_minus_mae"),
           "identity 1-MAE": _interval(metrics, "identity", "one_minus_mae"),
           "model - ridge": _interval(metrics, "model - ridge", "one_minus_mae"),
           "best hyperparameters": ", ".join(f"{k}={v}" for k, v in sorted(metrics["hyperparameters"].items()))}
    if "ccc" not in test["mean"]:
        row["test CCC"] = "n/a"
    return row


def compare_runs(run_dirs, out: str | os.PathLike | None = None) -> pd.DataFrame:
    """The comparison table of ``run_dirs``; with ``out``, also ``<out>.md`` and ``<out>.csv``.

    Returns:
        DataFrame, one row per run (:func:`run_row`).
    """
    table = pd.DataFrame([run_row(r) for r in run_dirs])
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out.with_suffix(".csv"), index=False)
        header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
        body = "".join("| " + " | ".join("n/a" if v is None or v != v else str(v) for v in row) + " |\n"
                       for row in table.itertuples(index=False))
        out.with_suffix(".md").write_text(header + body, encoding="utf-8")
    return table
