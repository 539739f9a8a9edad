"""Training losses, including a concordance-correlation remedy for regression to the mean.

Plain MAE is minimised by shrinking every prediction toward the (conditional) median, so a
network with weak features collapses to predicting about the label mean for every clip
(the assignment's "regression-to-the-mean problem"). The ``"ccc_mae"`` loss adds
``1 - CCC`` (Lin's concordance correlation coefficient, computed per trait over the batch and
averaged over the five traits), which is 1 for a constant predictor and 0 only when the
predictions match the labels' mean, spread and order; so shrunken spread is penalised
directly while the MAE term keeps the predictions on the label scale.

Reference: L. I-K. Lin, "A concordance correlation coefficient to evaluate
reproducibility", Biometrics 45(1):255-268, 1989.
"""

from __future__ import annotations

import keras
from keras import ops

LOSSES = ("mae", "mse", "ccc_mae")
"""Loss names accepted by :func:`get_loss` and :func:`fi_models.fusion.compile_model`."""


def concordance_correlation(y_true, y_pred, epsilon: float = 1e-7):
    """Lin's concordance correlation coefficient of each column, over the batch axis.

    ``CCC = 2 cov(t, p) / (var(t) + var(p) + (mean(t) - mean(p))**2)`` with population
    (divide by n) moments (Lin 1989, eq. 2a; see the module docstring).

    Args:
        y_true, y_pred: float tensors or arrays ``(batch, k)``.
        epsilon: added to the denominator so that a batch with no variance (e.g. one clip,
            or a constant predictor on constant labels) gives ``CCC = 0`` instead of NaN.

    Returns:
        A float tensor ``(k,)`` of values in ``[-1, 1]``.
    """
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), y_true.dtype)
    mean_t = ops.mean(y_true, axis=0)
    mean_p = ops.mean(y_pred, axis=0)
    dev_t = y_true - mean_t
    dev_p = y_pred - mean_p
    cov = ops.mean(dev_t * dev_p, axis=0)
    denominator = (ops.mean(ops.square(dev_t), axis=0) + ops.mean(ops.square(dev_p), axis=0)
                   + ops.square(mean_t - mean_p) + epsilon)
    return 2.0 * cov / denominator


@keras.saving.register_keras_serializable(package="fi_models")
class ConcordanceMAE(keras.losses.Loss):
    """``MAE + ccc_weight * (1 - mean CCC)``: MAE that also penalises shrunken spread.

    Per clip the value is its MAE over the five traits plus ``ccc_weight * (1 - CCC)``, where
    CCC is :func:`concordance_correlation` of the whole batch averaged over the traits (a
    batch statistic, so it is noisier for small batches; batches of 16 or more are sensible).
    The batch loss is therefore ``MAE + ccc_weight * (1 - CCC)``.

    Args:
        ccc_weight: weight of the ``1 - CCC`` term (>= 0); 0 gives plain MAE.
        name, reduction, dtype: as for ``keras.losses.Loss``.

    Raises:
        ValueError: if ``ccc_weight`` is negative.
    """

    def __init__(self, ccc_weight: float = 1.0, name: str = "ccc_mae", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if ccc_weight < 0:
            raise ValueError(f"ccc_weight must be >= 0, got {ccc_weight}")
        self.ccc_weight = float(ccc_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        mae = ops.mean(ops.abs(y_true - y_pred), axis=-1)
        ccc = ops.mean(concordance_correlation(y_true, y_pred))
        return mae + self.ccc_weight * (1.0 - ccc)

    def get_config(self):
        return {**super().get_config(), "ccc_weight": self.ccc_weight}


def get_loss(name: str) -> keras.losses.Loss:
    """The loss object for a name in ``LOSSES``.

    ``"mae"`` and ``"mse"`` are Keras' ``MeanAbsoluteError`` / ``MeanSquaredError``;
    ``"ccc_mae"`` is :class:`ConcordanceMAE` with weight 1.

    Raises:
        ValueError: for a name not in ``LOSSES``.
    """
    if name == "mae":
        return keras.losses.MeanAbsoluteError()
    if name == "mse":
        return keras.losses.MeanSquaredError()
    if name == "ccc_mae":
        return ConcordanceMAE()
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
