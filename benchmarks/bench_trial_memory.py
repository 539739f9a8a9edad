"""Does memory grow across trials? Peak RSS of each of N trials, in one process and in chunks.

Runs the same RandomSearch of ``--trials`` small models twice on a synthetic cache, through
the search's own code path (tuner, TensorBoard, checkpoints, trials.csv): once with every
trial in this process (``trials_per_process=None``) and once in fresh child processes of
``--chunk`` trials (``search.chunked``). ``peak_rss_mb`` per trial comes from trials.csv
(``search.memory``: Linux VmHWM, reset before each trial). For each mode it prints the
per-trial peaks, the mean of the last five trials against the first five (ratio) and the
least-squares slope in MiB per trial.

Usage::

    .venv/bin/python benchmarks/bench_trial_memory.py [--trials 20] [--chunk 5] [--workdir /tmp/bench_trial_memory]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fi_data.cache_format import write_synthetic_cache  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.job import run_search  # noqa: E402


def summarize(label: str, trials: pd.DataFrame, elapsed: float) -> dict:
    peaks = pd.to_numeric(trials["peak_rss_mb"]).to_numpy()
    slope = float(np.polyfit(np.arange(len(peaks)), peaks, 1)[0]) if len(peaks) > 1 else float("nan")
    first, last = peaks[:5].mean(), peaks[-5:].mean()
    print(f"\n== {label}: {len(trials)} trials ({(trials['status'] == 'COMPLETED').sum()} completed) "
          f"in {elapsed:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("peak RSS per trial (MiB): " + " ".join(f"{p:.0f}" for p in peaks))
    print(f"mean of last 5 / first 5 trials: {last:.0f} / {first:.0f} MiB = {last / first:.3f}")
    print(f"least-squares growth: {slope:+.2f} MiB per trial")
    return {"ratio": last / first, "slope": slope}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials to run per mode (default 20)")
    parser.add_argument("--chunk", type=int, default=5, help="trials per process in the chunked mode (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    parser.add_argument("--workdir", default="/tmp/bench_trial_memory", help="scratch folder (deleted first)")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    cache = write_synthetic_cache(work / "cache", {"train": 64, "validation": 32, "test": 8},
                                  audio_shape=(24, 40, 1), frame_shape=(6, 72, 72, 3))
    results = {}
    for label, per_process in (("one process", None), (f"processes of {args.chunk} trials", args.chunk)):
        # One architecture (so a trial's peak reflects leftovers of earlier trials, not its
        # model's size); the search still varies learning rate, dropout, head, remedy and loss.
        config = SearchConfig(tuner="random", max_trials=args.trials, max_epochs=args.epochs, crop_size=64,
                              batch_sizes=(16,), early_stopping_patience=0, trials_per_process=per_process,
                              fixed_hyperparameters={"audio_branch": "conv2d", "vgg_depth": 2, "vgg_width": 16,
                                                     "temporal": "max", "fusion_units": 64})
        start = time.monotonic()
        result = run_search(cache, work / f"run_{per_process}", config)
        results[label] = summarize(label, result.trials, time.monotonic() - start)
    one, chunked = results.values()
    print(f"\nlast-5/first-5 peak ratio: one process {one['ratio']:.3f}, chunked {chunked['ratio']:.3f}; "
          f"growth {one['slope']:+.1f} vs {chunked['slope']:+.1f} MiB per trial")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
