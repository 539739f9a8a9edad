"""run_search.py: flag parsing, --help without TensorFlow, predict on new clips, the summary."""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import run_search
from fi_data.traits import TRAITS

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# Parsing


def _sample_value(action: argparse.Action) -> list[str]:
    """Command-line tokens that give ``action`` a valid, non-default value."""
    if action.nargs == 0:  # store_true
        return []
    if action.choices:
        return [str(list(action.choices)[-1])]
    samples = {"--fix": "vgg_depth=2", "--choices": "vgg_width=8,16", "--time-budget": "15m",
               "--worker-timeout": "5m", "--oracle-address": "127.0.0.1:8000", "--batch-sizes": "8,16",
               "--demo-clips": "12,4,4", "--passwords": "secret", "--seed": "3", "--patience": "2"}
    for option in action.option_strings:
        if option in samples:
            return [samples[option]]
    if action.type in (run_search.positive_int, int):
        return ["7"]
    return ["some/path"]


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", run_search.COMMANDS)
def test_every_documented_flag_parses(command):
    parser = run_search.build_parser()
    sub = _subparsers(parser)[command]
    argv = [command]
    for action in sub._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        argv += [action.option_strings[0], *_sample_value(action)]
    if command == "predict":
        argv += ["clip.mp4"]
    if command == "compare":
        argv += ["tuner_runs/a"]
    args = run_search.parse_args(argv)
    assert args.command == command
    for action in sub._actions:  # every flag took its sample value, not its default
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert getattr(args, action.dest) != action.default, action.option_strings[0]


def test_no_command_means_run_and_flags_reach_the_search_config():
    args = run_search.parse_args(["--max-epochs", "4", "--factor", "2", "--time-budget", "1.5h",
                                  "--batch-sizes", "8,4", "--fix", "vgg_depth=2", "--fix", "head=sigmoid",
                                  "--no-augment", "--seed", "5", "--tuner", "random", "--max-trials", "3",
                                  "--choices", "vgg_width=4,8", "--choices", "learning_rate=0.01,0.001"])
    assert args.command == "run"
    config = run_search.search_config(args)
    assert (config.max_epochs, config.factor, config.time_budget_s) == (4, 2, 5400.0)
    assert config.batch_sizes == (8, 4)
    assert config.fixed_hyperparameters == {"vgg_depth": 2, "head": "sigmoid"}
    assert (config.augment, config.seed, config.tuner, config.max_trials) == (False, 5, "random", 3)
    # the demo's CPU-sized choices, overridden by --choices and dropped where --fix holds a value
    expected = {k: v for k, v in run_search.DEMO_CHOICES.items() if k != "vgg_depth"}
    expected.update({"vgg_width": [4, 8], "learning_rate": [0.01, 0.001]})
    assert config.hyperparameter_choices == expected
    assert config.hyperparameter_choices["fusion_units"] == run_search.DEMO_CHOICES["fusion_units"]
    assert run_search.run_dir_for(args) == run_search.DEFAULT_RUNS_DIR / "demo"


def test_demo_and_real_data_defaults_differ():
    demo = run_search.search_config(run_search.parse_args([]))
    real = run_search.search_config(run_search.parse_args(["--data-dir", "/data/fi"]))
    assert demo.time_budget_s == run_search.DEMO_SEARCH_DEFAULTS["time_budget"]
    assert real.time_budget_s is None
    assert real.max_epochs == run_search.REAL_SEARCH_DEFAULTS["max_epochs"]
    no_budget = run_search.search_config(run_search.parse_args(["--no-time-budget"]))
    assert no_budget.time_budget_s is None
    args = run_search.parse_args(["--data-dir", "/data/fi", "--split", "speaker-disjoint"])
    assert run_search.run_dir_for(args).name == "fi-speaker-disjoint"


@pytest.mark.parametrize("bad", [["--time-budget", "soon"], ["--max-epochs", "0"], ["--fix", "vgg_depth"],
                                 ["--tuner", "grid"], ["--time-budget", "nan"], ["--time-budget", "inf"],
                                 ["--batch-sizes", "abc"], ["--batch-sizes", "16,0"]])
def test_bad_flag_values_are_refused_with_exit_status_2(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        run_search.parse_args(bad)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1  # one line, not the usage block


@pytest.mark.parametrize("flags, named", [
    (["--fix", "head=bogus"], "--fix head=bogus: expected one of ['linear', 'sigmoid']"),
    (["--fix", "vgg_depth=99"], "--fix vgg_depth=99: expected an integer in 1..5"),
    (["--choices", "vgg_width=abc,16"], "--choices vgg_width=abc: expected an integer >= 1"),
    (["--fix", "vgg_dpeth=2"], "--fix vgg_dpeth: unknown hyperparameter"),
    (["--fix", "backbone=resnet50"], "give --allow-resnet"),
    (["--fix", "dropout=1.5", "--choices", "dropout=0.1,0.2"], "dropout: both --fix and --choices"),
])
def test_bad_search_space_values_stop_before_any_data_work(flags, named, tmp_path, monkeypatch, capsys):
    def no_data_work(*args, **kwargs):
        raise AssertionError("the data stage started before the settings were checked")

    monkeypatch.setattr(run_search, "prepare", no_data_work)
    assert run_search.main(["run", "--runs-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no config.json left behind to refuse the corrected command


def test_help_works_without_starting_tensorflow():
    code = ("import runpy, sys\n"
            "sys.argv = ['run_search.py', '--help']\n"
            "try:\n    runpy.run_path('run_search.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'keras_tuner', 'librosa', 'cv2') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for flag in ("--data-dir", "--time-budget", "--max-epochs", "--passwords", "--overwrite"):
        assert flag in out.stdout  # the top-level help shows the default command's flags


# ---------------------------------------------------------------------------------------
# A finished run made in a fixture: real clips -> cache -> retrain -> run folder


def _make_clip(path: Path, seconds: float = 2.0, freq: int = 440, color: str = "red"):
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c={color}:s=64x36:r=10:d={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=16000:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from fi_data.cache import PreprocessParams, build_cache, open_path
    from fi_data.cache_format import open_cache
    from search.config import SearchConfig
    from search.train import retrain_and_evaluate

    tmp = tmp_path_factory.mktemp("run")
    clips_dir = tmp / "clips"
    clips_dir.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train"] * 6 + ["validation"] * 3 + ["test"] * 3):
        clip_id = f"-cliTest{i:03d}.00{i % 6}"
        path = clips_dir / f"{clip_id}.mp4"
        _make_clip(path, freq=200 + 50 * i, color=["red", "blue", "green"][i % 3])
        labels = dict(zip(TRAITS, rng.uniform(0.3, 0.7, len(TRAITS))))
        rows.append({"clip_id": clip_id, "split": split, **labels, "interview": 0.5, "source": str(path),
                     "status": "ok"})
    params = PreprocessParams(frame_height=36, frame_width=64)
    cache = open_cache(build_cache(pd.DataFrame(rows), tmp / "cache", params, open_clip=open_path, workers=1,
                                   progress=False))
    config = SearchConfig(max_epochs=2, batch_sizes=(4,), crop_size=32, early_stopping_patience=0)
    hps = {"audio_branch": "conv2d", "vgg_depth": 1, "vgg_width": 16, "temporal": "max", "fusion_units": 64,
           "batch_size": 4}
    run_dir = tmp / "tuner_runs" / "fixture"
    metrics = retrain_and_evaluate(cache, run_dir, hps, config)
    return {"run_dir": run_dir, "metrics": metrics, "clips_dir": clips_dir, "tmp": tmp, "cache": cache,
            "config": config, "hps": hps}


def test_predict_scores_the_good_clip_and_gives_the_reason_for_the_corrupt_one(finished_run, tmp_path):
    from search.predict import predict_clips

    good = tmp_path / "new_person.mp4"
    _make_clip(good, seconds=3.0, freq=330)
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # no moov atom
    table = predict_clips(finished_run["run_dir"], [good, corrupt])
    assert list(table["clip"]) == ["new_person", "broken"]
    ok = table[table["status"] == "ok"]
    assert len(ok) == 1 and ok.iloc[0]["clip"] == "new_person"
    values = ok[list(TRAITS)].to_numpy(dtype=float)
    assert np.isfinite(values).all()
    bad = table[table["clip"] == "broken"].iloc[0]
    assert bad["status"] != "ok" and bad["status"]  # a reason, e.g. unreadable_container
    assert np.isnan(bad[list(TRAITS)].to_numpy(dtype=float)).all()


def test_predict_matches_the_model_on_the_cached_test_clip(finished_run):
    """The same clip through predict and through the cache + test pipeline gives the same scores."""
    from search.predict import predict_clips

    predictions = pd.read_csv(finished_run["run_dir"] / "predictions.csv")
    test_row = predictions[predictions["split"] == "test"].iloc[0]
    clip = finished_run["clips_dir"] / f"{test_row['clip_id']}.mp4"
    table = predict_clips(finished_run["run_dir"], [clip])
    got = table.iloc[0][list(TRAITS)].to_numpy(dtype=float)
    want = test_row[[f"pred_{t}" for t in TRAITS]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_fresh_process_loads_the_delivered_model(finished_run):
    """predict in a new process (nothing imported before it) can load best_model.keras: every
    custom layer it holds is registered by search.predict.load_trained."""
    code = ("import sys; from search.predict import load_trained; model, record = load_trained(sys.argv[1]); "
            "print([str(t.dtype) for t in model.inputs])")
    done = subprocess.run([sys.executable, "-c", code, str(finished_run["run_dir"])], capture_output=True, text=True,
                          cwd=Path(run_search.__file__).parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['float32', 'uint8']"


def test_predict_still_scores_a_run_folder_of_an_older_version(finished_run, tmp_path):
    """A best_model.keras saved before the crop moved into the model takes float crops; predict
    replays the recorded crop for it and gives the same scores."""
    import shutil

    import keras

    from fi_models.serving import takes_cached_frames
    from search.predict import predict_clips

    old = tmp_path / "old_run"
    shutil.copytree(finished_run["run_dir"], old)
    served = keras.saving.load_model(old / "best_model.keras")
    inner = next(layer for layer in served.layers if isinstance(layer, keras.Model))
    inner.save(old / "best_model.keras")  # what older versions saved: inputs (audio, float32 crops)
    assert not takes_cached_frames(keras.saving.load_model(old / "best_model.keras"))
    predictions = pd.read_csv(old / "predictions.csv")
    test_row = predictions[predictions["split"] == "test"].iloc[0]
    table = predict_clips(old, [finished_run["clips_dir"] / f"{test_row['clip_id']}.mp4"])
    np.testing.assert_allclose(table.iloc[0][list(TRAITS)].to_numpy(dtype=float),
                               test_row[[f"pred_{t}" for t in TRAITS]].to_numpy(dtype=float), atol=1e-4)


def test_predict_command_writes_csv_and_json(finished_run, tmp_path, capsys):
    good = tmp_path / "someone.mp4"
    _make_clip(good)
    out = tmp_path / "preds"
    status = run_search.main(["predict", "--run", str(finished_run["run_dir"]), "--out", str(out), str(good)])
    assert status == 0
    table = pd.read_csv(f"{out}.csv")
    records = json.loads(Path(f"{out}.json").read_text())
    assert list(records["traits"]) == list(TRAITS)
    assert records["clips"][0]["clip"] == "someone"
    assert records["clips"][0]["openness"] == pytest.approx(table.loc[0, "openness"], abs=1e-9)
    assert "1 of 1 clips scored" in capsys.readouterr().out


def test_predict_scores_the_good_clips_beside_missing_inputs_and_keeps_earlier_predictions(
        finished_run, tmp_path, capsys):
    """A missing input is a row with its reason, a clip given twice is scored once, the flags
    get a legend, a demo-trained run says so, and an existing --out is not replaced silently."""
    from search.runs import save_data_origin

    run_dir = finished_run["run_dir"]
    folder = tmp_path / "new"
    folder.mkdir()
    good = folder / "someone.mp4"
    _make_clip(good, seconds=0.5)  # short: padding dominates its audio, so it is flagged
    out = tmp_path / "preds"
    save_data_origin(run_dir, tmp_path / "demo-data", demo=True)
    try:
        status = run_search.main(["predict", "--run", str(run_dir), "--out", str(out), str(folder), str(good),
                                  str(tmp_path / "gone.mp4")])
    finally:
        (run_dir / "data.json").unlink()
    printed = capsys.readouterr().out
    assert status == 0
    table = pd.read_csv(f"{out}.csv")
    assert list(table["clip"]) == [str(tmp_path / "gone.mp4"), "someone"]
    assert table.loc[0, "status"] == "missing_file: no such file or folder"
    assert table.loc[1, "status"] == "ok" and not np.isnan(table.loc[1, "openness"])
    assert "1 of 2 clips scored" in printed
    assert "short_clip: " in printed.split("flags: ", 1)[1]  # the legend names the flag it shows
    assert "trained on the generated demo dataset" in printed
    # Same --out again: refused without --overwrite, the earlier files untouched.
    before = Path(f"{out}.csv").read_bytes()
    assert run_search.main(["predict", "--run", str(run_dir), "--out", str(out), str(good)]) == 2
    assert "--overwrite" in capsys.readouterr().err and Path(f"{out}.csv").read_bytes() == before
    assert run_search.main(["predict", "--run", str(run_dir), "--out", str(out), "--overwrite", str(good)]) == 0
    assert list(pd.read_csv(f"{out}.csv")["clip"]) == ["someone"]


def test_predict_without_a_finished_run_is_a_clear_error(tmp_path, capsys):
    status = run_search.main(["predict", "--run", str(tmp_path), str(tmp_path / "x.mp4")])
    assert status == 2
    assert "best_model.keras" in capsys.readouterr().err


def test_summary_numbers_equal_metrics_json(finished_run):
    from search.summary import format_summary

    metrics = json.loads((finished_run["run_dir"] / "metrics.json").read_text())
    text = format_summary(metrics, finished_run["run_dir"])
    for name in (*TRAITS, "mean"):
        line = next(l for l in text.splitlines() if l.startswith(name + " "))
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", line)]
        s = metrics["scores"]["test"][name]
        expected = [s["one_minus_mae"], s["baseline_one_minus_mae"], s["ridge_one_minus_mae"],
                    s["identity_one_minus_mae"], s["r2"], s["ridge_r2"], s["ccc"], s["spread"]]
        np.testing.assert_allclose(numbers, expected, atol=5e-5)
    assert f"{metrics['scores']['validation']['mean']['one_minus_mae']:.4f}" in text
    assert text.strip().startswith("Verdict: the retrained model")
    assert f"tensorboard --logdir {finished_run['run_dir'] / 'tensorboard'}" in text


_ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fi_annotations"


@pytest.mark.skipif(not _ANNOTATIONS.is_dir(), reason=f"{_ANNOTATIONS} is absent (the real annotation pickles)")
def test_baselines_command_needs_only_the_annotations(tmp_path, capsys):
    import shutil

    for pkl in _ANNOTATIONS.glob("*.pkl"):
        shutil.copy(pkl, tmp_path / pkl.name)
    assert run_search.main(["baselines", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    test_line = next(line for line in out.splitlines() if line.startswith("test "))
    assert test_line.split()[1:4] == ["2000", "0.8814", "0.9049"]


def test_the_baselines_and_intervals_land_in_metrics_and_the_report(finished_run):
    from search.report import write_report

    run_dir = finished_run["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("train", "validation", "test"):
        mean = metrics["scores"][split]["mean"]
        for key in ("ridge_one_minus_mae", "ridge_r2", "identity_one_minus_mae", "ccc", "pcc", "baseline_ccc"):
            assert key in mean
    assert metrics["ridge"]["variant"] in ("audio", "video", "both")
    quantities = {r["quantity"] for r in metrics["intervals"]["test"]}
    assert quantities == {"model", "baseline", "ridge", "identity", "model - baseline", "model - ridge",
                          "model - identity"}
    text = write_report(run_dir).read_text()
    assert text.splitlines()[2].startswith("Verdict: the retrained model")
    assert f"{metrics['scores']['test']['mean']['ridge_one_minus_mae']:.4f}" in text
    assert "identity lookup" in text and "Test, 95% intervals" in text and "model − clip-statistics ridge" in text


def test_compare_two_runs_writes_markdown_and_csv(finished_run, tmp_path, capsys):
    import shutil

    first = finished_run["run_dir"]
    second = tmp_path / "second"
    shutil.copytree(first, second)
    out = tmp_path / "cmp"
    assert run_search.main(["compare", str(first), str(second), "--out", str(out)]) == 0
    table = pd.read_csv(out.with_suffix(".csv"))
    assert list(table["run"]) == ["fixture", "second"]
    metrics = json.loads((first / "metrics.json").read_text())
    assert table.loc[0, "test 1-MAE"].startswith(f"{metrics['scores']['test']['mean']['one_minus_mae']:.4f} [")
    assert "| run | dataset |" in out.with_suffix(".md").read_text()
    assert run_search.main(["compare", str(tmp_path / "nothing")]) == 2
    assert "metrics.json: missing" in capsys.readouterr().err


def test_the_printed_tensorboard_command_runs_this_environments_tensorboard(monkeypatch):
    from search.runs import tensorboard_command

    monkeypatch.chdir(ROOT)
    program, rest = tensorboard_command("tuner_runs/x/tensorboard").split(" ", 1)
    assert rest == "--logdir tuner_runs/x/tensorboard"
    assert (ROOT / program).resolve() == (Path(sys.executable).parent / "tensorboard").resolve()


def _searched_copy(finished_run, folder, config):
    """A copy of the fixture's run as a search would leave it (config.json, best_hyperparameters.json)."""
    import shutil

    from search.runs import BestHyperparameters, RunPaths, cache_identity

    shutil.copytree(finished_run["run_dir"], folder)
    config.save(RunPaths(folder).config, cache=cache_identity(finished_run["cache"]))
    BestHyperparameters(values=finished_run["hps"], score=0.9, trial_id="0007").save(
        RunPaths(folder).best_hyperparameters)
    return folder


def test_rerunning_a_finished_run_prints_its_summary_and_continue_searches_on(finished_run, tmp_path,
                                                                              monkeypatch, capsys):
    args = ["run", "--runs-dir", str(tmp_path), "--run-name", "done"]
    _searched_copy(finished_run, tmp_path / "done", run_search.search_config(run_search.parse_args(args)))

    def data_work(*a, **k):
        raise RuntimeError("the data stage started")

    monkeypatch.setattr(run_search, "prepare", data_work)
    assert run_search.main(args) == 0
    out = capsys.readouterr().out
    test_mean = finished_run["metrics"]["scores"]["test"]["mean"]["one_minus_mae"]
    assert "is finished" in out and "--continue" in out and f"{test_mean:.4f}" in out
    with pytest.raises(RuntimeError, match="the data stage started"):
        run_search.main([*args, "--continue"])
    with pytest.raises(RuntimeError, match="the data stage started"):  # other settings: not this run's summary
        run_search.main([*args, "--seed", "5"])


def test_retrain_writes_beside_the_run_and_its_output_is_a_run_folder(finished_run, tmp_path, capsys):
    run = _searched_copy(finished_run, tmp_path / "searched", finished_run["config"])
    before = (run / "metrics.json").read_bytes()
    assert run_search.main(["retrain", "--from", str(run), "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    beside = tmp_path / "searched-retrain"
    assert f"rebuilding the configuration of trial 0007 of {run} (validation 1-MAE 0.9000) into {beside}" in out
    assert (run / "metrics.json").read_bytes() == before  # the search run is untouched
    assert run_search.main(["retrain", "--from", str(run)]) == 2  # a finished retraining is not redone silently
    assert "already holds a finished retraining" in capsys.readouterr().err
    assert run_search.main(["retrain", "--from", str(run), "--overwrite", "--verbose", "0"]) == 0
    again = tmp_path / "again"  # the retraining's folder is itself a source for retrain and predict
    assert run_search.main(["retrain", "--from", str(beside), "--run-dir", str(again), "--verbose", "0",
                            "--patience", "1"]) == 0
    patience = {folder: json.loads((folder / "config.json").read_text())["settings"]["early_stopping_patience"]
                for folder in (run, beside, again)}
    assert patience == {run: finished_run["config"].early_stopping_patience,  # kept from the run, unless given
                        beside: finished_run["config"].early_stopping_patience, again: 1}
    clip = next(finished_run["clips_dir"].glob("*.mp4"))
    assert run_search.main(["predict", "--run", str(again), str(clip), "--out", str(tmp_path / "p")]) == 0
