"""One process against a chief with two workers: wall time of the same small search, side by side.

Runs one fixed Hyperband search (``--max-epochs 3 --factor 3``: 6 trials, 12 epochs in all)
on a synthetic cache twice, each from fresh processes:

1. one process: ``python -m search.chunked CACHE RUN`` (the search's own child entry
   point; every trial in that process);
2. a chief and two workers on 127.0.0.1: ``python -m search.distributed chief|worker``,
   the workers also running every trial in one process each.

The wall time of each mode runs from starting its processes to the last one's exit (so
both pay their TensorFlow start-up). It prints, per mode, the trials completed, the wall
time, the mean per-trial wall time from ``trials.csv``, the best score, and then the ratio
one process / distributed (above 1: distributed is faster). On a machine with few cores
the two workers share them, so expect little speed-up there; the mean trial time shows the
contention.

Usage::

    .venv/bin/python benchmarks/bench_distributed.py [--workdir /tmp/bench_distributed] [--max-epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pandas as pd  # noqa: E402

from fi_data.cache_format import write_synthetic_cache  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.runs import prepare_run_dir  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands: dict, logs: Path) -> float:
    """Start every command at once (own log each), wait for all; seconds from start to the last exit."""
    start = time.monotonic()
    procs = {}
    try:
        for name, command in commands.items():
            with open(logs / f"{name}.log", "wb") as log:
                procs[name] = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for name, proc in procs.items():
            if proc.wait() != 0:
                raise RuntimeError(f"{name} exited with status {proc.returncode}; see {logs / (name + '.log')}")
        return time.monotonic() - start
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def summarize(label: str, run_dir: Path, elapsed: float) -> dict:
    trials = pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str})
    done = trials[trials["status"] == "COMPLETED"]
    print(f"== {label}: {len(done)} of {len(trials)} trials completed in {elapsed:.1f} s; "
          f"mean trial wall time {done['wall_time_s'].mean():.1f} s; best validation 1-MAE {done['score'].max():.4f}")
    return {"elapsed": elapsed, "completed": len(done), "mean_trial_s": float(done["wall_time_s"].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench_distributed", help="scratch folder (deleted first)")
    parser.add_argument("--max-epochs", type=int, default=3, help="Hyperband max_epochs (default 3)")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = write_synthetic_cache(work / "cache", {"train": 64, "validation": 32, "test": 8},
                                  audio_shape=(24, 40, 1), frame_shape=(6, 72, 72, 3))
    config = SearchConfig(max_epochs=args.max_epochs, factor=3, crop_size=64, batch_sizes=(16,),
                          early_stopping_patience=0, trials_per_process=None, worker_timeout_s=120.0,
                          fixed_hyperparameters={"audio_branch": "conv2d", "vgg_depth": 2, "vgg_width": 16,
                                                 "temporal": "max", "fusion_units": 64})
    py = sys.executable
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the first run")

    single = work / "single"
    prepare_run_dir(single, config, cache)
    elapsed = run_processes({"single": [py, "-m", "search.chunked", str(cache.path), str(single)]}, work)
    results = {"one process": summarize("one process", single, elapsed)}

    distributed, address = work / "distributed", f"127.0.0.1:{free_port()}"
    role = [str(cache.path), str(distributed), "--oracle-address", address, "--settings", json.dumps(config.to_dict())]
    elapsed = run_processes({"chief": [py, "-m", "search.distributed", "chief", *role],
                             "worker1": [py, "-m", "search.distributed", "worker", *role, "--worker-id", "w1"],
                             "worker2": [py, "-m", "search.distributed", "worker", *role, "--worker-id", "w2"]}, work)
    results["chief + 2 workers"] = summarize("chief + 2 workers", distributed, elapsed)

    one, two = results.values()
    print(f"\nwall time one process / chief + 2 workers: {one['elapsed']:.1f} / {two['elapsed']:.1f} s "
          f"= {one['elapsed'] / two['elapsed']:.2f} (trials completed: {one['completed']} vs {two['completed']}); "
          f"mean trial time {one['mean_trial_s']:.1f} vs {two['mean_trial_s']:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
