"""Does test-time averaging pay? A finished run's model scored with and without it, side by side.

Test-time averaging (TTA) scores a clip several times on different views of its cached frames
and averages the predictions. This script loads a finished run's model (``best_model.keras``;
its inner fusion model, which takes float crops) and its feature cache, and scores the
validation and test splits with these view sets, all from the same arrays in one run:

    centre          the model as delivered: the centre crop (what validation / test / predict use)
    centre+flip     the centre crop and its mirror image (2 views)
    5 crops         the centre and the four corner crops (5 views)
    5 crops+flips   those and their mirror images (10 views)

It prints, per split and view set, the mean 1-MAE and R² over traits, beside the mean
predictor and the clip-statistics ridge of the run's ``metrics.json``, and the time each view
set takes relative to ``centre``. Training augments with random crops and flips, so the model
has seen such views; whether averaging them helps is what this measures. The decision belongs
to validation; test is printed to confirm.

Usage (from the project root)::

    .venv/bin/python benchmarks/tta_effect.py tuner_runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402

import fi_models.fusion  # noqa: E402,F401 - registers the custom layers
import fi_models.losses  # noqa: E402,F401
import fi_models.metrics  # noqa: E402,F401
import fi_models.serving  # noqa: E402,F401
from fi_data.cache_format import open_cache  # noqa: E402
from fi_data.traits import TRAITS  # noqa: E402


def views(frames: np.ndarray, crop: int, corners: bool, flips: bool) -> list[np.ndarray]:
    """Float32 ``(b, F, crop, crop, 3)`` views in [0, 1] of uint8 frames ``(b, F, H, W, 3)``."""
    h, w = frames.shape[2:4]
    top, left = (h - crop) // 2, (w - crop) // 2
    spots = [(top, left)] + ([(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop)] if corners else [])
    out = []
    for y, x in spots:
        view = frames[:, :, y:y + crop, x:x + crop, :].astype(np.float32) / 255.0
        out.append(view)
        if flips:
            out.append(view[:, :, :, ::-1, :])
    return out


def score(model, audio, frames, crop, corners, flips, batch=32) -> tuple[np.ndarray, float]:
    """Averaged predictions ``(n, 5)`` and the seconds they took."""
    start = time.perf_counter()
    preds = []
    for i in range(0, len(audio), batch):
        a = np.asarray(audio[i:i + batch])
        f = np.asarray(frames[i:i + batch])
        preds.append(np.mean([model.predict_on_batch((a, v)) for v in views(f, crop, corners, flips)], axis=0))
    return np.concatenate(preds), time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder (best_model.keras, preprocessing.json)")
    args = parser.parse_args(argv)
    record = json.loads((args.run / "preprocessing.json").read_text())
    metrics = json.loads((args.run / "metrics.json").read_text())
    cache = open_cache(record["cache"]["path"])
    crop = int(record["crop_size"])
    served = keras.saving.load_model(args.run / "best_model.keras")
    inner = [layer for layer in served.layers if isinstance(layer, keras.Model)]
    model = inner[0] if inner else served
    if len(model.inputs) != 2:
        raise SystemExit("this script scores models with one visual stream (audio, video)")
    print(f"run {args.run}: crop {crop}, cache {cache.path}")
    sets = {"centre": (False, False), "centre+flip": (False, True), "5 crops": (True, False),
            "5 crops+flips": (True, True)}
    warm = cache.split("validation")
    model.predict_on_batch((np.asarray(warm.audio[:32]), views(np.asarray(warm.frames[:32]), crop, False, False)[0]))
    for split in ("validation", "test"):  # (warmed up above, so the first set's time holds no graph tracing)
        arrays = cache.split(split)
        y = np.asarray(arrays.targets, np.float64)
        scores = metrics["scores"][split]["mean"]
        print(f"\n{split} ({len(y)} clips): mean predictor 1-MAE {scores['baseline_one_minus_mae']:.4f}, "
              f"ridge {scores.get('ridge_one_minus_mae', float('nan')):.4f}")
        base_time = None
        for name, (corners, flips) in sets.items():
            pred, seconds = score(model, arrays.audio, arrays.frames, crop, corners, flips)
            base_time = base_time or seconds
            r2 = np.mean([r2_score(y[:, k], pred[:, k]) for k in range(len(TRAITS))])
            print(f"  {name:14s} 1-MAE {1 - np.abs(y - pred).mean():.4f}  R² {r2:.3f}  time x{seconds / base_time:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
