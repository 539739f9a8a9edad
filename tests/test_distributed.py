"""Tests of search/distributed.py: Keras Tuner's chief/worker mode, liveness, MirroredStrategy.

- The role flags and Keras Tuner's ``KERASTUNER_*`` environment, both ways.
- The chief's servicer, called directly with Keras Tuner's gRPC messages and a fake clock:
  a silent worker's trial goes back to the queue, a late result is dropped, the time budget
  and the failure limit turn workers away.
- One real search on 127.0.0.1: a chief and two workers (processes of at most 3 trials)
  run a 5-trial Hyperband; one worker is SIGKILLed in the middle of a trial; the other
  finishes it and the search completes with every trial ended exactly once.
- ``strategy="mirrored"``: each trial's model is built under a MirroredStrategy, on the CPU
  with one replica.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import tensorflow as tf
from keras_tuner.src import protos
from keras_tuner.src.distribute.oracle_chief import exit_chief
from keras_tuner.src.engine.trial import Trial, TrialStatus

import run_search
from conftest import ROOT
from fi_data.cache_format import write_synthetic_cache
from search.config import SearchConfig
from search.distributed import ChiefServicer, Role, reclaim_silent_workers, run_worker
from search.hypermodel import PersonalityHyperModel
from search.runs import RunPaths, prepare_run_dir
from search.tuner import SearchFailedError, make_hypermodel, make_tuner
from search.job import run_search as run_search_on_cache

TINY = {"vgg_depth": 1, "vgg_width": 16, "temporal": "max", "fusion_units": 64}
# Hyperband with max_epochs 2, factor 2: two 1-epoch trials, the better one continued to 2
# epochs, two fresh 2-epoch trials: 5 trials (tests/test_search_resume.py).
SETTINGS = dict(max_epochs=2, factor=2, crop_size=32, batch_sizes=[8], eval_batch_size=8,
                early_stopping_patience=0, fixed_hyperparameters=TINY)
SERVICE = protos.get_service()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("cache"), audio_shape=(24, 20, 1),
                                 frame_shape=(6, 36, 36, 3))


# --- roles and the environment --------------------------------------------------------

def test_roles_map_to_keras_tuner_environment_and_back():
    chief = Role("chief", "127.0.0.1:8000")
    worker = Role("worker", "chief-host.example:8000", "gpu-box-1")
    assert chief.environment() == {"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1",
                                   "KERASTUNER_ORACLE_PORT": "8000"}
    assert worker.environment() == {"KERASTUNER_TUNER_ID": "gpu-box-1", "KERASTUNER_ORACLE_IP": "chief-host.example",
                                    "KERASTUNER_ORACLE_PORT": "8000"}
    assert Role("worker", "[::1]:9000", "w").environment()["KERASTUNER_ORACLE_IP"] == "[::1]"
    for role in (chief, worker, Role()):
        env = {"PATH": "/bin", "KERASTUNER_TUNER_ID": "stale"}
        role.apply(env)
        assert Role.current(env) == role and env["PATH"] == "/bin"
    assert env == {"PATH": "/bin"}  # a single process removes Keras Tuner's variables


@pytest.mark.parametrize("kind, address, worker_id, expected", [
    ("worker", "127.0.0.1", "w1", "HOST:PORT"),
    ("worker", "127.0.0.1:0", "w1", "HOST:PORT"),
    ("chief", "127.0.0.1:70000", None, "HOST:PORT"),
    ("chief", None, None, "needs the oracle's address"),
    ("worker", "127.0.0.1:8000", "my-chief-2", "without the word 'chief'"),
    ("worker", "127.0.0.1:8000", "-w", "worker id"),
    ("worker", "127.0.0.1:8000", "a/b", "worker id"),
    ("chief", "127.0.0.1:8000", "w1", "worker id is for workers"),
    ("single", "127.0.0.1:8000", None, "needs the role chief or worker"),
    ("boss", None, None, "not one of"),
])
def test_bad_roles_are_refused_with_a_reason(kind, address, worker_id, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        Role(kind, address, worker_id)


def test_half_set_environment_is_refused():
    with pytest.raises(ValueError, match="KERASTUNER_ORACLE_PORT"):
        Role.current({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_TUNER_ID": "w1"})


def test_cli_flags_set_the_role_and_the_strategy(monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.setenv(name, "")  # recorded, so that the test's own changes are undone
        monkeypatch.delenv(name)
    args = run_search.parse_args(["search", "--role", "worker", "--oracle-address", "10.0.0.5:8000",
                                  "--strategy", "mirrored", "--worker-timeout", "2m"])
    role = run_search.distributed_role(args)
    assert role.kind == "worker" and role.worker_id.startswith("worker-") and str(os.getpid()) in role.worker_id
    assert os.environ["KERASTUNER_TUNER_ID"] == role.worker_id and os.environ["KERASTUNER_ORACLE_PORT"] == "8000"
    config = run_search.search_config(args)
    assert (config.strategy, config.worker_timeout_s) == ("mirrored", 120.0)
    # Without --role the environment decides (Keras Tuner's own way); a stray address is refused.
    assert run_search.distributed_role(run_search.parse_args(["search"])) == role
    with pytest.raises(ValueError, match="--role chief or --role worker"):
        run_search.distributed_role(run_search.parse_args(["search", "--oracle-address", "h:1"]))


# --- the chief's servicer, without a network ------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture()
def chief(cache, tmp_path, monkeypatch):
    """A chief's tuner and servicer on a fresh run folder, with a fake clock."""
    def make(**overrides):
        for name, value in Role("chief", "127.0.0.1:1").environment().items():
            monkeypatch.setenv(name, value)
        config = SearchConfig(**{**SETTINGS, "worker_timeout_s": 8.0, **overrides})
        paths = prepare_run_dir(tmp_path / "run", config, cache)
        tuner = make_tuner(make_hypermodel(cache, config), paths, config)
        tuner.on_search_begin()
        clock = FakeClock()
        return tuner, ChiefServicer(tuner, clock=clock), clock
    return make


def create(servicer, tuner_id):
    response = servicer.CreateTrial(SERVICE.CreateTrialRequest(tuner_id=tuner_id), None)
    return Trial.from_proto(response.trial)


def finish(servicer, trial_id, score=None, status=TrialStatus.COMPLETED):
    """A worker's reports at the end of a trial: its metrics, then its end."""
    if score is not None:
        servicer.UpdateTrial(SERVICE.UpdateTrialRequest(trial_id=trial_id, metrics={"val_one_minus_mae": score},
                                                        step=0), None)
    trial = servicer.oracle.get_trial(trial_id)
    ended = Trial(trial.hyperparameters, trial_id=trial_id, status=status, message="ValueError: boom")
    servicer.EndTrial(SERVICE.EndTrialRequest(trial=ended.to_proto()), None)


def test_silent_worker_loses_its_trial_to_the_queue_and_another_worker_runs_it(chief, capsys):
    tuner, servicer, clock = chief()
    oracle = tuner.oracle
    assert create(servicer, "w1").trial_id == "0000"
    assert create(servicer, "w2").trial_id == "0001"
    clock.now += 5
    servicer.GetTrial(SERVICE.GetTrialRequest(trial_id="0001"), None)  # w2's heartbeat
    clock.now += 4  # w1 silent for 9 s > 8 s; w2 for 4 s
    assert reclaim_silent_workers(oracle, servicer.last_seen, clock(), 8.0) == [("w1", "0000")]
    assert oracle._retry_queue == ["0000"] and set(oracle.ongoing_trials) == {"w2"} and oracle.tuner_ids == {"w2"}
    assert json.loads((tuner.fi_paths.project_dir / "oracle.json").read_text())["retry_queue"] == ["0000"]
    finish(servicer, "0001", 0.8)
    retried = create(servicer, "w2")
    assert (retried.trial_id, retried.status) == ("0000", TrialStatus.RUNNING)
    assert retried.hyperparameters.values == oracle.get_trial("0000").hyperparameters.values
    finish(servicer, "0000", 0.7)
    assert oracle.end_order == ["0001", "0000"] and oracle.get_trial("0000").score == pytest.approx(0.7)
    trials = pd.read_csv(tuner.fi_paths.trials_csv, dtype={"trial_id": str})
    assert list(trials["trial_id"]) == ["0000", "0001"] and list(trials["status"]) == ["COMPLETED"] * 2
    out = capsys.readouterr().out
    assert "[search] trial 0000 runs on w1" in out and "[search] trial 0000 runs on w2" in out
    assert "[search] trial 0000 COMPLETED: val_one_minus_mae 0.7000 | best 0.8000 (trial 0001)" in out


def test_a_late_result_of_an_ended_trial_is_dropped(chief, capsys):
    tuner, servicer, clock = chief()
    oracle = tuner.oracle
    create(servicer, "w1")
    clock.now += 9
    reclaim_silent_workers(oracle, servicer.last_seen, clock(), 8.0)
    assert oracle._retry_queue == ["0000"]
    finish(servicer, "0000", 0.6)  # w1 was only slow: its result counts and leaves the queue
    assert oracle._retry_queue == []
    assert create(servicer, "w2").trial_id == "0001"  # a new trial, not 0000 again
    finish(servicer, "0000", 0.9)  # a second result of 0000 is dropped
    assert oracle.end_order == ["0000"] and oracle.get_trial("0000").score == pytest.approx(0.6)
    assert {k: t.trial_id for k, t in oracle.ongoing_trials.items()} == {"w2": "0001"}
    assert "trial 0000: a late result was ignored" in capsys.readouterr().out


def test_spent_time_budget_turns_workers_away_but_lets_a_restarted_one_finish(chief):
    tuner, servicer, _ = chief(time_budget_s=60.0)
    assert create(servicer, "w1").trial_id == "0000"
    tuner.deadline = time.time() - 1  # the budget is spent
    assert create(servicer, "w1").trial_id == "0000"  # w1 restarted: its running trial, not a new one
    assert create(servicer, "w2").status == TrialStatus.STOPPED
    assert servicer.stop_triggered and servicer.stopped_by == "time_budget" and "w2" not in tuner.oracle.tuner_ids
    assert not exit_chief(tuner.oracle)  # w1 still trains
    finish(servicer, "0000", 0.5)
    assert create(servicer, "w1").status == TrialStatus.STOPPED and exit_chief(tuner.oracle)


def test_consecutive_failures_stop_the_search(chief):
    tuner, servicer, _ = chief(max_consecutive_failures=2)
    for _ in range(2):
        finish(servicer, create(servicer, "w1").trial_id, status=TrialStatus.FAILED)
    assert isinstance(servicer.failure, SearchFailedError) and "2 trials failed in a row" in str(servicer.failure)
    assert create(servicer, "w1").status == TrialStatus.STOPPED


def test_worker_refuses_other_settings_and_waits_for_the_chief(cache, tmp_path, monkeypatch):
    for name, value in Role("worker", "127.0.0.1:1", "w1").environment().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(FileNotFoundError, match="start the chief first"):
        run_worker(tmp_path / "run", SearchConfig(**SETTINGS), lambda: cache, wait_s=0)
    prepare_run_dir(tmp_path / "run", SearchConfig(**SETTINGS), cache)
    with pytest.raises(ValueError, match=r"max_epochs: chief 2, this worker 3"):
        run_worker(tmp_path / "run", SearchConfig(**{**SETTINGS, "max_epochs": 3}), lambda: cache, wait_s=0)
    with pytest.raises(ValueError, match="workers run search.distributed.run_worker"):
        run_search_on_cache(cache, tmp_path / "run", SearchConfig(**SETTINGS))


# --- one real distributed search --------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def completed_lines(text: str) -> list:
    return re.findall(r"^\[search\] trial (\d{4}) COMPLETED", text, re.MULTILINE)


def test_chief_and_two_workers_finish_hyperband_when_one_worker_is_killed_mid_trial(cache, tmp_path):
    run_dir, port = tmp_path / "run", free_port()
    paths = RunPaths(run_dir)
    settings = json.dumps({**SETTINGS, "worker_timeout_s": 6.0, "trials_per_process": 3})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs, logs = {}, {}

    def start(name, *extra):
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "wb") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "search.distributed", *extra, str(cache.path), str(run_dir),
                 "--oracle-address", f"127.0.0.1:{port}", "--settings", settings],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def training_trial():
        """(worker, trial id) of a trial whose training has begun, from the chief's oracle.json."""
        try:
            ongoing = json.loads((paths.project_dir / "oracle.json").read_text())["ongoing_trials"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None
        for worker, trial_id in sorted(ongoing.items()):
            if any((paths.trials_tensorboard / trial_id / "execution0").glob("events.out.tfevents.*")):
                return worker, trial_id
        return None

    try:
        start("chief", "chief")
        start("w1", "worker", "--worker-id", "w1")
        start("w2", "worker", "--worker-id", "w2")
        deadline = time.monotonic() + 180
        while (found := training_trial()) is None:
            assert all(p.poll() is None for p in procs.values()), "a process ended before any trial trained"
            assert time.monotonic() < deadline, "no trial started training within 180 s"
            time.sleep(0.02)
        victim, killed_trial = found
        os.killpg(procs[victim].pid, signal.SIGKILL)  # the worker and its child process
        assert procs[victim].wait(timeout=30) == -signal.SIGKILL
        trial_json = json.loads((paths.project_dir / f"trial_{killed_trial}" / "trial.json").read_text())
        assert trial_json["status"] == "RUNNING"  # killed in the middle of the trial
        survivor = "w2" if victim == "w1" else "w1"
        assert procs["chief"].wait(timeout=240) == 0, logs["chief"].read_text()[-3000:]
        assert procs[survivor].wait(timeout=60) == 0, logs[survivor].read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    chief_log, survivor_log, victim_log = (logs[n].read_text() for n in ("chief", survivor, victim))
    ids = ["0000", "0001", "0002", "0003", "0004"]
    trials = pd.read_csv(paths.trials_csv, dtype={"trial_id": str, "tuner/trial_id": str})
    assert list(trials["trial_id"]) == ids
    assert list(trials["status"]) == ["COMPLETED"] * 5 and trials["score"].notna().all()
    assert sorted(trials["last_epoch"]) == [1, 1, 2, 2, 2]
    # Every trial ended exactly once: the killed one by the survivor, after the chief took it back.
    assert sorted(completed_lines(survivor_log) + completed_lines(victim_log)) == ids
    assert killed_trial in completed_lines(survivor_log) and killed_trial not in completed_lines(victim_log)
    assert sorted(completed_lines(chief_log)) == ids
    assert f"[search] worker {victim} silent for 6 s: trial {killed_trial} goes back to the queue" in chief_log
    assert f"[search] trial {killed_trial} runs on {survivor}" in chief_log
    oracle = json.loads((paths.project_dir / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == ids and oracle["retry_queue"] == [] and oracle["ongoing_trials"] == {}
    # Workers ran their trials in fresh processes of at most 3 (bounded memory).
    assert survivor_log.count("Reloading Tuner from") >= 1
    # The chief's result is that of a single-process search.
    best = json.loads(paths.best_hyperparameters.read_text())
    assert best["score"] == pytest.approx(trials["score"].max())
    assert best["trial_id"] == trials.loc[trials["score"].idxmax(), "trial_id"]
    assert "[search] chief: stopped by search_finished" in chief_log


# --- MirroredStrategy -----------------------------------------------------------------

def test_mirrored_strategy_trains_each_trial_on_one_cpu_replica(cache, tmp_path):
    strategies = []

    class RecordingHyperModel(PersonalityHyperModel):
        def build(self, hp):
            model = super().build(hp)
            strategies.append(model.distribute_strategy)
            return model

    # One random trial: the targets stay standardized (the default), so that one epoch lands near
    # the label mean whatever else is drawn; this test is about the strategy, not the space.
    fixed = {**TINY, "standardize_targets": True}
    config = SearchConfig(tuner="random", max_trials=1, max_epochs=1, crop_size=32, batch_sizes=(8,),
                          eval_batch_size=8, early_stopping_patience=0, fixed_hyperparameters=fixed,
                          strategy="mirrored")
    hypermodel = RecordingHyperModel(cache, batch_sizes=(8,), crop_size=32, fixed=fixed)
    result = run_search_on_cache(cache, tmp_path / "run", config, hypermodel=hypermodel)
    smoke, trial = strategies  # the smoke check builds outside the strategy; the trial inside
    assert not isinstance(smoke, tf.distribute.MirroredStrategy)
    assert isinstance(trial, tf.distribute.MirroredStrategy)
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:  # one replica per GPU
        assert trial.num_replicas_in_sync == len(gpus)
    else:
        assert trial.num_replicas_in_sync == 1
        assert trial.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:CPU:0",)
    assert list(result.trials["status"]) == ["COMPLETED"] and 0 < result.best.score <= 1
