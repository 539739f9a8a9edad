"""``trials.csv``: one row per Keras Tuner trial, with what the tuner itself does not keep.

Keras Tuner stores each trial's status, hyperparameters, score, best step and failure
traceback in ``<project>/trial_<id>/trial.json``. The tuner of :mod:`search.tuner` adds
``<project>/trial_<id>/fi_trial.json`` (wall time, peak memory, epochs trained) when a
trial ends. :func:`trials_table` joins both into one ``pandas.DataFrame``;
:func:`rewrite_trials_csv` (tabulate or read back, mark diverged trials, write atomically)
is the one function every writer of ``trials.csv`` calls.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras_tuner as kt
import numpy as np
import pandas as pd

TRIAL_INFO_NAME = "fi_trial.json"
"""Per-trial bookkeeping file written beside Keras Tuner's ``trial.json``."""

LEADING = ("trial_id", "status")
"""First columns of ``trials.csv``; the hyperparameter columns follow them."""

TRAILING = ("score", "diverged", "best_epoch", "epochs_trained", "last_epoch", "stopped_at_deadline", "wall_time_s",
            "peak_rss_mb", "peak_gpu_mb", "failure_message")
"""Last columns of ``trials.csv``, after the hyperparameter columns."""

DIVERGED_MARGIN = 0.05
"""A completed trial whose validation 1-MAE is more than this below the mean predictor's
validation 1-MAE is marked ``diverged`` (1-MAE units). The mean predictor scores about 0.88
on First Impressions and searched models a few hundredths above it, so 0.05 below it means
a model that learned nothing useful (e.g. a saturated sigmoid head or an exploding loss),
not one that is merely weak."""

FLOAT_DIGITS = 12
"""Significant digits kept of float hyperparameter values in ``trials.csv``: Keras Tuner's
stepped floats are sums like ``0.1 * 3 = 0.30000000000000004``, whose error is in the 17th
digit; 12 digits remove it and keep a sampled learning rate as sampled (the same rounding as
``search.tensorboard_logs.HPARAM_DIGITS``, so both show the same values)."""


def round_significant(value: float, digits: int = FLOAT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (0.30000000000000004 -> 0.3); NaN / Inf unchanged."""
    value = float(value)
    return float(f"{value:.{digits}g}") if np.isfinite(value) else value


def format_value(value, digits: int = 3) -> str:
    """A hyperparameter value for a table cell.

    Integers, and floats with an integral value, print as integers (``32``, not ``32.0``);
    other floats with ``digits`` significant digits (``0.000555``, not ``0.0006``; ``0.3``,
    not ``0.30000000000000004``); NaN / None as ``n/a``; anything else with ``str``.
    """
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a"
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{float(value):.{digits}g}"
    return str(value)


def is_diverged(score, baseline_score: float | None, margin: float = DIVERGED_MARGIN) -> bool | None:
    """Whether a validation score (1-MAE) is more than ``margin`` below ``baseline_score``.

    Returns:
        None when either is unknown (no score: a failed trial; no baseline given), else a bool.
    """
    if score is None or baseline_score is None or pd.isna(score) or pd.isna(baseline_score):
        return None
    return bool(float(score) < float(baseline_score) - margin)


def mark_diverged(table: pd.DataFrame, baseline_score: float | None,
                  margin: float = DIVERGED_MARGIN) -> pd.DataFrame:
    """A copy of a ``trials.csv`` table with its ``diverged`` column computed from ``score``.

    Args:
        table: a :func:`trials_table` (or ``trials.csv`` read back, as text or typed) with a
            ``score`` column.
        baseline_score: the mean predictor's validation 1-MAE (mean of traits), or None.
        margin: see :data:`DIVERGED_MARGIN`.

    Returns:
        The table with ``diverged`` (nullable boolean: empty where there is no score or no
        baseline) right after ``score``.
    """
    out = table.copy()
    scores = pd.to_numeric(out["score"], errors="coerce")  # also a table read back as text
    flags = pd.array([is_diverged(s, baseline_score, margin) for s in scores], dtype="boolean")
    if "diverged" in out:
        out["diverged"] = flags
    else:
        out.insert(out.columns.get_loc("score") + 1, "diverged", flags)
    return out


def _integer_hyperparameters(trials) -> set:
    """Names of the hyperparameters whose every possible value is an integer (Int, or a
    Choice / Fixed of ints), over the spaces of ``trials``."""
    names, others = set(), set()
    for trial in trials:
        for hp in trial.hyperparameters.space:
            if isinstance(hp, kt.engine.hyperparameters.Int):
                integer = True
            elif isinstance(hp, kt.engine.hyperparameters.Choice):
                integer = all(isinstance(v, int) and not isinstance(v, bool) for v in hp.values)
            elif isinstance(hp, kt.engine.hyperparameters.Fixed):
                integer = isinstance(hp.value, int) and not isinstance(hp.value, bool)
            else:
                integer = False
            (names if integer else others).add(hp.name)
    return names - others


def _clean_value(name: str, value, integers: set):
    """An integer hyperparameter's value as int (32.0 -> 32); a float rounded (:func:`round_significant`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return value
    if name in integers and float(value).is_integer():
        return int(value)
    return round_significant(value) if isinstance(value, (float, np.floating)) else value


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


def trials_table(trials, project_dir: str | os.PathLike, baseline_score: float | None = None) -> pd.DataFrame:
    """One row per trial, ordered by trial id.

    Args:
        trials: Keras Tuner ``Trial`` objects (e.g. ``tuner.oracle.trials.values()``).
        project_dir: the Keras Tuner project folder holding ``trial_<id>/fi_trial.json``.
        baseline_score: the mean predictor's validation 1-MAE (mean of the traits), e.g.
            ``metrics.json``'s ``scores.validation.mean.baseline_one_minus_mae``; None leaves
            ``diverged`` empty (:func:`mark_diverged` fills it in later).

    Returns:
        Columns ``trial_id, status``, every hyperparameter seen in any trial (Hyperband's
        ``tuner/*`` values included; integer hyperparameters as integers, floats rounded to
        :data:`FLOAT_DIGITS` significant digits), then ``score`` (validation objective: the
        best epoch's validation 1-MAE, what the tuner ranks by), ``diverged`` (True: a
        completed trial whose score is more than :data:`DIVERGED_MARGIN` below the mean
        predictor's), ``best_epoch`` (absolute epoch, counting a Hyperband parent's epochs),
        ``epochs_trained`` (epochs this trial itself trained; a Hyperband continuation
        starts from its parent's weights at ``tuner/initial_epoch`` and trains only the
        rest), ``last_epoch`` (absolute epoch the trial's model ended at:
        ``tuner/initial_epoch + epochs_trained``), ``stopped_at_deadline`` (True: the time budget ran out while
        it trained; it was stopped at the end of an epoch and scored on its best epoch so
        far), ``wall_time_s``, ``peak_rss_mb`` and ``peak_gpu_mb`` (MiB, see
        ``search.memory``), ``failure_message`` (the exception line; the full traceback is
        in the trial's ``trial.json``). Empty cells where a value does not apply.
    """
    rows, hp_names = [], {}
    trials = sorted(trials, key=lambda t: str(t.trial_id))
    integers = _integer_hyperparameters(trials)
    for trial in trials:
        info_path = trial_info_path(project_dir, trial.trial_id)
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        values = {k: _clean_value(k, v, integers) for k, v in trial.hyperparameters.values.items()}
        hp_names.update(dict.fromkeys(values))
        own, last = _epochs(info, int(values.get("tuner/initial_epoch", 0) or 0))
        rows.append({"trial_id": str(trial.trial_id), "status": trial.status, **values,
                     "score": trial.score, "diverged": is_diverged(trial.score, baseline_score),
                     "best_epoch": best_epoch(trial), "epochs_trained": own, "last_epoch": last,
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
    table["diverged"] = pd.array(table["diverged"].tolist(), dtype="boolean")
    return table


def _epochs(info: dict, initial_epoch: int) -> tuple:
    """``(epochs this trial trained, absolute last epoch)`` from its ``fi_trial.json``.

    The tuner records the absolute epoch reached (``initial_epoch`` + the epochs of this
    trial's ``fit``); a trial settled after an interruption (``"interrupted": true``) records
    the epochs it finished itself.
    """
    recorded = info.get("epochs_trained")
    if recorded is None:
        return None, None
    recorded = int(recorded)
    if info.get("interrupted"):
        return recorded, initial_epoch + recorded
    return max(recorded - initial_epoch, 0), recorded


def write_trials_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


def rewrite_trials_csv(path: str | os.PathLike, trials=None, project_dir: str | os.PathLike | None = None,
                       baseline_score: float | None = None) -> pd.DataFrame | None:
    """Read the trials, mark the diverged ones, write ``trials.csv``: the one way it is written.

    Args:
        path: the ``trials.csv`` to write (atomically, :func:`write_trials_csv`).
        trials: Keras Tuner ``Trial`` objects to tabulate (:func:`trials_table`, with
            ``project_dir``); None reads ``path`` back as text instead (the report's case).
        project_dir: the Keras Tuner project folder (with ``trials``).
        baseline_score: the mean predictor's validation 1-MAE; given, ``diverged`` is
            filled in (:func:`mark_diverged`), else it is left empty.

    Returns:
        The table written (or read back unchanged: a file read back is rewritten only when
        its ``diverged`` column changes); None when there are no ``trials`` and no file.
    """
    path = Path(path)
    if trials is not None:
        table = trials_table(trials, project_dir, baseline_score)
        write_trials_csv(table, path)
        return table
    if not path.is_file():
        return None
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if baseline_score is None or not len(raw):
        return raw
    marked = mark_diverged(raw, baseline_score)
    text = marked["diverged"].astype(object).where(marked["diverged"].notna(), "").astype(str)
    if "diverged" not in raw or list(raw["diverged"]) != list(text):
        write_trials_csv(marked, path)
    return marked
