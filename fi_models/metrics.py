"""The 1-MAE metric (logged during training) and the post-training scoring table.

1-MAE is the ChaLearn First Impressions challenge metric: one minus the mean absolute error
over the five traits and all clips. Because the labels cluster around their mean, predicting
the training mean already scores about 0.88, so every score table puts R² (scikit-learn's
``r2_score``), the mean baseline and the prediction spread beside it.

The trait names are passed in (``traits=``, e.g. ``fi_data.traits.TRAITS``): ``fi_models``
imports nothing from ``fi_data`` or ``search``. The per-trait statistics (:func:`ccc`,
:func:`pcc`, :func:`prediction_spread`) work column by column on any ``(n, k)`` arrays;
:func:`score_predictions` labels its rows with the names and checks ``k == len(traits)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import r2_score

ONE_MINUS_MAE = "one_minus_mae"
"""Logged name of :class:`OneMinusMAE`; the tuner objective is ``"val_" + ONE_MINUS_MAE``."""

SCORE_COLUMNS = ("one_minus_mae", "r2", "ccc", "pcc", "spread", "baseline_one_minus_mae", "baseline_r2",
                 "baseline_ccc")
"""Columns of :func:`score_predictions`' table always present, in order (``baselines`` add
``<name>_one_minus_mae``, ``<name>_r2``, ``<name>_ccc`` after them)."""

MEAN_ROW = "mean"
"""Index label of the row that averages the trait rows (so no trait may be named so)."""


def check_traits(traits: Sequence[str]) -> tuple:
    """The trait names as a tuple, after checking them (every ``traits=`` argument of fi_models).

    Args:
        traits: the names, in column order (e.g. ``fi_data.traits.TRAITS``).

    Returns:
        ``tuple(traits)``.

    Raises:
        ValueError: a bare string (a sequence of characters, not of names), no names, a name
            that is not a non-empty string, or a repeated name.
    """
    if isinstance(traits, (str, bytes)):
        raise ValueError(f"traits must be a sequence of trait names, not the string {traits!r}")
    names = tuple(traits)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ValueError(f"traits must be one or more non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"traits must be distinct, got {names!r}")
    return names


@keras.saving.register_keras_serializable(package="fi_models")
class OneMinusMAE(keras.metrics.MeanAbsoluteError):
    """Streaming ``1 - MAE``, the MAE taken over every trait (column) and every clip seen.

    Logged as ``ONE_MINUS_MAE`` (``val_one_minus_mae`` on validation data); higher is better
    (``EarlyStopping(mode="auto")`` and similar callbacks read that from ``_direction``).
    Before any update the result is 1.0 (Keras' MAE of nothing is 0).
    """

    def __init__(self, name: str = ONE_MINUS_MAE, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self._direction = "up"

    def result(self):
        return 1.0 - super().result()


def _as_matrix(values, label: str, traits: tuple | None = None) -> np.ndarray:
    """``values`` as a finite float64 ``(n, k)`` array; ``k = len(traits)`` when given, else k >= 1."""
    arr = np.asarray(values, dtype=np.float64)
    if traits is not None and (arr.ndim != 2 or arr.shape[1] != len(traits)):
        raise ValueError(f"{label} has shape {arr.shape}; expected (n, {len(traits)}), "
                         f"one column per trait of {traits} in that order")
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{label} has shape {arr.shape}; expected (n, k >= 1), one column per trait")
    bad = int((~np.isfinite(arr)).any(axis=1).sum())
    if bad:
        raise ValueError(f"{label} holds NaN or Inf in {bad} of {arr.shape[0]} rows")
    return arr


def _as_pair(y_true, y_pred, traits: tuple | None = None) -> tuple:
    y_true = _as_matrix(y_true, "y_true", traits)
    y_pred = _as_matrix(y_pred, "y_pred", traits)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return y_true, y_pred


def prediction_spread(y_true, y_pred) -> np.ndarray:
    """Per-trait ratio SD(predictions) / SD(labels): 1 = the labels' spread, 0 = constant.

    A ratio well below 1 exposes regression to the mean. Both SDs are population SDs.

    Args:
        y_true, y_pred: arrays ``(n, k)`` of equal shape, one column per trait.

    Returns:
        float64 array ``(k,)``; exactly 0 for a constant prediction; NaN for a trait whose
        labels are all equal (ratio undefined).

    Raises:
        ValueError: wrong shapes, or NaN/Inf values.
    """
    y_true, y_pred = _as_pair(y_true, y_pred)
    constant_true = np.ptp(y_true, axis=0) == 0
    sd_true = np.where(constant_true, 1.0, y_true.std(axis=0))
    # An exactly constant column gives exactly 0 (np.std of equal floats can be ~1e-17).
    sd_pred = np.where(np.ptp(y_pred, axis=0) == 0, 0.0, y_pred.std(axis=0))
    return np.where(constant_true, np.nan, sd_pred / sd_true)


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-column ``sklearn.metrics.r2_score``; a column of equal labels gets 1.0 if predicted
    exactly, else 0.0 (scikit-learn's ``force_finite`` rule, applied by an exact test because
    floating-point rounding can leave a tiny non-zero SS_tot and a huge negative R²)."""
    r2 = r2_score(y_true, y_pred, multioutput="raw_values")
    constant = np.ptp(y_true, axis=0) == 0
    exact = (y_true == y_pred).all(axis=0)
    return np.where(constant, np.where(exact, 1.0, 0.0), r2)


def ccc(y_true, y_pred) -> np.ndarray:
    """Per-trait concordance correlation coefficient (Lin 1989, Biometrics 45:255-268).

    ``CCC = 2 cov(y, p) / (var(y) + var(p) + (mean(y) - mean(p))^2)`` with population
    moments: 1 for perfect agreement, 0 for a constant prediction (its covariance is 0), and
    it penalises both a low correlation and a shifted or shrunk prediction.

    Args:
        y_true, y_pred: arrays ``(n, k)`` of equal shape, one column per trait.

    Returns:
        float64 ``(k,)``; for a trait whose labels and predictions are all equal: 1.0 when
        they agree exactly, else 0.0 (the denominator is then the squared mean shift).

    Raises:
        ValueError: wrong shapes, or NaN/Inf values.
    """
    y_true, y_pred = _as_pair(y_true, y_pred)
    mean_t, mean_p = y_true.mean(axis=0), y_pred.mean(axis=0)
    cov = ((y_true - mean_t) * (y_pred - mean_p)).mean(axis=0)
    denominator = y_true.var(axis=0) + y_pred.var(axis=0) + (mean_t - mean_p) ** 2
    exact = (y_true == y_pred).all(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(denominator > 0, 2.0 * cov / np.where(denominator > 0, denominator, 1.0), 0.0)
    return np.where(exact, 1.0, value)


def pcc(y_true, y_pred) -> np.ndarray:
    """Per-trait Pearson correlation coefficient r (``numpy.corrcoef``).

    Args:
        y_true, y_pred: arrays ``(n, k)`` of equal shape, one column per trait.

    Returns:
        float64 ``(k,)``; NaN for a trait whose labels or predictions are constant (r is
        undefined there).

    Raises:
        ValueError: wrong shapes, or NaN/Inf values.
    """
    y_true, y_pred = _as_pair(y_true, y_pred)
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        if np.ptp(y_true[:, k]) > 0 and np.ptp(y_pred[:, k]) > 0:
            out[k] = np.corrcoef(y_true[:, k], y_pred[:, k])[0, 1]
    return out


def score_predictions(y_true, y_pred, baseline_mean, baselines: dict | None = None, *,
                      traits: Sequence[str]) -> pd.DataFrame:
    """Score predictions per trait beside the mean baseline.

    Args:
        y_true: labels ``(n, len(traits))``, column ``i`` = ``traits[i]``, n >= 2.
        y_pred: predictions ``(n, len(traits))``, same order and units.
        baseline_mean: ``(len(traits),)`` the TRAINING split's label mean; the baseline
            predicts it for every clip.
        baselines: optional name -> predictions ``(n, len(traits))`` of other baselines (e.g.
            ``{"ridge": ..., "identity": ...}``), scored into ``<name>_one_minus_mae``,
            ``<name>_r2`` and ``<name>_ccc`` columns.
        traits: the trait names in column order (required, keyword only; e.g.
            ``fi_data.traits.TRAITS``), the table's row labels; none may be ``MEAN_ROW``.

    Returns:
        A DataFrame with index ``(*traits, "mean")`` (named ``"trait"``) and columns
        ``SCORE_COLUMNS``: ``one_minus_mae`` (1 - MAE), ``r2`` (``sklearn.metrics.r2_score``), ``ccc``
        (:func:`ccc`), ``pcc`` (:func:`pcc`), ``spread`` (:func:`prediction_spread`),
        ``baseline_one_minus_mae``, ``baseline_r2``, ``baseline_ccc`` (0: a constant), then
        the columns of ``baselines``. The
        ``mean`` row averages the trait rows (NaN spreads skipped); its 1-MAE is the
        challenge score. For a trait whose labels are constant, R² follows scikit-learn's
        ``force_finite`` rule: 1.0 for a perfect prediction, else 0.0; its spread is NaN.

    Raises:
        ValueError: invalid ``traits`` (:func:`check_traits`, or one named ``MEAN_ROW``); an
            input not ``(n, len(traits))`` (``baseline_mean`` not ``len(traits)`` values) or of
            another clip count than ``y_true``; fewer than 2 clips (R² needs 2); NaN or Inf in
            any input.
    """
    traits = check_traits(traits)
    if MEAN_ROW in traits:
        raise ValueError(f"no trait may be named {MEAN_ROW!r} (the row that averages the traits), got {traits}")
    y_true, y_pred = _as_pair(y_true, y_pred, traits)
    if y_true.shape[0] < 2:
        raise ValueError(f"need at least 2 clips to score (R² is undefined for one), got {y_true.shape[0]}")
    baseline = np.asarray(baseline_mean, dtype=np.float64).reshape(-1)
    if baseline.size != len(traits):
        raise ValueError(f"baseline_mean has {baseline.size} values; expected {len(traits)}, one per trait of {traits}")
    baseline = _as_matrix(baseline.reshape(1, -1), "baseline_mean", traits)
    baseline_pred = np.broadcast_to(baseline, y_true.shape)
    columns = {
        "one_minus_mae": 1.0 - np.abs(y_true - y_pred).mean(axis=0),
        "r2": _r2(y_true, y_pred),
        "ccc": ccc(y_true, y_pred),
        "pcc": pcc(y_true, y_pred),
        "spread": prediction_spread(y_true, y_pred),
        "baseline_one_minus_mae": 1.0 - np.abs(y_true - baseline_pred).mean(axis=0),
        "baseline_r2": _r2(y_true, baseline_pred),
        "baseline_ccc": ccc(y_true, baseline_pred),
    }
    for name, predictions in (baselines or {}).items():
        other = _as_matrix(predictions, f"{name} predictions", traits)
        if other.shape != y_true.shape:
            raise ValueError(f"{name} predictions {other.shape} and y_true {y_true.shape} differ in shape")
        columns[f"{name}_one_minus_mae"] = 1.0 - np.abs(y_true - other).mean(axis=0)
        columns[f"{name}_r2"] = _r2(y_true, other)
        columns[f"{name}_ccc"] = ccc(y_true, other)
    table = pd.DataFrame(columns, index=pd.Index(traits, name="trait"))
    table.loc[MEAN_ROW] = table.mean(axis=0, skipna=True)
    return table
