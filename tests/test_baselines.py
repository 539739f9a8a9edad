"""The clip-statistics ridge (search.baselines), the statistics layers, the ridge path, the verdict."""

import numpy as np
import pytest

from fi_data.cache_format import SplitArrays, write_split, write_synthetic_cache
from fi_data.traits import TRAITS
from fi_models.fusion import build_model, target_statistics
from fi_models.statistics import AudioStatistics, FrameStatistics
from search.baselines import clip_statistics, ridge_baseline, statistics_init
from search.verdict import verdict_lines

SIZES = {"train": 160, "validation": 60, "test": 60}
AUDIO, FRAMES = (24, 30, 1), (3, 24, 40, 3)


def _cache(tmp_path, planted: bool, seed: int = 0):
    """A cache whose labels are linear in clip statistics (planted) or independent of them."""
    cache = write_synthetic_cache(tmp_path, SIZES, audio_shape=AUDIO, frame_shape=FRAMES, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for split, n in SIZES.items():
        audio = rng.normal(size=(n, *AUDIO)).astype(np.float32)
        level = rng.uniform(size=(n, 3))
        audio += level[:, 0].reshape(n, 1, 1, 1) * np.arange(AUDIO[0]).reshape(1, -1, 1, 1) / AUDIO[0]
        frames = rng.integers(0, 40, size=(n, *FRAMES)).astype(np.int32)
        frames[..., 0] += (level[:, 1] * 200).astype(np.int32).reshape(n, 1, 1, 1)  # red tint
        frames[:, :, :8, :, 2] += (level[:, 2] * 200).astype(np.int32).reshape(n, 1, 1, 1)  # blue top band
        frames = np.clip(frames, 0, 255).astype(np.uint8)
        if planted:
            mix = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0], [0, 0.5, 0.5]])
            targets = 0.3 + 0.4 * level @ mix.T / mix.sum(1)
        else:
            targets = rng.uniform(0.3, 0.7, size=(n, len(TRAITS)))
        ids = tuple(cache.split(split).clip_ids)
        write_split(tmp_path, SplitArrays(split, audio, frames, targets.astype(np.float32), ids))
    from fi_data.cache_format import open_cache
    return open_cache(tmp_path)


def _r2(y, p):
    return float(np.mean(1 - ((y - p) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


def test_statistics_layers_compute_the_documented_numbers():
    audio = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4, 1) ** 2
    out = np.asarray(AudioStatistics()(audio))
    a = audio[..., 0]
    np.testing.assert_allclose(out, np.hstack([a.mean(2), a.std(2), np.abs(np.diff(a, axis=2)).mean(2)]), rtol=1e-6)
    assert np.asarray(AudioStatistics()(np.ones((2, 24, 1), np.float32))).shape == (2, 24)
    frames = np.zeros((1, 2, 6, 6, 3), np.uint8)
    frames[0, :, :2, :2, 0] = 255  # top-left cell red in both frames
    frames[0, 1, 2:4, 2:4, 1] = 255  # centre cell green in the second frame only
    out = np.asarray(FrameStatistics()(frames))[0]
    assert out.shape == (36,)
    cells = out[:27].reshape(9, 3)
    np.testing.assert_allclose(cells[0], [1, 0, 0])
    np.testing.assert_allclose(cells[4], [0, 0.5, 0])
    motion = out[33:]
    np.testing.assert_allclose(motion, [0, 4 / 36, 0], rtol=1e-6)


def test_ridge_recovers_a_planted_linear_cue(tmp_path):
    cache = _cache(tmp_path, planted=True)
    result = ridge_baseline(cache)
    y = np.asarray(cache.split("test").targets)
    assert _r2(y, result["predictions"]["test"]) > 0.9
    assert result["variant"] == "both"  # every modality carries a cue
    assert set(result["validation_one_minus_mae"]) == {"audio", "video", "both"}
    assert len(result["alphas"]) == len(TRAITS)


def test_ridge_is_near_zero_on_noise(tmp_path):
    cache = _cache(tmp_path, planted=False)
    result = ridge_baseline(cache)
    y = np.asarray(cache.split("test").targets)
    assert -0.15 < _r2(y, result["predictions"]["test"]) < 0.05


def test_the_untrained_model_with_the_ridge_path_predicts_the_ridge(tmp_path):
    cache = _cache(tmp_path, planted=True)
    train = cache.split("train")
    mean, std = target_statistics(np.asarray(train.targets))
    init = statistics_init(train, mean, std, crop_size=20)
    model = build_model(AUDIO, (FRAMES[0], 20, 20, 3), traits=TRAITS, audio_branch="stats", backbone="stats",
                        fusion_units=8, target_mean=mean, target_std=std, statistics=init)
    from fi_data.pipeline import eval_transform
    test = cache.split("test")
    audio, video = eval_transform(np.asarray(test.audio), np.asarray(test.frames), 20)
    pred = model.predict((audio, video), verbose=0)
    # the same ridge, in NumPy: standardized crop statistics -> standardized targets
    a, v = clip_statistics(test, crop_size=20)
    x = (np.hstack([a, v]) - np.hstack([init.audio_mean, init.video_mean])) / np.sqrt(
        np.where(np.hstack([init.audio_var, init.video_var]) > 1e-12, np.hstack([init.audio_var, init.video_var]), 1))
    expected = mean + std * (x @ np.asarray(init.ridge_kernel) + np.asarray(init.ridge_bias))
    np.testing.assert_allclose(pred, expected, atol=2e-4)
    assert _r2(np.asarray(test.targets), pred) > 0.9


def _metrics(model_val, model_test, ridge_val=0.95, ridge_test=0.95, mean_val=0.88, mean_test=0.88):
    def split(m, r, b):
        return {"mean": {"one_minus_mae": m, "ridge_one_minus_mae": r, "baseline_one_minus_mae": b}}
    return {"scores": {"validation": split(model_val, ridge_val, mean_val), "test": split(model_test, ridge_test, mean_test)},
            "baselines": {"baseline": "mean predictor", "ridge": "clip-statistics ridge"}, "trained_on": ["train"]}


def test_the_verdict_warns_for_a_model_that_loses_to_a_baseline():
    # a constant model scores like the mean predictor: below the ridge
    lines = verdict_lines(_metrics(0.88, 0.88))
    assert lines[0].startswith("Verdict: the retrained model does NOT beat the best baseline, the clip-statistics ridge")
    assert any(line.startswith("WARNING: the model does not beat the clip-statistics ridge on validation (-0.0700) "
                               "and test (-0.0700)") for line in lines)
    assert any("--time-budget" in line for line in lines)
    assert any("not even better than the mean predictor" in line for line in lines)
    # a model that wins on both
    lines = verdict_lines(_metrics(0.955, 0.957))
    assert lines == ["Verdict: the retrained model beats the best baseline, the clip-statistics ridge (chosen on "
                     "validation), in mean 1-MAE: on validation 0.9550 vs 0.9500 (+0.0050); on test 0.9570 vs "
                     "0.9500 (+0.0070)."]
    # a tiny loss on test only is still a warning, and the best baseline is chosen on validation
    lines = verdict_lines(_metrics(0.90, 0.8999, ridge_val=0.85, ridge_test=0.95, mean_val=0.89, mean_test=0.90))
    assert "the mean predictor (chosen on validation)" in lines[0]
    assert lines[1].startswith("WARNING: the model does not beat the mean predictor on test (-0.0001)")


def test_the_verdict_quotes_the_paired_intervals():
    metrics = _metrics(0.955, 0.957)
    metrics["intervals"] = {"test": [
        {"quantity": "model", "metric": "one_minus_mae", "estimate": 0.957, "low": 0.95, "high": 0.96},
        {"quantity": "model - baseline", "metric": "one_minus_mae", "estimate": 0.077, "low": 0.07, "high": 0.08},
        {"quantity": "model - ridge", "metric": "one_minus_mae", "estimate": 0.007, "low": -0.001, "high": 0.015},
        {"quantity": "model - ridge", "metric": "r2", "estimate": 0.1, "low": 0.0, "high": 0.2}]}
    lines = verdict_lines(metrics)
    assert lines[1] == ("Test 1-MAE 0.9570 [0.9500, 0.9600]; model minus each baseline, 95% cluster-bootstrap "
                        "interval over YouTube ids: mean predictor 0.0770 [0.0700, 0.0800]; clip-statistics ridge "
                        "+0.0070 [-0.0010, +0.0150].")
