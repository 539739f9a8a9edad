"""The clip-statistics ridge (search.baselines), the statistics layers, the ridge path, the verdict."""

import dataclasses

import numpy as np
import pytest

from fi_data.cache_format import SplitArrays, write_split, write_synthetic_cache
from fi_data.traits import TRAITS
from fi_models.fusion import build_model, target_statistics
from fi_models.fusion import StatisticsInit
from fi_models.statistics import APPEARANCE_EPS, AudioStatistics, FaceAppearance, FrameStatistics
from search.baselines import clip_statistics, face_appearance, ridge_baseline, statistics_init
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


def test_face_appearance_computes_the_documented_numbers():
    faces = np.zeros((2, 2, 4, 4, 3), np.uint8)
    faces[0, 0, :2, :2] = 255  # clip 0: top-left cell white in the first frame only
    faces[1, :, 2:, 2:, 0] = 200  # clip 1: bottom-right cell red in both frames
    out = np.asarray(FaceAppearance(grid=2)(faces))
    assert out.shape == (2, 4) and np.isfinite(out).all()
    for row, cells in zip(out, ([0.5, 0, 0, 0], [0, 0, 0, 0.299 * 200 / 255])):
        cells = np.asarray(cells)
        np.testing.assert_allclose(row, cells / (cells.mean() + APPEARANCE_EPS) - 1, rtol=1e-5)
    # a darker copy of the same face gives the same picture (up to the epsilon); a uniform crop gives zeros
    grey = 100 + faces // 4
    np.testing.assert_allclose(np.asarray(FaceAppearance(grid=2)(grey / 2 / 255)),
                               np.asarray(FaceAppearance(grid=2)(grey)), rtol=0.01, atol=1e-3)
    np.testing.assert_allclose(np.asarray(FaceAppearance(grid=2)(np.full((1, 2, 4, 4, 3), 90, np.uint8))), 0,
                               atol=1e-3)
    np.testing.assert_array_equal(np.asarray(FaceAppearance(grid=2)(np.zeros((1, 2, 4, 4, 3), np.uint8))), -1)
    assert np.asarray(FaceAppearance()(np.zeros((1, 1, 20, 20, 3), np.float32))).shape == (1, 256)
    with pytest.raises(ValueError, match="smaller than the 16x16 grid"):
        FaceAppearance()(np.zeros((1, 1, 12, 12, 3), np.float32))


def _face_cache(tmp_path, seed: int = 0):
    """A cache with face crops whose upper half is lighter than the lower one by an amount that
    carries agreeableness (a shape, invisible to the clip statistics); each crop's overall brightness
    is a random nuisance."""
    sizes = {"train": 160, "validation": 40, "test": 60}
    cache = write_synthetic_cache(tmp_path, sizes, audio_shape=AUDIO, frame_shape=FRAMES, seed=seed, face_size=24,
                                  params={"frames": "both"})
    rng = np.random.default_rng(seed + 1)
    for split, n in sizes.items():
        arrays = cache.split(split)
        level = rng.uniform(size=n)
        gain = rng.uniform(0.6, 1.2, size=(n, 1, 1, 1, 1))
        faces = np.full((n, FRAMES[0], 24, 24, 3), 120.0)
        faces[:, :, :12] += 60 * level.reshape(n, 1, 1, 1, 1)
        faces[:, :, 12:] -= 60 * level.reshape(n, 1, 1, 1, 1)
        faces = np.clip(faces * gain + rng.normal(0, 8, faces.shape), 0, 255).astype(np.uint8)
        targets = np.asarray(arrays.targets).copy()
        targets[:, TRAITS.index("agreeableness")] = 0.3 + 0.4 * level
        write_split(tmp_path, SplitArrays(split, np.asarray(arrays.audio), np.asarray(arrays.frames), targets,
                                          tuple(arrays.clip_ids), faces))
    from fi_data.cache_format import open_cache
    return open_cache(tmp_path)


def test_the_ridge_path_reads_the_face_appearance_of_face_crops(tmp_path):
    cache = _face_cache(tmp_path)
    train, test = cache.split("train"), cache.split("test")
    mean, std = target_statistics(np.asarray(train.targets))
    k = TRAITS.index("agreeableness")
    y = np.asarray(test.targets)[:, k]
    from fi_data.pipeline import eval_transform
    audio, video = eval_transform(np.asarray(test.audio), np.asarray(test.frames), 20)
    face = eval_transform(np.asarray(test.audio), np.asarray(test.faces), 20)[1]
    predictions = {}
    for source in (None, "face"):
        init = statistics_init(train, mean, std, crop_size=20, appearance_from=source)
        assert init.appearance_from == source
        model = build_model(AUDIO, (FRAMES[0], 20, 20, 3), traits=TRAITS, audio_branch="stats", backbone="stats",
                            fusion_units=8, target_mean=mean, target_std=std, statistics=init,
                            face_shape=(FRAMES[0], 20, 20, 3), face_depth=1, face_width=4)
        assert ("face_appearance" in [layer.name for layer in model.layers]) == (source == "face")
        predictions[source] = model.predict((audio, video, face), verbose=0)[:, k]
    # the same ridge in NumPy: [audio, video, appearance] standardized with the recorded moments
    a, v = clip_statistics(test, crop_size=20)
    cells = face_appearance(test, "face", crop_size=20)
    x = np.hstack([a, v, cells])
    moments_mean = np.hstack([init.audio_mean, init.video_mean, init.appearance_mean])
    moments_var = np.hstack([init.audio_var, init.video_var, init.appearance_var])
    x = (x - moments_mean) / np.sqrt(np.where(moments_var > 1e-12, moments_var, 1))
    expected = mean[k] + std[k] * (x @ np.asarray(init.ridge_kernel)[:, k] + init.ridge_bias[k])
    np.testing.assert_allclose(predictions["face"], expected, atol=2e-4)
    r2 = {s: 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum() for s, p in predictions.items()}
    assert r2["face"] > 0.9 and r2[None] < 0.3, r2
    # the clip-statistics baseline stays a baseline of clip statistics: it never reads the faces
    assert ridge_baseline(cache)["n_features"] in (72, 36, 108)


def test_face_appearance_needs_its_source_and_complete_moments(tmp_path):
    cache = write_synthetic_cache(tmp_path, audio_shape=AUDIO, frame_shape=FRAMES)
    with pytest.raises(ValueError, match="has no face crops"):
        face_appearance(cache.split("train"), "face", crop_size=20)
    with pytest.raises(ValueError, match="unknown face appearance source"):
        face_appearance(cache.split("train"), "mouth", crop_size=20)
    init = statistics_init(cache.split("train"), np.full(5, 0.5), np.full(5, 0.1), crop_size=20, appearance_from="video")
    assert init.appearance_from == "video" and len(init.appearance_mean) == 256
    assert np.asarray(init.ridge_kernel).shape == (72 + 36 + 256, 5)
    small = statistics_init(cache.split("train"), np.full(5, 0.5), np.full(5, 0.1), crop_size=12, appearance_from="video")
    assert small.appearance_from is None  # crops under the 16x16 grid get no appearance cells
    with pytest.raises(ValueError, match="appearance_from='mouth'"):
        StatisticsInit((0.0,), (1.0,), (0.0,), (1.0,), appearance_from="mouth")
    with pytest.raises(ValueError, match="together"):
        StatisticsInit((0.0,), (1.0,), (0.0,), (1.0,), appearance_from="face")
    with pytest.raises(ValueError, match="give face_shape"):
        build_model(AUDIO, (FRAMES[0], 20, 20, 3), traits=TRAITS, audio_branch="stats", backbone="stats",
                    target_mean=np.full(5, 0.5), target_std=np.full(5, 0.1),
                    statistics=dataclasses.replace(init, appearance_from="face"))


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


@pytest.mark.parametrize("frames, source", [("whole", None), ("face", "video"), ("both", "face")])
def test_the_hypermodel_reads_face_appearance_where_the_crops_are(tmp_path, frames, source):
    import keras_tuner as kt

    from search.hypermodel import PersonalityHyperModel

    cache = write_synthetic_cache(tmp_path, audio_shape=AUDIO, frame_shape=FRAMES, params={"frames": frames},
                                  face_size=24 if frames == "both" else None)
    hypermodel = PersonalityHyperModel(cache, batch_sizes=(4,), crop_size=20)
    assert hypermodel.appearance_from == source
    model = hypermodel.build(kt.HyperParameters())  # defaults: standardized targets with the ridge path
    assert ("face_appearance" in [layer.name for layer in model.layers]) == (source is not None)
