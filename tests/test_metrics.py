"""fi_models.metrics and fi_models.losses: 1-MAE metric, score table, spread, CCC loss."""
import keras
import numpy as np
import pytest

from fi_data.traits import TRAITS
from fi_models.losses import LOSSES, ConcordanceMAE, concordance_correlation, get_loss
from fi_models.metrics import (MEAN_ROW, ONE_MINUS_MAE, SCORE_COLUMNS, OneMinusMAE, prediction_spread,
                               score_predictions)

Y_TRUE = np.array([[0.2, 0.4, 0.6, 0.8, 1.0],
                   [0.0, 0.0, 0.0, 0.0, 0.0]], dtype="float32")
Y_PRED = np.array([[0.3, 0.4, 0.5, 0.8, 0.6],
                   [0.1, 0.0, 0.0, 0.2, 0.0]], dtype="float32")
# |errors| = [.1, 0, .1, 0, .4] and [.1, 0, 0, .2, 0]: sum 0.9 over 10 values -> MAE 0.09.


def test_one_minus_mae_hand_computed():
    metric = OneMinusMAE()
    assert metric.name == ONE_MINUS_MAE == "one_minus_mae"
    metric.update_state(Y_TRUE, Y_PRED)
    assert float(metric.result()) == pytest.approx(0.91, abs=1e-6)
    # Streaming: a second batch with MAE 0.5 -> overall MAE (0.9 + 2.5) / 20 = 0.17.
    metric.update_state(np.zeros((1, 5)), np.full((1, 5), 0.5))
    assert float(metric.result()) == pytest.approx(1 - 3.4 / 15, abs=1e-6)
    metric.reset_state()
    metric.update_state(Y_TRUE[:1], Y_PRED[:1])
    assert float(metric.result()) == pytest.approx(1 - 0.6 / 5, abs=1e-6)
    restored = OneMinusMAE.from_config(metric.get_config())
    assert restored.name == ONE_MINUS_MAE


def test_metric_logs_under_its_name_and_early_stopping_maximises_it():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    model.compile(optimizer="adam", loss="mae", metrics=[OneMinusMAE()])
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    y = np.random.default_rng(1).random((8, 5)).astype("float32")
    stopper = keras.callbacks.EarlyStopping(monitor="val_" + ONE_MINUS_MAE)
    history = model.fit(x, y, validation_data=(x, y), epochs=1, batch_size=8, verbose=0, callbacks=[stopper])
    assert "val_" + ONE_MINUS_MAE in history.history
    expected = 1 - np.abs(model.predict(x, verbose=0) - y).mean()
    assert model.evaluate(x, y, verbose=0, return_dict=True)[ONE_MINUS_MAE] == pytest.approx(expected, abs=1e-6)
    assert bool(stopper.monitor_op(0.9, 0.8)) and not bool(stopper.monitor_op(0.8, 0.9))  # higher is better


def test_score_predictions_hand_computed():
    y_true = np.array([[0.2, 0.4, 0.5, 0.1, 0.9],
                       [0.4, 0.4, 0.7, 0.3, 0.5],
                       [0.6, 0.4, 0.9, 0.5, 0.1]])
    y_pred = np.array([[0.3, 0.5, 0.7, 0.1, 0.9],
                       [0.4, 0.4, 0.7, 0.3, 0.5],
                       [0.5, 0.4, 0.7, 0.5, 0.1]])
    baseline = np.array([0.5, 0.4, 0.6, 0.2, 0.5])
    table = score_predictions(y_true, y_pred, baseline, traits=TRAITS)
    assert list(table.index) == [*TRAITS, MEAN_ROW]
    assert tuple(table.columns) == SCORE_COLUMNS
    openness = table.loc["openness"]
    assert openness["one_minus_mae"] == pytest.approx(1 - 0.2 / 3)
    # R² = 1 - SS_res / SS_tot = 1 - (0.01 + 0 + 0.01) / (0.04 + 0 + 0.04) = 0.75.
    assert openness["r2"] == pytest.approx(0.75)
    # SD(pred) / SD(true) = sqrt(0.02 / 3) / sqrt(0.08 / 3) = 0.5.
    assert openness["spread"] == pytest.approx(0.5)
    assert openness["baseline_one_minus_mae"] == pytest.approx(1 - (0.3 + 0.1 + 0.1) / 3)
    assert openness["baseline_r2"] == pytest.approx(1 - (0.09 + 0.01 + 0.01) / 0.08)
    # agreeableness and neuroticism are predicted exactly.
    assert table.loc["neuroticism", "r2"] == pytest.approx(1.0)
    assert table.loc["neuroticism", "spread"] == pytest.approx(1.0)
    # extraversion predicted constant 0.7: spread 0, R² = 1 - (0.04 + 0 + 0.04) / 0.08 = 0.
    assert table.loc["extraversion", "spread"] == 0.0
    assert table.loc["extraversion", "r2"] == pytest.approx(0.0)
    # Constant labels (conscientiousness = 0.4): R² 0.0 unless predicted exactly (then 1.0,
    # as for the baseline 0.4), never sklearn's -1e30 from a rounding-level SS_tot; spread NaN.
    assert table.loc["conscientiousness", "r2"] == 0.0
    assert np.isnan(table.loc["conscientiousness", "spread"])
    assert table.loc["conscientiousness", "baseline_r2"] == 1.0
    mean_row = table.loc[MEAN_ROW]
    assert mean_row["one_minus_mae"] == pytest.approx(1 - np.abs(y_true - y_pred).mean())
    assert mean_row["r2"] == pytest.approx(table.loc[list(TRAITS), "r2"].mean())
    assert mean_row["spread"] == pytest.approx(np.mean([0.5, 0.0, 1.0, 1.0]))


def test_constant_predictor_has_zero_spread_and_baseline_equals_its_scores():
    rng = np.random.default_rng(0)
    y_true = rng.uniform(0.2, 0.8, size=(50, 5))
    mean = y_true.mean(axis=0)
    constant = np.tile(mean, (50, 1))
    np.testing.assert_array_equal(prediction_spread(y_true, constant), np.zeros(5))
    table = score_predictions(y_true, constant, mean, traits=TRAITS)
    np.testing.assert_allclose(table["one_minus_mae"], table["baseline_one_minus_mae"])
    np.testing.assert_allclose(table["r2"], np.zeros(6), atol=1e-12)


def test_score_predictions_rejects_bad_input():
    good = np.full((3, 5), 0.5)
    with pytest.raises(ValueError, match=r"y_pred has shape \(3, 4\); expected \(n, 5\), one column per trait of "
                                         r"\('openness', 'conscientiousness'"):
        score_predictions(good, good[:, :4], np.full(5, 0.5), traits=TRAITS)
    with pytest.raises(ValueError, match="y_pred holds NaN or Inf in 1 of 3 rows"):
        score_predictions(good, np.where(np.arange(15).reshape(3, 5) == 7, np.nan, 0.5), np.full(5, 0.5),
                          traits=TRAITS)
    with pytest.raises(ValueError, match="at least 2 clips"):
        score_predictions(good[:1], good[:1], np.full(5, 0.5), traits=TRAITS)
    with pytest.raises(ValueError, match="differ in shape"):
        score_predictions(good, good[:2], np.full(5, 0.5), traits=TRAITS)
    with pytest.raises(ValueError, match="baseline_mean has 4 values; expected 5"):
        score_predictions(good, good, np.full(4, 0.5), traits=TRAITS)


def test_concordance_correlation_hand_computed():
    t = np.array([[1.0], [2.0], [3.0]])
    p = np.array([[2.0], [2.0], [5.0]])
    # means 2 and 3; var_t = 2/3, var_p = 2, cov = (1*1 + 0 + 1*2)/3 = 1; CCC = 2 / (2/3 + 2 + 1).
    assert float(concordance_correlation(t, p, epsilon=0.0)[0]) == pytest.approx(2 / (2 / 3 + 2 + 1))
    assert float(concordance_correlation(t, t, epsilon=0.0)[0]) == pytest.approx(1.0)
    assert float(concordance_correlation(t, np.full((3, 1), 2.0))[0]) == 0.0


def test_ccc_mae_loss_values_and_config():
    assert LOSSES == ("mae", "mse", "ccc_mae")
    y_true = np.array([[0.2, 0.4, 0.6, 0.8, 0.1], [0.6, 0.2, 0.4, 0.4, 0.5]], dtype="float32")
    loss = get_loss("ccc_mae")
    assert float(loss(y_true, y_true)) == pytest.approx(0.0, abs=1e-5)
    # A constant predictor has CCC 0: loss = MAE + 1 * (1 - 0).
    constant = np.full_like(y_true, 0.4)
    assert float(loss(y_true, constant)) == pytest.approx(np.abs(y_true - constant).mean() + 1.0, abs=1e-5)
    half = ConcordanceMAE(ccc_weight=0.5)
    ccc = np.mean(concordance_correlation(y_true, Y_PRED[:, ::-1]).numpy())
    expected = np.abs(y_true - Y_PRED[:, ::-1]).mean() + 0.5 * (1 - ccc)
    assert float(half(y_true, Y_PRED[:, ::-1])) == pytest.approx(expected, abs=1e-5)
    assert ConcordanceMAE.from_config(half.get_config()).ccc_weight == 0.5
    assert float(get_loss("mae")(y_true, constant)) == pytest.approx(np.abs(y_true - constant).mean(), abs=1e-6)
    with pytest.raises(ValueError, match="ccc_weight must be >= 0"):
        ConcordanceMAE(ccc_weight=-1)


def test_ccc_and_pcc_by_hand():
    from fi_models.metrics import ccc, pcc

    y = np.array([[0.2, 0.1, 0.5, 0.4, 0.3], [0.4, 0.3, 0.5, 0.6, 0.5], [0.6, 0.5, 0.5, 0.8, 0.7]])
    p = np.array([[0.3, 0.1, 0.5, 0.5, 0.5], [0.4, 0.2, 0.5, 0.5, 0.5], [0.5, 0.6, 0.5, 0.5, 0.5]])
    # trait 0: y mean .4 var .08/3, p mean .4 var .02/3, cov .04/3 -> 2*.04/(.08+.02) = 0.8
    np.testing.assert_allclose(ccc(y, p)[0], 0.8)
    np.testing.assert_allclose(pcc(y, p)[0], 1.0)
    # trait 1: y .1 .3 .5 (mean .3), p .1 .2 .6 (mean .3): cov (.2*.2+0+.2*.3)/3 = .1/3,
    # var y .08/3, var p (.04+.01+.09)/3 = .14/3 -> ccc 2*.1/.22, pcc .1/sqrt(.08*.14)
    np.testing.assert_allclose(ccc(y, p)[1], 0.2 / 0.22)
    np.testing.assert_allclose(pcc(y, p)[1], 0.1 / np.sqrt(0.08 * 0.14))
    assert ccc(y, p)[2] == 1.0 and np.isnan(pcc(y, p)[2])  # constant labels, exactly predicted
    assert ccc(y, p)[3] == 0.0 and ccc(y, p)[4] == 0.0  # constant predictions
    assert np.isnan(pcc(y, p)[3])
    table = score_predictions(y, p, y.mean(axis=0), baselines={"other": y}, traits=TRAITS)
    assert table.loc["openness", "ccc"] == pytest.approx(0.8)
    assert table.loc["openness", "baseline_ccc"] == 0.0
    assert table.loc["openness", "other_ccc"] == 1.0 and table.loc["mean", "other_one_minus_mae"] == 1.0


def test_score_predictions_takes_the_trait_names():
    traits = ("x", "y", "z")
    y_true = np.array([[0.2, 0.4, 0.6], [0.4, 0.5, 0.2], [0.6, 0.9, 0.4]])
    y_pred = np.array([[0.3, 0.4, 0.6], [0.4, 0.6, 0.2], [0.5, 0.8, 0.4]])
    table = score_predictions(y_true, y_pred, y_true.mean(axis=0), baselines={"other": y_true}, traits=traits)
    assert list(table.index) == [*traits, MEAN_ROW] and table.index.name == "trait"
    assert table.loc["x", "one_minus_mae"] == pytest.approx(1 - 0.2 / 3)
    assert table.loc["z", "r2"] == 1.0 and table.loc["z", "ccc"] == 1.0
    assert table.loc[MEAN_ROW, "one_minus_mae"] == pytest.approx(1 - np.abs(y_true - y_pred).mean())
    assert table.loc[MEAN_ROW, "other_one_minus_mae"] == 1.0
    np.testing.assert_allclose(prediction_spread(y_true, y_pred), table.loc[list(traits), "spread"])
    with pytest.raises(ValueError, match=r"y_true has shape \(3, 3\); expected \(n, 5\), one column per trait of "
                                         r"\('openness'"):
        score_predictions(y_true, y_pred, y_true.mean(axis=0), traits=TRAITS)
    with pytest.raises(ValueError, match=r"other predictions has shape \(3, 2\); expected \(n, 3\)"):
        score_predictions(y_true, y_pred, y_true.mean(axis=0), baselines={"other": y_true[:, :2]}, traits=traits)
    with pytest.raises(ValueError, match=r"baseline_mean has 2 values; expected 3, one per trait of \('x', 'y', 'z'\)"):
        score_predictions(y_true, y_pred, [0.5, 0.5], traits=traits)
    with pytest.raises(ValueError, match="no trait may be named 'mean'"):
        score_predictions(y_true, y_pred, y_true.mean(axis=0), traits=("x", MEAN_ROW, "z"))
    with pytest.raises(ValueError, match="distinct"):
        score_predictions(y_true, y_pred, y_true.mean(axis=0), traits=("x", "x", "z"))
    with pytest.raises(TypeError, match="traits"):
        score_predictions(y_true, y_pred, y_true.mean(axis=0))  # the names are never assumed
