"""The delivered model takes the cached arrays as they are (fi_models.serving)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fi_data.pipeline import eval_transform
from fi_data.traits import TRAITS
from fi_models.fusion import build_model
from fi_models.serving import CenterCropScale, serving_model, takes_cached_frames


def test_the_serving_model_equals_the_trained_model_on_the_validation_transform(tmp_path):
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(3, 12, 10, 1)).astype(np.float32)
    frames = rng.integers(0, 256, size=(3, 2, 37, 50, 3), dtype=np.uint8)  # odd margins: (37-32)//2, (50-32)//2
    model = build_model((12, 10, 1), (2, 32, 32, 3), traits=TRAITS, audio_branch="conv2d", backbone="vgg", depth=1,
                        width=4, fusion_units=8)
    expected = model.predict(tuple(t.numpy() for t in eval_transform(audio, frames, 32)), verbose=0)
    served = serving_model(model, (12, 10, 1), (2, 37, 50, 3), 32)
    assert takes_cached_frames(served) and not takes_cached_frames(model)
    np.testing.assert_allclose(served.predict((audio, frames), verbose=0), expected, rtol=1e-6, atol=1e-6)
    served.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert takes_cached_frames(loaded) and loaded.get_layer(model.name) is not None
    np.testing.assert_allclose(loaded.predict((audio, frames), verbose=0), expected, rtol=1e-6, atol=1e-6)


def test_the_crop_layer_is_the_exact_center_window_scaled():
    frames = np.arange(2 * 1 * 6 * 9 * 3, dtype=np.int64).reshape(2, 1, 6, 9, 3) % 256
    out = CenterCropScale(4)(frames.astype(np.uint8)).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 1, 4, 4, 3)
    np.testing.assert_array_equal(out, frames[:, :, 1:5, 2:6, :].astype(np.float32) / 255.0)
    with pytest.raises(ValueError, match="smaller than the 8x8 crop"):
        CenterCropScale(8)(np.zeros((1, 1, 6, 9, 3), np.uint8))
