"""Mixed precision and XLA of ``fi_models.fusion``: float32 outputs under ``mixed_float16``,
``compile_model(jit_compile=True)`` matching the graph model, the float32 default unchanged."""

import keras
import numpy as np
import pytest

from fi_data.traits import TRAITS
from fi_models.fusion import OUTPUT_NAME, build_model, compile_model

AUDIO_SHAPE = (8, 16, 1)        # tiny MFCC matrix (N, M, 1): fits the default conv2d branch
VIDEO_SHAPE = (2, 32, 32, 3)    # 2 frames of a 32x32 crop: fits the default 3-block vgg
SMALL = dict(traits=TRAITS, width=4, fusion_units=8)
MEAN, STD = [0.5, 0.45, 0.55, 0.5, 0.52], [0.1, 0.12, 0.11, 0.13, 0.1]


def tiny_batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    audio = rng.normal(size=(n, *AUDIO_SHAPE)).astype(np.float32)
    video = rng.uniform(0, 1, size=(n, *VIDEO_SHAPE)).astype(np.float32)
    y = rng.uniform(0.2, 0.8, size=(n, 5)).astype(np.float32)
    return (audio, video), y


@pytest.fixture
def mixed_float16():
    """Set the global ``mixed_float16`` policy for one test; always restore ``float32``."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("remedy", [False, True], ids=["dense_head", "label_scale_head"])
def test_mixed_float16_builds_float32_outputs_and_trains(mixed_float16, remedy):
    stats = dict(target_mean=MEAN, target_std=STD) if remedy else {}
    model = build_model(AUDIO_SHAPE, VIDEO_SHAPE, **SMALL, **stats)
    assert model.dtype_policy.name == "mixed_float16"
    assert model.get_layer("fusion_dense").compute_dtype == "float16"  # the body runs in float16
    assert model.get_layer(OUTPUT_NAME).compute_dtype == "float32"
    assert model.outputs[0].dtype == "float32"
    compile_model(model)
    # Keras wraps the optimizer in a LossScaleOptimizer by itself under mixed_float16.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = tiny_batch()
    losses = [float(np.ravel(model.train_on_batch(x, y))[0]) for _ in range(2)]
    assert np.isfinite(losses).all(), losses
    pred = model.predict(x, verbose=0)
    assert pred.dtype == np.float32 and pred.shape == (4, 5) and np.isfinite(pred).all()


def test_policy_restored_after_mixed_test():
    assert keras.mixed_precision.global_policy().name == "float32"


def test_jit_compile_matches_graph_model_and_fits():
    x, y = tiny_batch()
    plain = compile_model(build_model(AUDIO_SHAPE, VIDEO_SHAPE, **SMALL, target_mean=MEAN, target_std=STD))
    jitted = build_model(AUDIO_SHAPE, VIDEO_SHAPE, **SMALL, target_mean=MEAN, target_std=STD)
    jitted.set_weights(plain.get_weights())
    compile_model(jitted, jit_compile=True)
    assert jitted.jit_compile is True and plain.jit_compile is False
    np.testing.assert_allclose(jitted.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    history = jitted.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(jitted.predict(x, verbose=0)).all()


def test_compile_model_rejects_bad_jit_compile():
    with pytest.raises(ValueError, match="jit_compile"):
        compile_model(build_model(AUDIO_SHAPE, VIDEO_SHAPE, **SMALL), jit_compile="yes")


def test_float32_default_unchanged():
    assert keras.mixed_precision.global_policy().name == "float32"
    model = compile_model(build_model(AUDIO_SHAPE, VIDEO_SHAPE, **SMALL))
    assert model.outputs[0].dtype == "float32"
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"float32"}
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.jit_compile is False
    assert model.predict(tiny_batch()[0], verbose=0).dtype == np.float32


def test_the_search_settings_reach_every_model_the_hypermodel_builds(tmp_path):
    """--mixed-precision and --jit on: SearchConfig -> make_hypermodel -> the compiled model."""
    import keras_tuner as kt

    from fi_data.cache_format import write_synthetic_cache
    from search.config import SearchConfig
    from search.tuner import make_hypermodel

    cache = write_synthetic_cache(tmp_path / "cache", audio_shape=(24, 20, 1), frame_shape=(2, 36, 36, 3))
    config = SearchConfig(crop_size=32, batch_sizes=(4,), mixed_precision=True, jit_compile="on", verbose=0,
                          fixed_hyperparameters={"audio_branch": "conv2d", "backbone": "vgg", "vgg_depth": 1,
                                                 "vgg_width": 8, "fusion_units": 16})
    try:
        model = make_hypermodel(cache, config).build(kt.HyperParameters())
        assert model.jit_compile is True
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.get_layer("fusion_dense").compute_dtype == "float16"
        assert model.outputs[0].dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")
    plain = make_hypermodel(cache, SearchConfig(crop_size=32, batch_sizes=(4,), verbose=0,
                                                fixed_hyperparameters=config.fixed_hyperparameters))
    model = plain.build(kt.HyperParameters())
    assert model.get_layer("fusion_dense").compute_dtype == "float32"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
