"""kill -9 in the middle of a trial, then rerun: the search completes, in bounded processes.

The search is a 5-trial Hyperband (max_epochs 2, factor 2: two 1-epoch trials, the better
one continued to 2 epochs as trial 0002, then two fresh 2-epoch trials). A search process
(``python -m search.chunked``) is SIGKILLed once trial 0002 has begun training. Rerunning
``run_search`` with ``trials_per_process=2`` must reload the Keras Tuner project, re-run
trial 0002 from its parent's checkpoint and finish the rest in two fresh processes.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT
from fi_data.cache_format import write_synthetic_cache
from search.config import SearchConfig
from search.runs import prepare_run_dir
from search.job import run_search

CONFIG = dict(max_epochs=2, factor=2, crop_size=32, batch_sizes=(8,), early_stopping_patience=0,
              fixed_hyperparameters={"vgg_depth": 1, "vgg_width": 16, "temporal": "max", "fusion_units": 64})


def wait_for(condition, process, timeout_s=300.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the search process ended (status {process.returncode}) before the kill")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the trial to start training")
        time.sleep(0.02)


def test_kill_9_mid_trial_then_rerun_completes_every_trial(tmp_path, capfd):
    cache = write_synthetic_cache(tmp_path / "cache", audio_shape=(24, 1), frame_shape=(2, 36, 36, 3))
    run_dir = tmp_path / "run"
    config = SearchConfig(**CONFIG, trials_per_process=None)
    paths = prepare_run_dir(run_dir, config, cache)

    child = subprocess.Popen([sys.executable, "-m", "search.chunked", str(cache.path), str(run_dir)], cwd=ROOT,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    # The hparams callback writes its events file when training begins.
    started = paths.trials_tensorboard / "0002" / "execution0"
    wait_for(lambda: any(started.glob("events.out.tfevents.*")), child)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    trial = json.loads((paths.project_dir / "trial_0002" / "trial.json").read_text())
    assert trial["status"] == "RUNNING"  # killed mid-trial
    before = pd.read_csv(paths.trials_csv, dtype={"trial_id": str})
    assert list(before["status"]) == ["COMPLETED", "COMPLETED"]

    capfd.readouterr()
    result = run_search(cache, run_dir, SearchConfig(**CONFIG, trials_per_process=2))
    out = capfd.readouterr().out
    # The rerun ran the killed trial and the two remaining ones, nothing that had finished.
    assert [line.split()[2] for line in out.splitlines() if line.startswith("[search] trial ")] == \
        ["0002", "0003", "0004"]
    assert out.count("Reloading Tuner from") == 3  # two bounded processes, then the parent reads the results
    trials = pd.read_csv(paths.trials_csv, dtype={"trial_id": str, "tuner/trial_id": str})
    assert list(trials["trial_id"]) == ["0000", "0001", "0002", "0003", "0004"]
    assert list(trials["status"]) == ["COMPLETED"] * 5 and trials["score"].notna().all()
    assert list(trials["last_epoch"]) == [1, 1, 2, 2, 2]
    by_id = trials.set_index("trial_id")
    continued, parent = by_id.loc["0002"], by_id.loc[by_id.loc["0002", "tuner/trial_id"]]
    assert continued["tuner/initial_epoch"] == 1 and continued["learning_rate"] == parent["learning_rate"]
    assert parent["score"] == by_id.loc[["0000", "0001"], "score"].max()
    assert result.stopped_by == "search_finished" and result.best.score == trials["score"].max()
