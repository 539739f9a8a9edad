"""Run a search's trials in fresh child processes, a bounded number of trials each.

Memory grows with every model trained in one TensorFlow process, even with
``keras.backend.clear_session()`` (keras-team/keras#17458, #20552; measured here at about
30 MiB per small trial by ``benchmarks/bench_trial_memory.py``). A long search therefore
runs as a sequence of child processes, each resuming the same Keras Tuner project (the
same mechanism as resuming after a crash) and starting at most ``trials_per_process``
trials. The parent only waits; the children's output goes to the same terminal.

A distributed worker (``search.distributed.run_worker``) runs its trials the same way: the
children inherit its ``KERASTUNER_*`` environment and ask the chief for their trials.

A runner above the engine (``search.tuner``). The child is started like every search
process, ``python -m search.entry trials CACHE_DIR RUN_DIR --max-new-trials N [--deadline T]
--settings JSON --parent-pid PID`` (``search.entry``: ``T`` is the search's deadline in
``time.time()`` seconds; the child dies with its parent and imports TensorFlow quietly); it
runs :func:`run_trials`: the settings of ``RUN_DIR/config.json``, those given in
``--settings`` (:data:`PROCESS_SETTINGS` of the parent) replaced, and it exits with one of
:data:`EXIT_CODES`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # ``python -m search.chunked ARGS``, the older spelling of ``search.entry trials ARGS``:
    # handed over before the imports below, so that search.entry imports TensorFlow quietly first.
    from search.entry import main as _main
    sys.exit(_main(["trials", *sys.argv[1:]]))

import dataclasses  # noqa: E402 - after the hand-over above
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from fi_data.cache_format import FeatureCache  # noqa: E402
from fi_data.errors import StoppedError  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.runs import RunPaths  # noqa: E402
from search.tuner import SearchFailedError, StopReason, make_hypermodel, search_in_process  # noqa: E402

SEARCH_FAILED = "search_failed"
"""A child's exit reason besides the :class:`~search.tuner.StopReason`: too many consecutive failures."""

EXIT_CODES = {StopReason.SEARCH_FINISHED: 0, StopReason.TRIAL_LIMIT: 10, StopReason.TIME_BUDGET: 11,
              SEARCH_FAILED: 12}
"""Exit status of a child for each way it can stop (any other status: it crashed)."""

PROCESS_SETTINGS = ("strategy", "verbose")
"""Settings a child takes from its parent rather than from ``config.json`` (a distributed
worker's may differ from the chief's: each machine has its own GPUs)."""

_ROOT = Path(__file__).resolve().parents[1]


def search_in_processes(cache: FeatureCache, paths, config, *, deadline: float | None = None) -> str:
    """Run the search of ``paths.root`` (``config.json`` already written) in child processes.

    Args:
        cache: the opened cache (its folder is passed to the children).
        paths: the run folder's ``RunPaths``.
        config: the settings; ``trials_per_process`` trials per child.
        deadline: ``time.time()`` of the search's deadline, shared by all children (None:
            no budget).

    Returns:
        ``StopReason.SEARCH_FINISHED`` or ``StopReason.TIME_BUDGET``.

    Raises:
        search.tuner.SearchFailedError: a child stopped after too many consecutive failures.
        fi_data.errors.StoppedError: a child crashed or was killed (its output says why; rerun to
            resume).
    """
    codes = {code: reason for reason, code in EXIT_CODES.items()}
    print(f"[search] trials run in fresh processes of at most {config.trials_per_process} "
          "(memory stays bounded)", flush=True)
    first = True
    while True:
        # The first child always starts, even with the budget spent (e.g. by measuring epoch
        # costs): it runs a first trial when none has completed yet, so a model is left to retrain.
        if deadline is not None and time.time() >= deadline and not first:
            return StopReason.TIME_BUDGET
        first = False
        # A search process, started the one way (search.entry); it must not outlive this one.
        command = [sys.executable, "-m", "search.entry", "trials", str(Path(cache.path).resolve()),
                   str(paths.root.resolve()), "--max-new-trials", str(config.trials_per_process),
                   "--settings", json.dumps({k: getattr(config, k) for k in PROCESS_SETTINGS}),
                   "--parent-pid", str(os.getpid())]
        if deadline is not None:
            command += ["--deadline", repr(deadline)]
        status = subprocess.run(command, cwd=_ROOT).returncode
        reason = codes.get(status)
        if reason in (StopReason.SEARCH_FINISHED, StopReason.TIME_BUDGET):
            return reason
        if reason == SEARCH_FAILED:
            raise SearchFailedError(f"the search stopped after too many consecutive failed trials (see above); "
                                    f"every trial is in {paths.trials_csv}")
        if reason is None:
            raise StoppedError(f"a search process exited with status {status}"
                               + (" (killed: out of memory?)" if status < 0 else "")
                               + f"; its output is above. Rerun the same command to resume {paths.root}.")


def run_trials(cache: FeatureCache, run_dir, *, max_new_trials: int | None = None, deadline: float | None = None,
               settings: dict | None = None) -> int:
    """A child's work (``search.entry trials``): resume the run folder's search for at most
    ``max_new_trials`` new trials in this process.

    Args:
        cache: the opened feature cache.
        run_dir: the run folder holding ``config.json``.
        max_new_trials, deadline: as ``search.tuner.search_in_process``.
        settings: :data:`PROCESS_SETTINGS` replacing ``config.json``'s.

    Returns:
        The exit status, one of :data:`EXIT_CODES`.
    """
    paths = RunPaths(Path(run_dir))
    config = SearchConfig.load(paths.config)
    left = None if deadline is None else max(deadline - time.time(), 1e-3)
    config = dataclasses.replace(config, time_budget_s=left, **(settings or {}))
    try:
        _, stopped_by = search_in_process(make_hypermodel(cache, config), paths, config,
                                          max_new_trials=max_new_trials, deadline=deadline)
    except SearchFailedError as e:
        print(f"[search] {e}", file=sys.stderr, flush=True)
        return EXIT_CODES[SEARCH_FAILED]
    return EXIT_CODES[stopped_by]
