"""Run a search's trials in fresh child processes, a bounded number of trials each.

Memory grows with every model trained in one TensorFlow process, even with
``keras.backend.clear_session()`` (keras-team/keras#17458, #20552; measured here at about
30 MiB per small trial by ``benchmarks/bench_trial_memory.py``). A long search therefore
runs as a sequence of child processes, each resuming the same Keras Tuner project (the
same mechanism as resuming after a crash) and starting at most ``trials_per_process``
trials. The parent only waits; the children's output goes to the same terminal.

A distributed worker (``search.distributed.run_worker``) runs its trials the same way: the
children inherit its ``KERASTUNER_*`` environment and ask the chief for their trials.

The child is ``python -m search.chunked CACHE_DIR RUN_DIR [--max-new-trials N]
[--deadline T] [--settings JSON] [--parent-pid PID]`` (``T``: the search's deadline in ``time.time()`` seconds); it reads the settings from ``RUN_DIR/config.json``,
replaces those given in ``--settings`` (:data:`PROCESS_SETTINGS` of the parent) and exits
with one of :data:`EXIT_CODES`. With ``--parent-pid`` it dies with its parent
(:func:`die_with_parent`).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fi_data.cache_format import FeatureCache
from fi_data.errors import StoppedError

EXIT_CODES = {"search_finished": 0, "trial_limit": 10, "time_budget": 11, "search_failed": 12}
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
        ``"search_finished"`` or ``"time_budget"``.

    Raises:
        search.tuner.SearchFailedError: a child stopped after too many consecutive failures.
        fi_data.errors.StoppedError: a child crashed or was killed (its output says why; rerun to
            resume).
    """
    from search.tuner import SearchFailedError

    codes = {code: reason for reason, code in EXIT_CODES.items()}
    print(f"[search] trials run in fresh processes of at most {config.trials_per_process} "
          "(memory stays bounded)", flush=True)
    while True:
        command = [sys.executable, "-m", "search.chunked", str(Path(cache.path).resolve()),
                   str(paths.root.resolve()), "--max-new-trials", str(config.trials_per_process),
                   "--settings", json.dumps({k: getattr(config, k) for k in PROCESS_SETTINGS})]
        if deadline is not None:
            if time.time() >= deadline:
                return "time_budget"
            command += ["--deadline", repr(deadline)]
        command += ["--parent-pid", str(os.getpid())]
        status = subprocess.run(command, cwd=_ROOT).returncode
        reason = codes.get(status)
        if reason in ("search_finished", "time_budget"):
            return reason
        if reason == "search_failed":
            raise SearchFailedError(f"the search stopped after too many consecutive failed trials (see above); "
                                    f"every trial is in {paths.trials_csv}")
        if reason is None:
            raise StoppedError(f"a search process exited with status {status}"
                               + (" (killed: out of memory?)" if status < 0 else "")
                               + f"; its output is above. Rerun the same command to resume {paths.root}.")


PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal the kernel sends this process when its parent dies (Linux,
``man 2 prctl``)."""


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM to this process when its parent dies (Linux ``prctl``),
    and exit now if the parent is already gone, so that a ``kill -9`` of the main job never
    leaves a child training the same trials as the rerun. Elsewhere, only the check is done.

    Raises:
        SystemExit: when the process's parent is no longer ``parent_pid``.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the prctl took effect
        raise SystemExit(f"the parent search process {parent_pid} is gone; this child stops")


def main(argv=None) -> int:
    """Entry point of a child: resume the run folder's search for at most N new trials."""
    parser = argparse.ArgumentParser(prog="python -m search.chunked", description=__doc__.split("\n\n")[0])
    parser.add_argument("cache_dir", help="feature cache folder")
    parser.add_argument("run_dir", help="run folder holding config.json")
    parser.add_argument("--max-new-trials", type=int, default=None, help="trials to start at most")
    parser.add_argument("--deadline", type=float, default=None,
                        help="time.time() after which no trial starts and the running one stops after its epoch")
    parser.add_argument("--settings", type=json.loads, default={},
                        help=f"JSON object of settings replacing config.json's (keys: {', '.join(PROCESS_SETTINGS)})")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="die with this process (the parent search): a child must never outlive it")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)

    unknown = sorted(set(args.settings) - set(PROCESS_SETTINGS))
    if unknown:
        parser.error(f"--settings: {unknown} are not among {PROCESS_SETTINGS}")
    if args.settings.get("verbose", 1) != 2:  # --verbose 2 shows TensorFlow's start-up lines
        from search.quiet_tf import import_tensorflow_quietly  # before anything imports TensorFlow
        import_tensorflow_quietly()

    from fi_data.cache_format import open_cache
    from search.config import SearchConfig
    from search.runs import RunPaths
    from search.tuner import SearchFailedError, make_hypermodel, search_in_process

    paths = RunPaths(Path(args.run_dir))
    config = SearchConfig.load(paths.config)
    left = None if args.deadline is None else max(args.deadline - time.time(), 1e-3)
    config = dataclasses.replace(config, time_budget_s=left, **args.settings)
    cache = open_cache(args.cache_dir)
    try:
        _, stopped_by = search_in_process(make_hypermodel(cache, config), paths, config,
                                          max_new_trials=args.max_new_trials, deadline=args.deadline)
    except SearchFailedError as e:
        print(f"[search] {e}", file=sys.stderr, flush=True)
        return EXIT_CODES["search_failed"]
    return EXIT_CODES[stopped_by]


if __name__ == "__main__":
    sys.exit(main())
