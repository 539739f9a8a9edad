"""Effect of the regression-to-the-mean remedies, measured side by side in one run.

Trains the default model (``fi_models.fusion.build_model`` defaults) for a few epochs on a
cache's training split, once per setting, with the same seed and data order:

    linear              the assignment's model: linear head, MAE loss
    sigmoid             sigmoid head, MAE loss
    standardized        linear head on standardized targets (training mean/SD), MAE loss
    ccc_mae             linear head, MAE + (1 - CCC) loss
    standardized+ccc    both remedies

and prints, for the validation split, mean 1-MAE, mean R², mean prediction spread
(SD of predictions / SD of labels; ~0 = regression to the mean) and per-trait spread, beside
the mean baseline (the training mean predicted for every clip).

Usage (from the project root)::

    .venv/bin/python benchmarks/remedy_effect.py                 # synthetic cache under /tmp
    .venv/bin/python benchmarks/remedy_effect.py --cache .fi_cache/<key> --epochs 10

Without ``--cache`` a synthetic cache (``fi_data.cache_format.write_synthetic_cache``, in which
only openness and conscientiousness are learnable) is written to ``--workdir``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import pandas as pd  # noqa: E402

from fi_data.cache_format import open_cache, write_synthetic_cache  # noqa: E402
from fi_data.pipeline import make_dataset  # noqa: E402
from fi_data.traits import TRAITS  # noqa: E402
from fi_models.fusion import build_model, compile_model, target_statistics  # noqa: E402
from fi_models.metrics import MEAN_ROW, score_predictions  # noqa: E402

SETTINGS = {
    # name: (head, standardized targets, loss)
    "linear": ("linear", False, "mae"),
    "sigmoid": ("sigmoid", False, "mae"),
    "standardized": ("linear", True, "mae"),
    "ccc_mae": ("linear", False, "ccc_mae"),
    "standardized+ccc": ("linear", True, "ccc_mae"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, help="a finished cache folder (default: write a synthetic one)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fi_remedy_effect"),
                        help="where the synthetic cache goes (default: %(default)s)")
    parser.add_argument("--train-clips", type=int, default=256, help="synthetic cache: training clips")
    parser.add_argument("--validation-clips", type=int, default=96, help="synthetic cache: validation clips")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--crop", type=int, default=128, help="video crop side, at most the frame size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    return parser.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    if args.cache is None:
        cache = write_synthetic_cache(args.workdir / "cache", {"train": args.train_clips,
                                                               "validation": args.validation_clips, "test": 2},
                                      seed=args.seed)
    else:
        cache = open_cache(args.cache)
    train, validation = cache.split("train"), cache.split("validation")
    crop = min(args.crop, *cache.frame_shape[1:3])
    video_shape = (cache.frame_shape[0], crop, crop, 3)
    mean, std = target_statistics(train.targets)
    print(f"cache {cache.path}: train {len(train)}, validation {len(validation)} clips; audio {cache.audio_shape}, "
          f"video {video_shape}; {args.epochs} epochs, batch {args.batch_size}, lr {args.learning_rate}, "
          f"seed {args.seed}", flush=True)

    rows, spreads, baseline = {}, {}, None
    for name in args.settings:
        head, standardized, loss = SETTINGS[name]
        keras.utils.set_random_seed(args.seed)
        stats = dict(target_mean=mean, target_std=std) if standardized else {}
        model = compile_model(build_model(cache.audio_shape, video_shape, traits=TRAITS, head=head, **stats),
                              learning_rate=args.learning_rate, loss=loss)
        started = time.perf_counter()
        model.fit(make_dataset(train, training=True, batch_size=args.batch_size, seed=args.seed, crop_size=crop),
                  epochs=args.epochs, shuffle=False, verbose=0)  # the dataset shuffles itself
        seconds = time.perf_counter() - started
        predictions = model.predict(make_dataset(validation, training=False, batch_size=args.batch_size,
                                                 crop_size=crop), verbose=0)
        table = score_predictions(validation.targets, predictions, mean, traits=TRAITS)
        rows[name] = {"val_1-MAE": table.loc[MEAN_ROW, "one_minus_mae"], "val_R2": table.loc[MEAN_ROW, "r2"],
                      "spread": table.loc[MEAN_ROW, "spread"], "train_s": seconds}
        spreads[name] = table.loc[list(TRAITS), "spread"]
        baseline = {"val_1-MAE": table.loc[MEAN_ROW, "baseline_one_minus_mae"],
                    "val_R2": table.loc[MEAN_ROW, "baseline_r2"], "spread": 0.0, "train_s": 0.0}
        print(f"  {name:18s} done in {seconds:6.1f} s: val 1-MAE {rows[name]['val_1-MAE']:.4f}", flush=True)

    summary = pd.DataFrame({**rows, "mean baseline": baseline}).T
    summary["1-MAE - baseline"] = summary["val_1-MAE"] - baseline["val_1-MAE"]
    pd.set_option("display.width", 160)
    print("\nValidation split, mean over the five traits (spread = SD(pred) / SD(labels)):")
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print("\nPer-trait prediction spread on validation:")
    print(pd.DataFrame(spreads).T.to_string(float_format=lambda v: f"{v:.3f}"))
    return summary


if __name__ == "__main__":
    main()
