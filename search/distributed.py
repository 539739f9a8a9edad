"""Distributed tuning with Keras Tuner's chief/worker mode.

Keras Tuner runs one search on several processes or machines (keras.io, "Distributed
hyperparameter tuning with KerasTuner"): each process builds the same tuner; the environment
variables ``KERASTUNER_TUNER_ID`` (``chief`` for the chief, any other id for a worker),
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` make the chief serve its oracle over
gRPC (``keras_tuner/src/distribute/oracle_chief.py``) while the workers ask it for trials
through an ``OracleClient`` and report their results to it. The run folder must be shared
by all of them: workers write each trial's checkpoint there, Hyperband's next round loads
it, and the chief writes ``oracle.json`` and every ``trial.json``.

This module adds what Keras Tuner leaves out:

- :class:`Role`: the ``--role/--oracle-address/--worker-id`` flags of ``run_search.py``
  and those three environment variables, read and written in one place.
- The chief, :func:`serve_search` (called by ``search.job.run_search`` when the
  environment names this process the chief), serves Keras Tuner's own ``OracleServicer``
  with these additions (:class:`ChiefServicer`):

  - Liveness. A worker that is killed, or whose machine goes away, holds its trial for
    ever: Hyperband waits for it (the other workers idle) and the chief never exits.
    Workers send a heartbeat (a ``GetTrial`` call, ``search.tuner.worker_heartbeat``) every quarter
    of ``SearchConfig.worker_timeout_s`` while they train; a worker the chief has not heard
    from for that long is forgotten and its trial goes back to the retry queue, where the
    next worker that asks takes it (:func:`reclaim_silent_workers`). A restarted worker
    with the same ``--worker-id`` gets its own unfinished trial back at once (Keras Tuner).
    Between two trials (e.g. while it starts a fresh process) a worker sends nothing, so
    the timeout must be longer than that gap (seconds; the default is 2 minutes): a worker
    forgotten then is welcome back, but had the search ended meanwhile, its next request
    would wait for the chief (Keras Tuner's client waits up to an hour).
  - A trial ends once: a late result of a trial already ended by another worker is dropped.
  - The time budget and ``max_consecutive_failures`` of a single-process search: once
    reached the chief answers STOPPED to every request for a new trial.
  - ``trials.csv`` and one printed line after every trial, as in a single-process search.
  - The server is polled every second and stopped when the search ends (Keras Tuner's
    own loop checks every 20 s and never stops the server).

- A worker, :func:`run_worker`, takes the search settings from the chief's ``config.json``
  and runs trials, in fresh child processes of ``trials_per_process`` trials each
  (``search.chunked``) so that its memory stays bounded, until the chief has no more. It
  never retrains: the chief retrains the best trial and reports as a single process does.

A runner above the engine (``search.tuner``, which also holds the strategy a trial trains
under, ``make_strategy``, and the workers' heartbeat); ``search.chunked`` runs a worker's
trials in fresh processes.

``run_search.py --role chief|worker`` is the way to run a distributed search from a dataset.
On a feature cache that is already prepared (tests, benchmarks, scripts), one role runs as
a process started the one way (``search.entry``)::

    python -m search.entry {chief,worker} CACHE_DIR RUN_DIR --oracle-address HOST:PORT
        [--worker-id ID] [--settings JSON]

(``python -m search.distributed {chief,worker} ...`` is an older spelling of the same).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # ``python -m search.distributed ROLE ARGS`` = ``python -m search.entry ROLE ARGS``:
    # handed over before the imports below, so that search.entry imports TensorFlow quietly first.
    from search.entry import main as _main
    sys.exit(_main(sys.argv[1:]))

import dataclasses  # noqa: E402 - after the hand-over above
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent import futures  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
from keras_tuner.src import protos  # noqa: E402 - Keras Tuner's gRPC messages and service
from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief  # noqa: E402
from keras_tuner.src.engine.oracle import synchronized  # noqa: E402
from keras_tuner.src.engine.trial import Trial, TrialStatus  # noqa: E402

from fi_data.cache_format import open_cache  # noqa: E402
from fi_data.errors import UserError  # noqa: E402
from search.chunked import search_in_processes  # noqa: E402
from search.runs import RunPaths, load_run, tensorboard_command  # noqa: E402
from search.tensorboard_logs import write_experiment  # noqa: E402
from search.trials import rewrite_trials_csv, trial_info_path  # noqa: E402
from search.tuner import (SearchFailedError, StopReason, make_hypermodel, make_tuner,  # noqa: E402
                          search_in_process)

ROLES = ("single", "chief", "worker")
"""Roles of a search process: alone (the default), the chief (serves the oracle), a worker."""

ENV_VARS = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
"""Keras Tuner's distributed-tuning environment (``keras_tuner/src/distribute/utils.py``)."""

POLL_S = 1.0
"""Seconds between the chief's checks for silent workers and for the end of the search."""

_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``"HOST:PORT"`` (an IPv6 host in brackets: ``"[::1]:8000"``).

    Raises:
        ValueError: if ``address`` is not of that form or the port is not in 1..65535.
    """
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"oracle address {address!r}: expected HOST:PORT with a port in 1..65535, "
                         "e.g. 10.0.0.5:8000, chief-host:8000 or [::1]:8000")
    return host, int(port)


def default_worker_id() -> str:
    """``worker-<host name>-<process id>``: unique per running worker, safe as a file name."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname())[:64].replace("chief", "host")
    return f"worker-{host}-{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class Role:
    """Where this process sits in a search.

    Attributes:
        kind: one of :data:`ROLES`.
        address: the chief's oracle, ``"HOST:PORT"``: the address the chief listens on and
            the workers connect to (chief and worker only).
        worker_id: a worker's Keras Tuner id (letters, digits, ``._@-``; it must not
            contain ``chief``, which Keras Tuner reads as the chief). Workers need distinct
            ids; a worker restarted with its old id resumes its unfinished trial.

    Raises:
        ValueError: for an unknown kind, a missing or malformed address, or a bad worker id.
    """

    kind: str = "single"
    address: str | None = None
    worker_id: str | None = None

    def __post_init__(self):
        if self.kind not in ROLES:
            raise UserError(f"role {self.kind!r} is not one of {ROLES}")
        if self.kind == "single":
            if self.address is not None or self.worker_id is not None:
                raise UserError("an oracle address or a worker id needs the role chief or worker")
            return
        if not self.address:
            raise UserError(f"the {self.kind} needs the oracle's address HOST:PORT (--oracle-address)")
        parse_address(self.address)
        if self.kind == "chief" and self.worker_id is not None:
            raise UserError("a worker id is for workers; the chief's Keras Tuner id is always 'chief'")
        if self.kind == "worker":
            if not self.worker_id or not _WORKER_ID.fullmatch(self.worker_id) or "chief" in self.worker_id:
                raise UserError(f"worker id {self.worker_id!r}: expected 1-100 letters, digits or ._@- "
                                 "(starting with a letter or digit) without the word 'chief'")

    @classmethod
    def current(cls, environ=None) -> "Role":
        """The role Keras Tuner will see in ``environ`` (default ``os.environ``).

        Raises:
            ValueError: ``KERASTUNER_ORACLE_IP`` is set without the other two variables.
        """
        env = os.environ if environ is None else environ
        if "KERASTUNER_ORACLE_IP" not in env:
            return cls()
        tuner_id, port = env.get("KERASTUNER_TUNER_ID"), env.get("KERASTUNER_ORACLE_PORT")
        if not tuner_id or not port:
            raise UserError("KERASTUNER_ORACLE_IP is set, so KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_PORT "
                             "must be set too (or unset all three for a single-process search)")
        address = f"{env['KERASTUNER_ORACLE_IP']}:{port}"
        if "chief" in tuner_id:  # Keras Tuner's own test (distribute/utils.py, is_chief_oracle)
            return cls("chief", address)
        return cls("worker", address, tuner_id)

    def environment(self) -> dict[str, str]:
        """The ``KERASTUNER_*`` variables of this role (none for a single process)."""
        if self.kind == "single":
            return {}
        host, port = parse_address(self.address)
        return {"KERASTUNER_TUNER_ID": "chief" if self.kind == "chief" else self.worker_id,
                "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": str(port)}

    def apply(self, environ=None) -> None:
        """Write this role into ``environ`` (default ``os.environ``); a single process removes them."""
        env = os.environ if environ is None else environ
        for name in ENV_VARS:
            env.pop(name, None)
        env.update(self.environment())


# ---------------------------------------------------------------------------------------
# The chief


@synchronized
def reclaim_silent_workers(oracle, last_seen: dict, now: float, timeout_s: float) -> list[tuple]:
    """Forget the workers not heard from for ``timeout_s``; their running trials go back to the queue.

    A forgotten worker no longer holds the chief open (Keras Tuner's chief waits for every
    worker it has seen to be told STOPPED); if it comes back it is welcome as a new one.

    Args:
        oracle: the chief's Keras Tuner oracle (``ongoing_trials``, ``tuner_ids`` and
            ``_retry_queue`` are changed under its lock; ``oracle.json`` is saved).
        last_seen: tuner id -> ``now``-clock time of its last request (updated here).
        now, timeout_s: the current time and the allowed silence, in seconds.

    Returns:
        ``[(tuner_id, trial_id or None)]`` of the forgotten workers, sorted by id.
    """
    gone = []
    for tuner_id in sorted(oracle.tuner_ids):
        if now - last_seen.setdefault(tuner_id, now) < timeout_s:
            continue
        trial = oracle.ongoing_trials.pop(tuner_id, None)
        oracle.tuner_ids.discard(tuner_id)
        del last_seen[tuner_id]
        if trial is not None:
            oracle._retry_queue.append(trial.trial_id)
        gone.append((tuner_id, None if trial is None else trial.trial_id))
    if any(trial_id for _, trial_id in gone):
        oracle.save()
    return gone


@synchronized
def _touch(oracle, last_seen: dict, trial_id: str, now: float) -> None:
    """Record that the worker(s) running ``trial_id`` are alive."""
    for tuner_id, trial in oracle.ongoing_trials.items():
        if trial.trial_id == trial_id:
            last_seen[tuner_id] = now


@synchronized
def _turn_away(oracle, tuner_id: str) -> Trial:
    """The answer to a request for a trial once the search is stopping: the worker's own
    unfinished trial if it has one (it was restarted), else STOPPED (it is then forgotten)."""
    if tuner_id in oracle.ongoing_trials:
        return oracle.ongoing_trials[tuner_id]
    oracle.tuner_ids.discard(tuner_id)
    return Trial(oracle.get_space(), status=TrialStatus.STOPPED)


@synchronized
def _end_once(oracle, trial: Trial) -> bool:
    """``oracle.end_trial(trial)`` unless it already ended (or is unknown); True if recorded.

    A trial taken back from a silent worker may be finished by that worker after all
    (while it waits in the retry queue, or runs elsewhere): the first result counts.
    """
    if trial.trial_id not in oracle.trials or trial.trial_id in oracle.end_order:
        return False
    if trial.trial_id in oracle._retry_queue:
        oracle._retry_queue.remove(trial.trial_id)
    oracle.end_trial(trial)
    # Keras Tuner saves oracle.json before it drops the trial from ongoing_trials (a single
    # tuner saves again in on_trial_end); without this save a restarted chief would run it again.
    oracle.save()
    return True


@synchronized
def _after_trial(oracle, tuner, trial_id: str):
    """Rewrite ``trials.csv``, print the trial's line; the SearchFailedError to raise, or None."""
    paths = tuner.fi_paths
    rewrite_trials_csv(paths.trials_csv, oracle.trials.values(), paths.project_dir)
    info_path = trial_info_path(paths.project_dir, trial_id)
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    print(tuner.trial_line(oracle.get_trial(trial_id), info), flush=True)
    try:
        tuner.check_consecutive_failures()
    except SearchFailedError as e:
        return e
    return None


class ChiefServicer(OracleServicer):
    """Keras Tuner's ``OracleServicer`` with liveness, single ends and stopping rules.

    Args:
        tuner: the chief's tuner (``search.tuner.make_tuner``; its oracle is served, its
            ``time_left``, ``trial_line`` and ``check_consecutive_failures`` are used).
        clock: seconds, monotonic (injectable for tests).

    Attributes:
        last_seen: tuner id -> ``clock()`` time of its last request.
        stopped_by: ``StopReason.SEARCH_FINISHED`` or ``StopReason.TIME_BUDGET``.
        failure: the ``SearchFailedError`` that stopped the search, or None.
    """

    def __init__(self, tuner, clock=time.monotonic):
        super().__init__(tuner.oracle)
        self.tuner = tuner
        self.clock = clock
        self.last_seen = {}
        self.stopped_by = StopReason.SEARCH_FINISHED
        self.failure = None
        self._lock = threading.Lock()

    def stopping(self) -> bool:
        """True once no new trial may start (time budget spent, or too many failures)."""
        left = self.tuner.time_left()
        with self._lock:
            if self.stopped_by == StopReason.TIME_BUDGET or left is None or left > 0:
                return self.failure is not None or self.stopped_by == StopReason.TIME_BUDGET
            self.stopped_by = StopReason.TIME_BUDGET
            print("[search] time budget spent: no new trials",
                  flush=True)
            return True

    def _heard_about(self, trial_id: str) -> None:
        _touch(self.oracle, self.last_seen, trial_id, self.clock())

    def CreateTrial(self, request, context):
        tuner_id = request.tuner_id
        if tuner_id not in self.last_seen:
            print(f"[search] worker {tuner_id} asks for trials", flush=True)
        self.last_seen[tuner_id] = self.clock()
        trial = _turn_away(self.oracle, tuner_id) if self.stopping() else self.oracle.create_trial(tuner_id)
        if trial.status == TrialStatus.STOPPED:
            self.stop_triggered = True
        elif trial.status == TrialStatus.RUNNING:
            print(f"[search] trial {trial.trial_id} runs on {tuner_id}", flush=True)
        return protos.get_service().CreateTrialResponse(trial=trial.to_proto())

    def UpdateTrial(self, request, context):
        self._heard_about(request.trial_id)
        if request.trial_id in self.oracle.end_order:  # a late report: keep the recorded result
            trial = self.oracle.get_trial(request.trial_id)
            return protos.get_service().UpdateTrialResponse(trial=trial.to_proto())
        return super().UpdateTrial(request, context)

    def EndTrial(self, request, context):
        trial = Trial.from_proto(request.trial)
        self._heard_about(trial.trial_id)
        if _end_once(self.oracle, trial):
            self.failure = _after_trial(self.oracle, self.tuner, trial.trial_id) or self.failure
        else:
            print(f"[search] trial {trial.trial_id}: a late result was ignored (the trial had ended)", flush=True)
        return protos.get_service().EndTrialResponse()

    def GetTrial(self, request, context):
        self._heard_about(request.trial_id)  # workers' heartbeat
        return super().GetTrial(request, context)


def serve_search(hypermodel, paths, config, *, poll_s: float = POLL_S) -> tuple:
    """The chief's part of a distributed search: serve the oracle until the search ends.

    Creates (or reloads) the tuner, writes the HParams experiment and ``oracle.json``,
    starts the time budget, listens on ``Role.current().address`` and returns when no
    trial is left to run and every worker has been told so (or forgotten as silent).

    Args:
        hypermodel, paths, config: as in ``search.tuner.search_in_process``.
        poll_s: seconds between checks for silent workers and for the end.

    Returns:
        ``(tuner, stopped_by)``: the chief's tuner (its oracle holds every trial) and
        ``StopReason.SEARCH_FINISHED`` or ``StopReason.TIME_BUDGET``.

    Raises:
        ValueError: this process is not the chief (``KERASTUNER_TUNER_ID``).
        OSError: the address cannot be listened on (port in use, host not this machine).
        search.tuner.SearchFailedError: too many consecutive failed trials.
    """
    role = Role.current()
    if role.kind != "chief":
        raise ValueError(f"serve_search runs in the chief (KERASTUNER_TUNER_ID=chief); this process is {role.kind}")
    tuner = make_tuner(hypermodel, paths, config)
    write_experiment(paths.trials_tensorboard, tuner.oracle.get_space())
    tuner.save()
    tuner.on_search_begin()  # the time budget counts from here
    servicer = ChiefServicer(tuner)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(role.address)
    except RuntimeError:
        port = 0
    if not port:
        raise OSError(f"the chief cannot listen on {role.address}: is the port in use, or the host not an "
                      "address of this machine?")
    server.start()
    print(f"[search] chief: {config.tuner} oracle of {paths.root} on {role.address}; start workers with the same "
          f"command and --role worker --oracle-address {role.address}. Watch it with: "
          + tensorboard_command(paths.tensorboard), flush=True)
    try:
        while not ((servicer.stop_triggered or servicer.stopping()) and exit_chief(tuner.oracle)):
            time.sleep(poll_s)
            for tuner_id, trial_id in reclaim_silent_workers(tuner.oracle, servicer.last_seen, servicer.clock(),
                                                             config.worker_timeout_s):
                print(f"[search] worker {tuner_id} silent for {config.worker_timeout_s:g} s"
                      + (f": trial {trial_id} goes back to the queue" if trial_id else
                         " between trials: forgotten until it asks again"), flush=True)
    finally:
        server.stop(grace=None)
        rewrite_trials_csv(paths.trials_csv, tuner.oracle.trials.values(), paths.project_dir)
    if servicer.failure is not None:
        raise servicer.failure
    return tuner, servicer.stopped_by


# ---------------------------------------------------------------------------------------
# Workers

def run_worker(run_dir: str | os.PathLike, config, prepare_cache, *, wait_s: float = 600.0) -> str:
    """A worker's whole job: run the chief's trials until it has none left. No retraining.

    The environment must name this process a worker (:class:`Role`, ``Role.apply``). The
    search settings come from the chief's ``config.json`` in ``run_dir`` (waited for);
    ``config`` (this worker's own settings, e.g. from the same command line as the chief's)
    must agree with them on ``search.config.SEARCH_DEFINING``, and its ``strategy``,
    ``trials_per_process`` and ``verbose`` apply here: each machine has its own GPUs and
    memory. The time budget is the chief's to enforce.

    Args:
        run_dir: the run folder, shared with the chief (same path or a mount of it).
        config: this worker's ``SearchConfig``.
        prepare_cache: called with no arguments when the feature cache recorded in the
            chief's ``config.json`` is not readable from here; returns this machine's
            ``FeatureCache`` (which must have the same key).
        wait_s: seconds to wait for the chief's ``config.json``.

    Returns:
        ``StopReason.SEARCH_FINISHED``.

    Raises:
        ValueError: not a worker; settings or feature cache differ from the chief's.
        FileNotFoundError: no ``config.json`` in ``run_dir`` after ``wait_s`` seconds.
        RuntimeError: a child process died (killed for memory?); the chief gives its
            trial to another worker after ``worker_timeout_s``.
    """
    role = Role.current()
    if role.kind != "worker":
        raise ValueError(f"run_worker needs a worker's KERASTUNER_* environment; this process is {role.kind}")
    paths = RunPaths(Path(run_dir))
    deadline = time.monotonic() + wait_s
    while not paths.config.is_file():
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"{paths.config}: no search started in this run folder after {wait_s:g} s; "
                                    "start the chief first (--role chief), with the same run folder")
        time.sleep(POLL_S)
    chief = load_run(paths.root)
    differences = chief.config.search_differences(config)
    if differences:
        listed = "; ".join(f"{k}: chief {a!r}, this worker {b!r}" for k, (a, b) in differences.items())
        raise UserError(f"{paths.config}: this worker's search settings differ from the chief's ({listed}); "
                         "start the worker with the chief's command line plus the worker flags")
    recorded = Path(chief.cache["path"]) if chief.cache.get("path") else None
    cache = open_cache(recorded) if recorded and (recorded / "manifest.json").is_file() else prepare_cache()
    if cache.manifest.get("key") != chief.cache.get("key"):
        raise UserError(f"{cache.path}: feature cache key {cache.manifest.get('key')!r} differs from the chief's "
                         f"{chief.cache.get('key')!r}: preprocess with the chief's settings, or share its cache folder")
    config = dataclasses.replace(chief.config, strategy=config.strategy, trials_per_process=config.trials_per_process,
                                 verbose=config.verbose, time_budget_s=None, overwrite=False)
    print(f"[search] worker {role.worker_id}: trials of {paths.root} from the chief at {role.address}", flush=True)
    if config.trials_per_process:
        return search_in_processes(cache, paths, config)
    return search_in_process(make_hypermodel(cache, config), paths, config)[1]
