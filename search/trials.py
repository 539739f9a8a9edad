"""``trials.csv``: one row per Keras Tuner trial, with what the tuner itself does not keep.

Keras Tuner stores each trial's status, hyperparameters, score, best step and failure
traceback in ``<project>/trial_<id>/trial.json``. The tuner of :mod:`search.tuner` adds
``<project>/trial_<id>/fi_trial.json`` (wall time, peak memory, epochs trained) when a
trial ends. :func:`trials_table` joins both into one ``pandas.DataFrame``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

TRIAL_INFO_NAME = "fi_trial.json"
"""Per-trial bookkeeping file written beside Keras Tuner's ``trial.json``."""

LEADING = ("trial_id", "status")
"""First columns of ``trials.csv``; the hyperparameter columns follow them."""

TRAILING = ("score", "best_epoch", "epochs_trained", "stopped_at_deadline", "wall_time_s", "peak_rss_mb",
            "peak_gpu_mb", "failure_message")
"""Last columns of ``trials.csv``, after the hyperparameter columns."""


def trial_info_path(project_dir: str | os.PathLike, trial_id: str) -> Path:
    """Where :data:`TRIAL_INFO_NAME` of ``trial_id`` lives."""
    return Path(project_dir) / f"trial_{trial_id}" / TRIAL_INFO_NAME


def failure_summary(message: str | None) -> str | None:
    """The last non-empty line of a Keras Tuner failure traceback (the exception), or None."""
    if not message:
        return None
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def best_epoch(trial) -> int | None:
    """1-based epoch count at which a completed trial scored best, or None.

    Keras Tuner's ``trial.best_step`` indexes the epochs of this trial's own ``fit`` call;
    a Hyperband continuation starts at ``tuner/initial_epoch``, which is added.
    """
    if trial.status != "COMPLETED" or trial.score is None:
        return None
    return int(trial.hyperparameters.values.get("tuner/initial_epoch", 0)) + int(trial.best_step) + 1


def trials_table(trials, project_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per trial, ordered by trial id.

    Args:
        trials: Keras Tuner ``Trial`` objects (e.g. ``tuner.oracle.trials.values()``).
        project_dir: the Keras Tuner project folder holding ``trial_<id>/fi_trial.json``.

    Returns:
        Columns ``trial_id, status``, every hyperparameter seen in any trial (Hyperband's
        ``tuner/*`` values included), then ``score`` (validation objective), ``best_epoch``,
        ``epochs_trained`` (epochs the trial's model has been trained, including a
        Hyperband parent's), ``stopped_at_deadline`` (True: the time budget ran out while
        it trained; it was stopped at the end of an epoch and scored on its best epoch so
        far), ``wall_time_s``, ``peak_rss_mb`` and ``peak_gpu_mb`` (MiB, see
        ``search.memory``), ``failure_message`` (the exception line; the full traceback is
        in the trial's ``trial.json``). Empty cells where a value does not apply.
    """
    rows, hp_names = [], {}
    for trial in sorted(trials, key=lambda t: str(t.trial_id)):
        info_path = trial_info_path(project_dir, trial.trial_id)
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        values = dict(trial.hyperparameters.values)
        hp_names.update(dict.fromkeys(values))
        rows.append({"trial_id": str(trial.trial_id), "status": trial.status, **values,
                     "score": trial.score, "best_epoch": best_epoch(trial),
                     "epochs_trained": info.get("epochs_trained"),
                     "stopped_at_deadline": info.get("stopped_at_deadline"), "wall_time_s": info.get("wall_time_s"),
                     "peak_rss_mb": info.get("peak_rss_mb"), "peak_gpu_mb": info.get("peak_gpu_mb"),
                     "failure_message": failure_summary(trial.message)})
    model_hps = [n for n in hp_names if not n.startswith("tuner/")]
    columns = [*LEADING, *model_hps, *(n for n in hp_names if n.startswith("tuner/")), *TRAILING]
    table = pd.DataFrame(rows, columns=columns)
    for name in columns:  # integers stay integers beside empty cells ("9", not "9.0")
        cells = [r.get(name) for r in rows]
        present = [v for v in cells if v is not None]
        if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            table[name] = pd.array(cells, dtype="Int64")
    return table


def write_trials_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
