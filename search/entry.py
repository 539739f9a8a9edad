"""The one way a search process starts: ``python -m search.entry KIND ...``.

Kinds (``--help`` of each lists its options)::

    python -m search.entry trials CACHE_DIR RUN_DIR [--max-new-trials N] [--deadline T]
        [--settings JSON] [--parent-pid PID]
    python -m search.entry {chief,worker} CACHE_DIR RUN_DIR --oracle-address HOST:PORT
        [--worker-id ID] [--settings JSON]

``trials`` is a child of ``search.chunked.search_in_processes``: it resumes the search of
``RUN_DIR`` (settings from its ``config.json``, those of ``--settings`` replaced: keys
``search.chunked.PROCESS_SETTINGS``) for at most ``N`` new trials, stops at the deadline
``T`` (``time.time()`` seconds) and exits with one of ``search.chunked.EXIT_CODES``.
``chief`` / ``worker`` run one role of a distributed search (``search.distributed``) on a
prepared feature cache, ``--settings`` holding every ``SearchConfig`` setting (the chief's
define the search); ``run_search.py --role`` does the same from a dataset.

Every process starts the same way: the arguments are parsed with nothing heavy imported;
with ``--parent-pid`` the process dies with its parent (:func:`die_with_parent`, so that a
``kill -9`` of the main job never leaves a child training beside the rerun); TensorFlow is
imported quietly (``search.quiet_tf``; not with the setting ``verbose`` 2) *before* the
runners, which import it; then the runner does the work. A killed process resumes like
any search: rerun it. ``python -m search.chunked ARGS`` (= ``trials ARGS``) and
``python -m search.distributed {chief,worker} ARGS`` are older spellings of the same.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys

from search.quiet_tf import import_tensorflow_quietly

KINDS = ("trials", "chief", "worker")
"""The kinds of process (the first argument)."""

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


def parser() -> argparse.ArgumentParser:
    """The arguments of every kind of process (module docstring)."""
    top = argparse.ArgumentParser(prog="python -m search.entry",
                                  description="Start a search process: a chunked search's child, or a distributed role.")
    kinds = top.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(KINDS) + "}")
    trials = kinds.add_parser("trials", help="a child of a chunked search: resume a run folder for N new trials")
    trials.add_argument("cache_dir", help="feature cache folder")
    trials.add_argument("run_dir", help="run folder holding config.json")
    trials.add_argument("--max-new-trials", type=int, default=None, help="trials to start at most")
    trials.add_argument("--deadline", type=float, default=None,
                        help="time.time() after which no trial starts and the running one stops after its epoch")
    trials.add_argument("--settings", type=json.loads, default={},
                        help="JSON object of settings replacing config.json's (keys: "
                             "search.chunked.PROCESS_SETTINGS)")
    trials.add_argument("--parent-pid", type=int, default=None,
                        help="die with this process (the parent search): a child must never outlive it")
    for role in ("chief", "worker"):
        sub = kinds.add_parser(role, help=f"the {role} of a distributed search on a prepared feature cache")
        sub.add_argument("cache_dir", help="feature cache folder")
        sub.add_argument("run_dir", help="run folder shared by the chief and the workers")
        sub.add_argument("--oracle-address", required=True, metavar="HOST:PORT", help="the chief's oracle")
        sub.add_argument("--worker-id", default=None, help="a worker's id (default: worker-<host>-<pid>)")
        sub.add_argument("--settings", type=json.loads, default={},
                         help="JSON object of SearchConfig settings (the chief's define the search)")
    return top


def main(argv=None) -> int:
    """Start a search process of the kind ``argv[0]`` (module docstring); its exit status."""
    args = parser().parse_args(argv)
    if getattr(args, "parent_pid", None) is not None:
        die_with_parent(args.parent_pid)
    if args.settings.get("verbose", 1) != 2:  # --verbose 2 shows TensorFlow's start-up lines
        import_tensorflow_quietly()
    # The runners are imported only now, on purpose: they import TensorFlow, which must come
    # after import_tensorflow_quietly, and --help or a bad argument above stays instant.
    from fi_data.cache_format import open_cache
    from search import chunked, distributed
    from search.config import SearchConfig

    if args.kind == "trials":
        unknown = sorted(set(args.settings) - set(chunked.PROCESS_SETTINGS))
        if unknown:
            parser().error(f"--settings: {unknown} are not among {chunked.PROCESS_SETTINGS}")
        return chunked.run_trials(open_cache(args.cache_dir), args.run_dir, max_new_trials=args.max_new_trials,
                                  deadline=args.deadline, settings=args.settings)
    worker_id = args.worker_id or (distributed.default_worker_id() if args.kind == "worker" else None)
    distributed.Role(args.kind, args.oracle_address, worker_id).apply()
    config = SearchConfig.from_dict(args.settings)
    cache = open_cache(args.cache_dir)
    if args.kind == "worker":
        distributed.run_worker(args.run_dir, config, lambda: cache)
        print(f"[search] worker {worker_id}: the chief has no trials left", flush=True)
        return 0
    # Only the chief retrains and reports; search.job (retraining, reports: Matplotlib) stays out of the others.
    from search.job import run_search

    result = run_search(cache, args.run_dir, config)
    print(f"[search] chief: stopped by {result.stopped_by}; best {result.best.objective} {result.best.score:.4f} "
          f"(trial {result.best.trial_id})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
