"""The HyperModel's space settings: fixed values and narrowed choices (search.hypermodel)."""

import keras_tuner as kt
import pytest

from fi_data.cache_format import write_synthetic_cache
from search.hypermodel import PersonalityHyperModel


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("cache"), {"train": 4, "validation": 2, "test": 2},
                                 audio_shape=(24, 20, 1), frame_shape=(6, 36, 36, 3))


def test_choices_replace_the_default_range_and_the_first_is_the_default(cache):
    model = PersonalityHyperModel(cache, crop_size=32, choices={"vgg_width": [8, 16], "learning_rate": [0.01, 0.001]},
                                  fixed={"vgg_depth": 2, "backbone": "vgg"})
    hp = kt.HyperParameters()
    values = model.declare(hp)
    space = {p.name: p for p in hp.space}
    assert isinstance(space["vgg_width"], kt.engine.hyperparameters.Choice)
    assert list(space["vgg_width"].values) == [8, 16]
    assert list(space["learning_rate"].values) == [0.01, 0.001]
    assert isinstance(space["vgg_depth"], kt.engine.hyperparameters.Fixed)
    assert (values["vgg_width"], values["learning_rate"], values["vgg_depth"]) == (8, 0.01, 2)
    # choices stay conditional: vgg_width only matters for the vgg backbone
    assert space["vgg_width"].conditions and space["vgg_width"].conditions[0].name == "backbone"


@pytest.mark.parametrize("kwargs, message", [
    ({"choices": {"vgg_breadth": [8]}}, "unknown"),
    ({"choices": {"vgg_width": []}}, "no values given"),
    ({"choices": {"vgg_width": [8]}, "fixed": {"vgg_width": 16}}, "both --fix and --choices"),
])
def test_bad_space_settings_are_refused_by_name(cache, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PersonalityHyperModel(cache, crop_size=32, **kwargs)


def test_the_default_model_is_the_statistics_model_with_the_ridge_path(cache):
    model = PersonalityHyperModel(cache, crop_size=32)
    hp = kt.HyperParameters()
    values = model.declare(hp)
    assert (values["audio_branch"], values["backbone"], values["ridge_path"]) == ("stats", "stats", True)
    # no convolution settings are active for it, and temporal pooling only applies to frame CNNs
    assert not {"vgg_depth", "vgg_width", "temporal", "temporal_units"} & set(values)
    space = {p.name: p for p in hp.space}
    assert "vgg" in space["backbone"].values and "conv2d" in space["audio_branch"].values
