"""Benchmark of the input pipeline against the train step, on the GPU (or the CPU) of this machine.

Prints, from one run, samples/s of:

(a) the input pipeline alone: ``fi_data.pipeline.make_dataset(..., training=True)`` (the
    search's augmentation; ``--audio-masking`` adds SpecAugment masking) iterated without a
    model (at least ``--min-seconds``) over a synthetic cache of realistic shapes: audio
    ``(24, M, 1)`` float32 (M = 940 by default) and frames ``(6, 140, 248, 3)`` uint8,
    memory-mapped ``.npy`` files in a temporary folder, exactly as the real feature cache
    (``fi_data.cache_format``);
(b) the train step alone: ``model.train_on_batch`` repeated on ONE batch already in device
    memory (at least ``--steps`` steps and ``--min-seconds``), for three models of the search
    space (``search.hypermodel``):

    - ``hypermodel-default``: the HyperModel's defaults, i.e. the first trial (statistics
      branches + ridge path, no convolution);
    - ``build_model-default``: ``fi_models.fusion.build_model``'s defaults (conv2d audio,
      VGG 3 blocks x 32, max over frames, fusion 256), the assignment's reference model;
    - ``largest``: the largest model of the search space: VGG of the deepest depth (5 for
      the 128 crop) and widest width (64), LSTM over frames with 128 units, fusion 512, the
      BLSTM audio branch (the slowest step of the audio branches: 2 x BLSTM 64 over M time
      steps; ``--largest-audio conv2d`` takes the one with the most weights instead),
      standardized targets + ridge path, ``ccc_mae`` loss; ``--allow-resnet`` makes the
      backbone ResNet50 (in the space only with ``--allow-resnet`` of the search);
(c) both together: ``model.fit`` fed by the pipeline, as many steps as (b) timed.

and the ratio pipeline / step per model. Target: pipeline >= 1.5x step (PASS/FAIL), i.e. the
pipeline can keep the accelerator fed with a margin. Warm-up steps (tracing, XLA compilation,
first reads of the cache) are excluded from every timing; the first (compiling) step's time
is printed separately.

Usage::

    .venv/bin/python benchmarks/bench_gpu.py                      # float32, no XLA
    .venv/bin/python benchmarks/bench_gpu.py --jit                # XLA (compile_model(jit_compile=True))
    .venv/bin/python benchmarks/bench_gpu.py --mixed-precision    # mixed_float16 policy
    .venv/bin/python benchmarks/bench_gpu.py --batch-size 64 --steps 50 --clips 1024

Defaults: on a GPU, batch 32, 20 timed steps, 512 clips; with no GPU (CPU only, said in the
output) batch 8, 3 timed steps, 64 clips, so that a run ends in a few minutes on 2 cores.
Nothing here is part of the test suite; the numbers depend on the machine and its load,
which is printed alongside them.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pipeline import FRAME_SHAPE, write_large_cache  # noqa: E402

TARGET_RATIO = 1.5
GPU_DEFAULTS = {"batch_size": 32, "steps": 20, "clips": 512, "warmup": 2}
CPU_DEFAULTS = {"batch_size": 8, "steps": 3, "clips": 64, "warmup": 1}


def describe_devices(tf) -> tuple:
    """``(has_gpu, text)``: the GPUs TensorFlow sees, or "CPU only"."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False, f"CPU only ({os.cpu_count()} CPUs): tf.config.list_physical_devices('GPU') is empty"
    names = []
    for gpu in gpus:
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001  (details are informative only)
            details = {}
        names.append(f"{gpu.name} ({details.get('device_name', 'unknown')}, "
                     f"compute capability {details.get('compute_capability', '?')})")
    return True, "GPU: " + "; ".join(names)


class StepClock:
    """Callback: wall time of ``model.fit`` from the end of batch ``warmup - 1`` to the last batch.

    Reading the loss forces the step to finish, so each timestamp is that of a completed step.
    """

    def __init__(self, keras, warmup: int):
        self.keras = keras
        self.warmup = warmup
        self.times = []
        self.callback = keras.callbacks.LambdaCallback(on_train_batch_end=self._end)

    def _end(self, batch, logs):
        float((logs or {}).get("loss", 0.0))
        self.times.append(time.perf_counter())

    def seconds(self, steps: int) -> float:
        if self.warmup == 0:
            raise ValueError("StepClock needs at least one warm-up step")
        return self.times[self.warmup + steps - 1] - self.times[self.warmup - 1]


def largest_fixed(max_depth: int, allow_resnet: bool, audio_branch: str) -> dict:
    """The hyperparameter values of the largest model of the search space (module docstring)."""
    fixed = {"audio_branch": audio_branch, "temporal": "lstm", "temporal_units": 128, "fusion_units": 512,
             "dropout": 0.5, "head": "linear", "standardize_targets": True, "ridge_path": True, "loss": "ccc_mae"}
    if allow_resnet:
        fixed["backbone"] = "resnet50"
    else:
        fixed.update(backbone="vgg", vgg_depth=max_depth, vgg_width=64)
    return fixed


def build_models(cache, *, batch_size: int, crop: int, allow_resnet: bool, largest_audio: str, jit: bool):
    """Yield ``(label, description, compiled model)`` for the three benchmarked models."""
    import keras_tuner as kt

    from fi_data.traits import TRAITS
    from fi_models.fusion import build_model, compile_model
    from search.hypermodel import PersonalityHyperModel

    hypermodel = PersonalityHyperModel(cache, batch_sizes=(batch_size,), crop_size=crop, allow_resnet=allow_resnet)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    yield "hypermodel-default", _describe(hp.values), compile_model(
        model, learning_rate=hp.get("learning_rate"), loss=hp.get("loss"), jit_compile=jit)

    model = build_model(hypermodel.audio_shape, hypermodel.video_shape, traits=TRAITS)
    yield "build_model-default", "conv2d audio, vgg depth 3 width 32, max, fusion 256, linear head", \
        compile_model(model, jit_compile=jit)

    fixed = largest_fixed(hypermodel.max_vgg_depth, allow_resnet, largest_audio)
    largest = PersonalityHyperModel(cache, batch_sizes=(batch_size,), crop_size=crop, allow_resnet=allow_resnet,
                                    fixed=fixed)
    largest._statistics = hypermodel._statistics  # the same split: computed once
    hp = kt.HyperParameters()
    model = largest.build(hp)
    yield "largest", _describe(hp.values), compile_model(
        model, learning_rate=hp.get("learning_rate"), loss=hp.get("loss"), jit_compile=jit)


def _describe(values: dict) -> str:
    keys = ("audio_branch", "backbone", "vgg_depth", "vgg_width", "temporal", "temporal_units", "fusion_units",
            "standardize_targets", "ridge_path", "loss")
    return ", ".join(f"{k}={values[k]}" for k in keys if k in values)


def measure_pipeline(split, *, batch_size: int, crop: int, audio_masking: bool, batches: int, warmup: int,
                     min_seconds: float) -> tuple:
    """``(samples/s, batches timed)`` of the training pipeline alone, after ``warmup`` batches:
    at least ``batches`` batches and at least ``min_seconds``."""
    from fi_data.pipeline import make_dataset

    dataset = make_dataset(split, training=True, batch_size=batch_size, crop_size=crop, audio_masking=audio_masking,
                           repeat=True, drop_remainder=True)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start, done = time.perf_counter(), 0
    while done < batches or time.perf_counter() - start < min_seconds:
        (audio, video), y = next(iterator)
        done += 1
    _ = float(y[0, 0])  # the last batch is materialized
    return done * batch_size / (time.perf_counter() - start), done


def measure_step(tf, model, batch, *, steps: int, warmup: int, device: str, min_seconds: float) -> tuple:
    """``(samples/s, steps timed, first step s)`` of ``train_on_batch`` on one batch held on
    ``device``: at least ``steps`` steps and at least ``min_seconds`` of them."""
    (audio, video), y = batch
    with tf.device(device):
        audio, video, y = tf.identity(audio), tf.identity(video), tf.identity(y)
    start = time.perf_counter()
    model.train_on_batch((audio, video), y)  # traces (and XLA-compiles) the train step
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        model.train_on_batch((audio, video), y)
    start, done = time.perf_counter(), 0
    while done < steps or time.perf_counter() - start < min_seconds:
        logs = model.train_on_batch((audio, video), y)  # returns NumPy: the step has finished
        done += 1
    seconds = time.perf_counter() - start
    loss = float(logs[0] if isinstance(logs, (list, tuple)) else logs)
    if not tf.math.is_finite(loss):
        print(f"  WARNING: non-finite training loss {loss}")
    return done * int(y.shape[0]) / seconds, done, first


def measure_fit(keras, model, split, *, batch_size: int, crop: int, audio_masking: bool, steps: int,
                warmup: int) -> float:
    """Samples/s of ``model.fit`` fed by the pipeline, warm-up batches excluded."""
    from fi_data.pipeline import make_dataset

    dataset = make_dataset(split, training=True, batch_size=batch_size, crop_size=crop, audio_masking=audio_masking,
                           repeat=True, drop_remainder=True, seed=1)
    clock = StepClock(keras, max(1, warmup))
    model.fit(dataset, steps_per_epoch=clock.warmup + steps, epochs=1, shuffle=False, verbose=0,
              callbacks=[clock.callback])
    return steps * batch_size / clock.seconds(steps)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, help="default 32 on a GPU, 8 on CPU only")
    parser.add_argument("--steps", type=int, help="timed train steps per model (default 20 on a GPU, 3 on CPU only)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up steps/batches (default 2 on a GPU, 1 on CPU)")
    parser.add_argument("--clips", type=int, help="clips of the synthetic cache (default 512 on a GPU, 64 on CPU)")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="time the pipeline and each model's step loop at least this long (default: %(default)s)")
    parser.add_argument("--pipeline-batches", type=int,
                        help="timed batches of the pipeline alone (default: 2 epochs of --clips)")
    parser.add_argument("--mixed-precision", action="store_true", help="global policy mixed_float16")
    parser.add_argument("--jit", action="store_true", help="XLA: compile_model(jit_compile=True)")
    parser.add_argument("--audio-frames", type=int, default=940, help="M of the (24, M, 1) MFCC input")
    parser.add_argument("--crop", type=int, default=128, help="side of the square frame crop")
    parser.add_argument("--audio-masking", action="store_true", help="SpecAugment masking in the pipeline")
    parser.add_argument("--allow-resnet", action="store_true", help="largest model with the ResNet50 backbone")
    parser.add_argument("--largest-audio", default="blstm", choices=("blstm", "conv2d", "conv1d"),
                        help="audio branch of the largest model (default: %(default)s)")
    parser.add_argument("--models", default="hypermodel-default,build_model-default,largest",
                        help="comma-separated subset of the models to measure")
    parser.add_argument("--out", type=Path, help="parent folder of the temporary cache (default: the system's)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from fi_data.cache_format import open_cache

    has_gpu, device_text = describe_devices(tf)
    defaults = GPU_DEFAULTS if has_gpu else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    device = "/GPU:0" if has_gpu else "/CPU:0"
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]

    print(f"device: {device_text}")
    if not has_gpu:
        print("NOTE: RAN ON CPU ONLY: no GPU found; these numbers say nothing about a GPU. Smaller CPU defaults "
              f"(batch {CPU_DEFAULTS['batch_size']}, {CPU_DEFAULTS['steps']} steps, {CPU_DEFAULTS['clips']} clips) "
              "unless given.")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at start; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"settings: batch {args.batch_size}, >= {args.steps} timed steps (>= {args.min_seconds:g} s), "
          f"{args.warmup} warm-up, "
          f"{args.clips} clips, policy {keras.mixed_precision.global_policy().name}, jit_compile={args.jit}, "
          f"audio (24, {args.audio_frames}, 1), frames {FRAME_SHAPE} -> crop {args.crop}, "
          f"audio masking {args.audio_masking}")
    if args.mixed_precision and not has_gpu:
        print("NOTE: mixed_float16 on a CPU is emulated and usually slower than float32.")

    parent = str(args.out) if args.out else None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_", dir=parent))
    try:
        start = time.perf_counter()
        write_large_cache(tmp / "cache", args.clips, (24, args.audio_frames, 1))
        cache = open_cache(tmp / "cache")
        split = cache.split("train")
        print(f"synthetic cache: {args.clips} clips, memory-mapped .npy in {tmp} "
              f"({sum(f.stat().st_size for f in (tmp / 'cache' / 'train').glob('*.npy')) / 2 ** 20:.0f} MiB), "
              f"written in {time.perf_counter() - start:.1f} s")

        batches = args.pipeline_batches or max(1, 2 * (args.clips // args.batch_size))
        pipeline_rate, batches = measure_pipeline(split, batch_size=args.batch_size, crop=args.crop,
                                                  audio_masking=args.audio_masking, batches=batches,
                                                  warmup=max(1, args.clips // args.batch_size),
                                                  min_seconds=args.min_seconds)
        print(f"(a) pipeline alone: {pipeline_rate:.1f} samples/s over {batches} batches "
              f"(after a warm-up epoch)")

        from fi_data.pipeline import make_dataset
        ready = next(iter(make_dataset(split, training=True, batch_size=args.batch_size, crop_size=args.crop,
                                       audio_masking=args.audio_masking, drop_remainder=True)))
        rows = []
        for label, description, model in build_models(cache, batch_size=args.batch_size, crop=args.crop,
                                                      allow_resnet=args.allow_resnet,
                                                      largest_audio=args.largest_audio, jit=args.jit):
            if label not in wanted:
                continue
            t0 = time.perf_counter()
            step_rate, step_count, first = measure_step(tf, model, ready, steps=args.steps,
                                                        warmup=max(1, args.warmup), device=device,
                                                        min_seconds=args.min_seconds)
            # fit runs about as long as the step loop did (at least --steps steps).
            fit_steps = min(step_count, max(args.steps, 1000))
            fit_rate = measure_fit(keras, model, split, batch_size=args.batch_size, crop=args.crop,
                                   audio_masking=args.audio_masking, steps=fit_steps, warmup=args.warmup)
            optimizer = type(model.optimizer).__name__
            print(f"{label}: {description}; {model.count_params():,} parameters; output "
                  f"{model.outputs[0].dtype}; optimizer {optimizer}; jit_compile={model.jit_compile}; "
                  f"first step {first:.1f} s; timed {step_count} steps + {fit_steps} fit steps, "
                  f"{time.perf_counter() - t0:.0f} s in all")
            rows.append((label, model.count_params(), step_rate, fit_rate))
            del model
            gc.collect()

        print()
        print(f"{'model':<20} {'params':>11} {'(a) pipeline':>13} {'(b) step':>10} {'(c) fit':>10} "
              f"{'a/b':>7} {'c/b':>6}  target a/b >= {TARGET_RATIO}x")
        print(f"{'':<20} {'':>11} {'samples/s':>13} {'samples/s':>10} {'samples/s':>10}")
        failed = []
        for label, params, step_rate, fit_rate in rows:
            ratio = pipeline_rate / step_rate
            verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
            if verdict == "FAIL":
                failed.append(label)
            print(f"{label:<20} {params:>11,} {pipeline_rate:>13.1f} {step_rate:>10.1f} {fit_rate:>10.1f} "
                  f"{ratio:>6.2f}x {fit_rate / step_rate:>5.2f}  {verdict}")
        print(f"(a/b: how many times faster the pipeline produces batches than the step consumes them; "
              f"c/b: fraction of the step rate that fit reaches when fed by the pipeline)")
        print(f"overall: {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}"
              f"{' [CPU only: the pipeline and the step share the same cores]' if not has_gpu else ''}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"deleted {tmp}; load average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
