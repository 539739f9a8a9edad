"""One definition per setting: flags, help and validation made from dataclass fields."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

import run_search
from fi_data.params import CLI_PREPROCESSING, PreprocessParams
from fi_data.settings import (add_setting_arguments, choice_problems, default_of, flag_of, help_of, positive_int,
                              setting, setting_values)
from search.config import TUNER_SPECS, TUNERS, SearchConfig


@dataclasses.dataclass(frozen=True)
class _Toy:
    size: int = setting(3, parse=positive_int, help="a size in pixels")
    mode: str = setting("a", choices=("a", "b"), help="a mode")
    fancy: bool = setting(False, help="turn on the fancy part")
    plain: bool = setting(True, help="no plain part")
    timeout_s: float = setting(2.0, flag="--timeout", default_text="2s", help="how long")
    hidden: int = 5


def _parse(argv):
    parser = argparse.ArgumentParser()
    names = ("size", "mode", "fancy", "plain", "timeout_s")
    add_setting_arguments(parser, _Toy, names)
    return _Toy(**setting_values(parser.parse_args(argv), names)), parser


def test_a_new_setting_becomes_a_flag_with_its_default_help_and_choices():
    toy, parser = _parse([])
    assert toy == _Toy()
    toy, _ = _parse(["--size", "9", "--mode", "b", "--fancy", "--no-plain", "--timeout", "4.5"])
    assert toy == _Toy(size=9, mode="b", fancy=True, plain=False, timeout_s=4.5)
    text = parser.format_help()
    assert "a size in pixels (default: 3)" in text and "how long (default: 2s)" in text
    assert "--no-plain" in text and "--fancy" in text and "{a,b}" in text and "--timeout TIMEOUT" in text
    with pytest.raises(SystemExit):
        _parse(["--size", "0"])  # positive_int refuses it
    with pytest.raises(SystemExit):
        _parse(["--mode", "c"])


def test_choice_problems_name_the_setting_and_its_choices():
    assert choice_problems(_Toy()) == []
    bad = dataclasses.replace(_Toy(), mode="z")
    assert choice_problems(bad) == ["mode must be one of ('a', 'b'), got 'z'"]
    with pytest.raises(ValueError, match=r"PreprocessParams.representation must be one of .*'mfcc'"):
        PreprocessParams(representation="wav")
    with pytest.raises(ValueError, match="tuner must be one of"):
        SearchConfig(tuner="grid")


def test_a_field_not_declared_as_a_setting_is_a_programming_error():
    with pytest.raises(TypeError, match="hidden is not declared with setting"):
        add_setting_arguments(argparse.ArgumentParser(), _Toy, ["hidden"])
    with pytest.raises(TypeError, match="has no field 'nope'"):
        help_of(_Toy, "nope")


def test_the_command_line_defaults_are_the_dataclass_defaults():
    parser = run_search.build_parser()
    args = parser.parse_args(["run"])
    assert PreprocessParams(**setting_values(args, CLI_PREPROCESSING)) == PreprocessParams()
    for name in run_search.SEARCH_SETTINGS:
        assert getattr(args, name) == default_of(SearchConfig, name), name
    assert flag_of(SearchConfig, "augment") == "--no-augment"
    assert flag_of(SearchConfig, "early_stopping_patience") == "--patience"
    real = run_search.search_config(parser.parse_args(["run", "--data-dir", "x"]))
    assert real.max_epochs == SearchConfig().max_epochs and real.batch_sizes == SearchConfig().batch_sizes
    assert real.verbose == SearchConfig().verbose == 1


def test_every_tuner_row_names_real_classes_and_oracle_arguments():
    from search.tuner import _TUNER_CLASSES

    assert TUNERS == tuple(spec.name for spec in TUNER_SPECS) and TUNERS[0] == "hyperband"
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    for spec in TUNER_SPECS:
        oracle, tuner = _TUNER_CLASSES[spec.oracle], _TUNER_CLASSES[spec.tuner]
        accepted = set(inspect.signature(oracle.__init__).parameters)
        for keyword, field in spec.settings.items():
            assert field in fields and keyword in accepted, (spec.name, keyword)
        assert hasattr(tuner, "run_trial")


@pytest.mark.parametrize("text, value", [("vgg_depth=2", 2), ("learning_rate=1e-3", 1e-3), ("x=0.5", 0.5),
                                          ("flag=True", True), ("flag=false", False), ("backbone=vgg", "vgg"),
                                          ("name=[1, 2]", "[1, 2]")])
def test_fixed_values_are_read_as_python_literals(text, value):
    name, parsed = run_search._fixed_value(text)
    assert (name, parsed) == (text.split("=")[0], value) and type(parsed) is type(value)
