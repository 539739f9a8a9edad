"""Benchmark of fi_data.pipeline: throughput against the model, and peak memory of an epoch.

Prints, from one run on this machine:

1. Throughput (targets: pipeline >= 5x model). Side by side, in one process: samples/s of
   the training pipeline alone (full augmentation and audio masking, iterated without a
   model) on a small synthetic cache, against samples/s of ``train_on_batch`` of the
   DEFAULT model (``fi_models.fusion.build_model`` + ``compile_model`` with their defaults)
   on ready batches, and ``model.fit`` fed by the pipeline, to show the end-to-end rate.
2. Peak memory (target: <= 3 GB). A synthetic 10,000-clip cache (arrays only, frames
   (6, 140, 248, 3) uint8 = 6.25 GB) is written under ``--out`` in small chunks; a fresh
   child process then iterates one training epoch of it and reports its peak resident set
   (``VmHWM``). A second child does the same with plain fancy indexing of the memmaps, to
   show what reading rows through the page tables would cost. The cache is deleted afterwards.

Usage::

    .venv/bin/python benchmarks/bench_pipeline.py --out /tmp/$USER/bench_pipeline

Nothing here is part of the test suite; the numbers depend on the machine and its load,
which is printed alongside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fi_data.cache_format import MANIFEST_NAME, FORMAT_VERSION, open_cache, write_json_atomic  # noqa: E402
from fi_data.traits import TRAITS  # noqa: E402

FRAME_SHAPE = (6, 140, 248, 3)
GIB = 1024 ** 3


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM`` of /proc/self/status, else ru_maxrss)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _write_npy_chunked(path: Path, shape: tuple, dtype, chunk: np.ndarray) -> None:
    """Write a .npy of ``shape`` by repeating ``chunk`` (rows), never holding the whole array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, shape[0], len(chunk)):
            chunk[:min(len(chunk), shape[0] - start)].tofile(f)


def write_large_cache(cache_dir: Path, n: int, audio_shape: tuple, seed: int = 0) -> None:
    """A ``train``-only cache of ``n`` random clips in the cache format, written chunk-wise."""
    rng = np.random.default_rng(seed)
    folder = cache_dir / "train"
    folder.mkdir(parents=True, exist_ok=True)
    chunk = 64
    _write_npy_chunked(folder / "frames.npy", (n, *FRAME_SHAPE), np.uint8,
                       rng.integers(0, 256, size=(chunk, *FRAME_SHAPE), dtype=np.uint8))
    _write_npy_chunked(folder / "audio.npy", (n, *audio_shape), np.float32,
                       rng.normal(size=(chunk, *audio_shape)).astype(np.float32))
    np.save(folder / "targets.npy", rng.uniform(0, 1, size=(n, len(TRAITS))).astype(np.float32))
    ids = [f"bench{i:06d}x.{i % 6:03d}" for i in range(n)]
    write_json_atomic(folder / "clip_ids.json", ids)
    write_json_atomic(cache_dir / MANIFEST_NAME, {
        "format_version": FORMAT_VERSION, "key": "bench", "params": {"synthetic": True}, "traits": list(TRAITS),
        "audio_shape": list(audio_shape), "frame_shape": list(FRAME_SHAPE), "mfcc_frames_mean": audio_shape[1],
        "splits": {"train": {"n": n}}, "clips": {i: {"split": "train", "status": "ok", "flags": []} for i in ids},
        "versions": {"numpy": np.__version__}})


def child_epoch(cache_dir: str, batch_size: int, mode: str) -> dict:
    """Iterate one training epoch of ``cache_dir`` in this (fresh) process; return the numbers."""
    split = open_cache(cache_dir).split("train")
    if mode == "pipeline":
        from fi_data.pipeline import make_dataset
        batches = make_dataset(split, training=True, batch_size=batch_size, audio_masking=True).as_numpy_iterator()
    else:  # what the pipeline would do if it fancy-indexed the memmaps
        order = np.random.default_rng(0).permutation(len(split))
        batches = ((split.audio[rows], split.frames[rows], split.targets[rows])
                   for rows in (np.sort(order[i:i + batch_size]) for i in range(0, len(order), batch_size)))
    before = peak_rss_bytes()
    start, samples = time.perf_counter(), 0
    for batch in batches:
        samples += len(batch[-1])
    seconds = time.perf_counter() - start
    return {"mode": mode, "samples": samples, "seconds": seconds, "peak_rss_before_epoch": before,
            "peak_rss": peak_rss_bytes()}


def measure_throughput(out: Path, n: int, batch_size: int, audio_shape: tuple, model_steps: int) -> None:
    import tensorflow as tf  # noqa: F401  (imported after the environment variables)
    from fi_data.pipeline import make_dataset
    from fi_models.fusion import build_model, compile_model

    write_large_cache(out / "small_cache", n, audio_shape)
    split = open_cache(out / "small_cache").split("train")
    dataset = make_dataset(split, training=True, batch_size=batch_size, audio_masking=True)
    for _ in dataset:  # warm-up epoch: traces the functions, fills the page cache
        pass
    epochs, start = 3, time.perf_counter()
    for _ in range(epochs):
        for _ in dataset:
            pass
    pipeline_rate = epochs * n / (time.perf_counter() - start)

    (audio, video), y = next(iter(dataset))
    model = compile_model(build_model(audio_shape, tuple(video.shape[1:]), traits=TRAITS))
    for _ in range(2):  # warm-up: traces the train step
        model.train_on_batch((audio, video), y)
    start = time.perf_counter()
    for _ in range(model_steps):
        model.train_on_batch((audio, video), y)
    model_rate = model_steps * batch_size / (time.perf_counter() - start)

    repeated = make_dataset(split, training=True, batch_size=batch_size, audio_masking=True, repeat=True,
                            drop_remainder=True)
    model.fit(repeated, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(repeated, steps_per_epoch=model_steps, epochs=1, shuffle=False, verbose=0)
    fit_rate = model_steps * batch_size / (time.perf_counter() - start)

    print(f"default model: {model.count_params():,} parameters, audio {audio_shape}, video {tuple(video.shape[1:])}, "
          f"batch {batch_size}")
    print(f"pipeline alone (augment + audio masking, {n} clips x {epochs} epochs): {pipeline_rate:8.1f} samples/s")
    print(f"model train_on_batch on ready batches ({model_steps} steps): {' ' * 16}{model_rate:8.1f} samples/s")
    print(f"model.fit fed by the pipeline ({model_steps} steps): {' ' * 24}{fit_rate:8.1f} samples/s")
    print(f"ratio pipeline / model: {pipeline_rate / model_rate:.1f}x (target >= 5x)")


def measure_memory(out: Path, n: int, batch_size: int, audio_shape: tuple, naive: bool) -> None:
    cache_dir = out / f"cache_{n}"
    start = time.perf_counter()
    write_large_cache(cache_dir, n, audio_shape)
    frames_gib = (cache_dir / "train" / "frames.npy").stat().st_size / GIB
    audio_gib = (cache_dir / "train" / "audio.npy").stat().st_size / GIB
    print(f"wrote a {n}-clip cache in {time.perf_counter() - start:.0f} s: frames {frames_gib:.2f} GiB, "
          f"audio {audio_gib:.2f} GiB")
    try:
        for mode in ("pipeline", "naive") if naive else ("pipeline",):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(cache_dir),
                   "--child-mode", mode, "--batch-size", str(batch_size)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            label = "tf.data pipeline (preadv)" if mode == "pipeline" else "naive memmap fancy indexing"
            target = " (target <= 3 GB)" if mode == "pipeline" else ""
            rate = result["samples"] / result["seconds"]
            print(f"{label}: one epoch of {result['samples']} clips in {result['seconds']:.1f} s "
                  f"({rate:.0f} samples/s); "
                  f"peak RSS {result['peak_rss'] / GIB:.2f} GiB{target}, "
                  f"{result['peak_rss_before_epoch'] / GIB:.2f} GiB before the epoch")
    finally:
        shutil.rmtree(cache_dir)
        print(f"deleted {cache_dir}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp") / os.environ.get("USER", "bench") / "bench_pipeline",
                        help="scratch folder for the synthetic caches (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--audio-frames", type=int, default=957,
                        help="M of the (24, M, 1) MFCC input (957: 15.3 s at fi_data.cache's default "
                             "16 kHz, hop 256)")
    parser.add_argument("--small-clips", type=int, default=256, help="clips of the throughput cache")
    parser.add_argument("--model-steps", type=int, default=8, help="timed train steps of the model")
    parser.add_argument("--clips", type=int, default=10_000, help="clips of the memory cache")
    parser.add_argument("--skip-memory", action="store_true", help="only measure throughput")
    parser.add_argument("--skip-naive", action="store_true", help="skip the fancy-indexing comparison")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", default="pipeline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_epoch(args.child, args.batch_size, args.child_mode)))
        return

    audio_shape = (24, args.audio_frames, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at start")
    measure_throughput(args.out, args.small_clips, args.batch_size, audio_shape, args.model_steps)
    if not args.skip_memory:
        measure_memory(args.out, args.clips, args.batch_size, audio_shape, naive=not args.skip_naive)
    shutil.rmtree(args.out / "small_cache", ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
