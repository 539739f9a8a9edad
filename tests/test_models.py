"""fi_models: branches, fusion model, remedy layer, gradients, .keras round trip, errors, imports."""
import ast
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import fi_models
from fi_data.traits import TRAITS
from fi_models.audio import AUDIO_BRANCHES, MFCC_BRANCHES, build_audio_branch, compatible_audio_branches
from fi_models.fusion import OUTPUT_NAME, LabelScale, build_model, compile_model, target_statistics
from fi_models.metrics import ONE_MINUS_MAE
from fi_models.visual import (TEMPORAL_CHOICES, ImagenetCaffePreprocess, build_frame_encoder,
                              build_visual_branch)

AUDIO_SHAPE = (24, 20, 1)
MEAN_AUDIO_SHAPE = (24, 1)
VIDEO_SHAPE = (2, 32, 32, 3)
SMALL = dict(depth=2, width=4, temporal_units=8, fusion_units=16)
MEAN = np.array([0.566, 0.523, 0.476, 0.548, 0.520])
STD = np.array([0.147, 0.155, 0.152, 0.136, 0.154])


def audio_shape_for(kind):
    return MEAN_AUDIO_SHAPE if kind == "mean_dense" else AUDIO_SHAPE


def batch(audio_shape, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *audio_shape)).astype("float32"),
            rng.random((n, *VIDEO_SHAPE)).astype("float32"))


@pytest.mark.parametrize("kind", AUDIO_BRANCHES)
def test_audio_branch_forward(kind):
    shape = audio_shape_for(kind)
    branch = build_audio_branch(kind, shape, rnn_units=8, dense_units=12)
    out = branch(batch(shape)[0]).numpy()
    assert branch.name == "audio_branch"
    assert out.shape == (2, 12)
    assert np.isfinite(out).all()


def test_audio_branch_defaults_follow_the_assignment():
    blstm = build_audio_branch("blstm", AUDIO_SHAPE)
    bidirectional = [l for l in blstm.layers if isinstance(l, keras.layers.Bidirectional)]
    assert [l.forward_layer.units for l in bidirectional] == [64, 64]
    assert [l.forward_layer.return_sequences for l in bidirectional] == [True, False]
    conv1d = build_audio_branch("conv1d", AUDIO_SHAPE)
    assert [l.filters for l in conv1d.layers if isinstance(l, keras.layers.Conv1D)] == [32, 32, 64]
    conv2d = build_audio_branch("conv2d", AUDIO_SHAPE)
    assert [l.kernel_size for l in conv2d.layers if isinstance(l, keras.layers.Conv2D)] == [(3, 3), (3, 3)]
    for model in (blstm, conv1d, conv2d):
        assert model.output.shape == (None, 128)
    assert [l.rate for l in blstm.layers if isinstance(l, keras.layers.Dropout)] == [0.5]
    # conv2d on (24, 20, 1): two 2x2 poolings -> 6 x 5 x 32 = 960 features before Dense 128.
    assert conv2d.layers[-1].kernel.shape == (960, 128)


def test_audio_branch_shape_rules():
    assert compatible_audio_branches((24, 1319, 1)) == MFCC_BRANCHES
    assert compatible_audio_branches((24, 1)) == ("mean_dense",)
    assert compatible_audio_branches((24, 3, 1)) == ()
    with pytest.raises(ValueError, match=r"'conv2d' cannot take samples of shape \(24, 1\).*mean_dense"):
        build_audio_branch("conv2d", (24, 1))
    with pytest.raises(ValueError, match="unknown audio branch 'gru'"):
        build_audio_branch("gru", AUDIO_SHAPE)


@pytest.mark.parametrize("temporal", TEMPORAL_CHOICES)
def test_visual_branch_forward(temporal):
    branch = build_visual_branch(VIDEO_SHAPE, temporal=temporal, **{k: SMALL[k] for k in ("depth", "width", "temporal_units")})
    out = branch(batch(AUDIO_SHAPE)[1]).numpy()
    # vgg depth 2, width 4 -> 8 features per frame; LSTM/GRU -> temporal_units = 8 too.
    assert out.shape == (2, 8)
    assert np.isfinite(out).all()


def test_max_over_time_is_the_framewise_maximum():
    branch = build_visual_branch(VIDEO_SHAPE, depth=1, width=3, temporal="max")
    video = batch(AUDIO_SHAPE)[1]
    encoder = branch.layers[1].layer
    per_frame = np.stack([encoder(video[:, f]).numpy() for f in range(VIDEO_SHAPE[0])], axis=1)
    np.testing.assert_allclose(branch(video).numpy(), per_frame.max(axis=1), rtol=1e-6, atol=1e-6)


def test_vgg_widths_double_per_block_and_size_is_checked():
    encoder = build_frame_encoder((32, 32, 3), depth=3, width=32)
    assert [l.filters for l in encoder.layers if isinstance(l, keras.layers.Conv2D)] == [32, 64, 128]
    assert encoder.output.shape == (None, 128)
    with pytest.raises(ValueError, match="too small for 6 vgg blocks"):
        build_frame_encoder((32, 32, 3), depth=6)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_frame_encoder((32, 32, 3), weights="imagenet")


def test_resnet50_builds_with_random_weights_at_small_input():
    branch = build_visual_branch((2, 32, 32, 3), backbone="resnet50", weights=None)
    out = branch(batch(AUDIO_SHAPE)[1]).numpy()
    assert out.shape == (2, 2048)
    assert np.isfinite(out).all()
    # ResNet50 without its top has 23,587,712 parameters (Keras Applications table).
    assert branch.count_params() == 23_587_712
    with pytest.raises(ValueError, match="too small for ResNet50"):
        build_frame_encoder((16, 16, 3), backbone="resnet50")
    with pytest.raises(ValueError, match="weights='vgg16'"):
        build_frame_encoder((32, 32, 3), backbone="resnet50", weights="vgg16")


def test_imagenet_preprocessing_matches_keras_preprocess_input(tmp_path):
    rgb = np.array([[[0.0, 0.0, 0.0], [1.0, 0.5, 0.0]]], dtype="float32")
    inputs = keras.Input((2, 3))
    model = keras.Model(inputs, ImagenetCaffePreprocess()(inputs))
    model.save(tmp_path / "preprocess.keras")
    out = keras.saving.load_model(tmp_path / "preprocess.keras")(rgb).numpy()
    # BGR, 0-255, minus the Caffe means (103.939, 116.779, 123.68).
    np.testing.assert_allclose(out[0, 0], [-103.939, -116.779, -123.68], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0 - 103.939, 127.5 - 116.779, 255 - 123.68], rtol=1e-6)
    expected = keras.applications.resnet50.preprocess_input(rgb * 255.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)


# One full model per audio branch; together they cover every temporal choice and head.
MODEL_CASES = [
    dict(audio_branch="blstm", temporal="lstm", head="linear"),
    dict(audio_branch="conv1d", temporal="gru", head="sigmoid"),
    dict(audio_branch="conv2d", temporal="max", head="linear", remedy=True),
    dict(audio_branch="mean_dense", temporal="max", head="sigmoid", remedy=True),
]


def make_model(case, **overrides):
    case = dict(case)
    remedy = case.pop("remedy", False)
    stats = dict(target_mean=MEAN, target_std=STD) if remedy else {}
    return build_model(audio_shape_for(case["audio_branch"]), VIDEO_SHAPE, traits=TRAITS,
                       **{**SMALL, **case, **stats, **overrides})


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: f"{c['audio_branch']}-{c['temporal']}-{c['head']}")
def test_full_model_forward_and_every_weight_gets_a_gradient(case):
    keras.utils.set_random_seed(1)
    model = make_model(case, dropout=0.0)  # no dropout: a dropped unit would get no gradient
    assert [t.name for t in model.inputs] == ["audio", "video"]
    assert model.output.shape == (None, len(TRAITS))
    audio, video = batch(audio_shape_for(case["audio_branch"]), n=4)
    out = model((audio, video)).numpy()
    assert out.shape == (4, 5) and np.isfinite(out).all()
    if case["head"] == "sigmoid":
        assert ((out > 0) & (out < 1)).all()
    np.testing.assert_array_equal(model({"audio": audio, "video": video}).numpy(), out)

    y = np.random.default_rng(2).random((4, 5)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.abs(model((audio, video), training=True) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    # A weight cut off from the loss (e.g. a conv bias right before BatchNorm) gets None or
    # rounding noise of ~1e-6; the smallest real gradient here is ~1e-4 (seeded, deterministic).
    missing = [v.path for v, g in zip(model.trainable_variables, grads)
               if g is None or np.abs(tf.convert_to_tensor(g).numpy()).max() < 1e-5]
    assert model.trainable_variables and missing == []


def test_remedy_outputs_the_training_mean_at_z_zero_and_is_not_trainable():
    model = make_model(MODEL_CASES[2])
    z_layer = model.get_layer("standardized_traits")
    z_layer.set_weights([np.zeros_like(w) for w in z_layer.get_weights()])
    out = model(batch(AUDIO_SHAPE)).numpy()
    np.testing.assert_allclose(out, np.tile(MEAN, (2, 1)), rtol=1e-6)
    scale = model.get_layer(OUTPUT_NAME)
    assert isinstance(scale, LabelScale) and scale.weights == []


def test_label_scale_values():
    z = np.array([[0.0, 1.0, -2.0, 0.5, 3.0]], dtype="float32")
    linear = LabelScale(MEAN, STD)(z).numpy()
    np.testing.assert_allclose(linear, MEAN + STD * z, rtol=1e-6)
    sigmoid = LabelScale(MEAN, STD, activation="sigmoid")(z).numpy()
    logit = np.log(MEAN / (1 - MEAN)) + z * STD / (MEAN * (1 - MEAN))
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-logit)), rtol=1e-6)
    assert sigmoid[0, 0] == pytest.approx(MEAN[0], rel=1e-6)
    # Near z = 0 the sigmoid version follows mean + std * z (first-order Taylor).
    small = LabelScale(MEAN, STD, activation="sigmoid")(np.full((1, 5), 1e-3, "float32")).numpy()
    np.testing.assert_allclose((small - MEAN) / 1e-3, np.tile(STD, (1, 1)), rtol=2e-2)


def test_remedy_arguments_are_checked():
    with pytest.raises(ValueError, match="both target_mean and target_std"):
        build_model(AUDIO_SHAPE, VIDEO_SHAPE, traits=TRAITS, target_mean=MEAN)
    with pytest.raises(ValueError, match="std must be > 0"):
        LabelScale(MEAN, [0.1, 0.1, 0.0, 0.1, 0.1])
    with pytest.raises(ValueError, match="same number"):
        LabelScale(MEAN[:4], STD)
    with pytest.raises(ValueError, match=r"must have 5 values, one per trait of \('openness'"):
        build_model(AUDIO_SHAPE, VIDEO_SHAPE, traits=TRAITS, target_mean=MEAN[:4], target_std=STD[:4])
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        LabelScale([0.5, 0.5, 1.0, 0.5, 0.5], STD, activation="sigmoid")
    with pytest.raises(ValueError, match="unknown head 'tanh'"):
        build_model(AUDIO_SHAPE, VIDEO_SHAPE, traits=TRAITS, head="tanh")


def test_target_statistics():
    targets = np.array([[0.2, 0.4, 0.6, 0.8, 0.1], [0.4, 0.4, 0.2, 0.6, 0.3], [0.6, 0.7, 0.4, 0.4, 0.5]])
    mean, std = target_statistics(targets)
    np.testing.assert_allclose(mean, [0.4, 0.5, 0.4, 0.6, 0.3])
    np.testing.assert_allclose(std[0], np.sqrt((0.04 + 0 + 0.04) / 3))
    with pytest.raises(ValueError, match="constant training label"):
        target_statistics(np.tile([0.5, 0.1, 0.2, 0.3, 0.4], (4, 1)))
    with pytest.raises(ValueError, match=r"expected \(n >= 2, k >= 1\)"):
        target_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"expected \(n >= 2, k >= 1\)"):
        target_statistics(np.zeros(5))


def test_the_number_of_outputs_comes_from_the_traits_passed_in():
    traits = ("a", "b", "c")
    assert build_model(AUDIO_SHAPE, VIDEO_SHAPE, traits=traits, **SMALL).output.shape == (None, 3)
    mean, std = target_statistics(np.random.default_rng(0).uniform(0.2, 0.8, size=(6, 3)))
    assert mean.shape == std.shape == (3,)
    model = build_model(AUDIO_SHAPE, VIDEO_SHAPE, traits=traits, head="sigmoid", target_mean=mean, target_std=std,
                        **SMALL)
    out = model(batch(AUDIO_SHAPE)).numpy()
    assert out.shape == (2, 3) and ((out > 0) & (out < 1)).all()
    assert model.get_layer("standardized_traits").units == 3
    with pytest.raises(ValueError, match=r"must have 3 values, one per trait of \('a', 'b', 'c'\).*got 5 and 5"):
        build_model(AUDIO_SHAPE, VIDEO_SHAPE, traits=traits, target_mean=MEAN, target_std=STD)
    with pytest.raises(TypeError, match="traits"):
        build_model(AUDIO_SHAPE, VIDEO_SHAPE)  # the count is never assumed
    for bad, match in (("abc", "not the string 'abc'"), ((), "one or more"), (("a", ""), "non-empty"),
                       (("a", 1), "strings"), (("a", "a"), "distinct")):
        with pytest.raises(ValueError, match=match):
            build_model(AUDIO_SHAPE, VIDEO_SHAPE, traits=bad)


def _imported_modules(tree: ast.AST) -> list:
    """``(line, module)`` of every absolute import of ``tree``, ``importlib.import_module`` /
    ``__import__`` calls with a literal name included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def test_fi_models_imports_nothing_from_fi_data_or_search():
    package = Path(fi_models.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert {"fusion.py", "metrics.py", "serving.py"} <= {p.name for p in modules}
    offenders = [f"{path.relative_to(package.parent)}:{line} imports {name}"
                 for path in modules
                 for line, name in _imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)))
                 if name.split(".")[0] in ("fi_data", "search")]
    assert offenders == []


def test_keras_round_trip_keeps_predictions_remedy_loss_and_metric(tmp_path):
    keras.utils.set_random_seed(3)
    model = compile_model(make_model(MODEL_CASES[2]), learning_rate=1e-2, loss="ccc_mae")
    audio, video = batch(AUDIO_SHAPE, n=8, seed=4)
    y = np.random.default_rng(5).random((8, 5)).astype("float32")
    model.fit((audio, video), y, batch_size=4, epochs=1, verbose=0)  # BatchNorm statistics move
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict((audio, video), verbose=0), model.predict((audio, video), verbose=0))
    assert loaded.get_layer(OUTPUT_NAME).get_config()["mean"] == pytest.approx(MEAN.tolist())
    assert loaded.loss.name == "ccc_mae"
    assert loaded.evaluate((audio, video), y, verbose=0, return_dict=True)[ONE_MINUS_MAE] == pytest.approx(
        model.evaluate((audio, video), y, verbose=0, return_dict=True)[ONE_MINUS_MAE], abs=1e-6)


def test_compile_model_rejects_bad_settings():
    model = make_model(MODEL_CASES[2])
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        compile_model(model, loss="huber")
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        compile_model(model, learning_rate=0)
