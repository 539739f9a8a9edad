#!/usr/bin/env python
"""Do face crops help on face-borne cues? The main job with ``--frames whole`` beside ``face`` (and ``both``).

Runs ``run_search.py run`` on one demo dataset (the standard demo, or ``--demo-variant SEED``)
once per ``--frames`` choice, with the same ``--time-budget`` and seed, and prints side by side,
on the test split: the 1-MAE of the trait carried by the demo's face-borne cue (``expression``,
the mouth drawn on the speaker's face: small in the whole frame, large in a face crop; see
``fi_data.demo``), the mean 1-MAE over the five traits and the R², beside the mean predictor,
the clip-statistics ridge and the demo's ceiling (``fi_data.demo.demo_scores``: the labels'
conditional mean given the hidden cues) for the same trait.

With ``--hyperparameters JSON`` (a file of hyperparameter values, as ``run_search.py retrain
--from`` takes) each choice retrains that one configuration for ``--retrain-epochs`` instead of
searching: the same network reads whole frames or face crops, which isolates the input from
what a short search happens to pick.

Target (issue 13): ``face`` or ``both`` beats ``whole`` on the face-borne trait. Exit status 0
when it does, 2 when not, 1 when a run failed.

Usage::

    python benchmarks/face_vs_whole.py                         # whole and face, 5 minutes each
    python benchmarks/face_vs_whole.py --frames whole,face,both --time-budget 8m
    python benchmarks/face_vs_whole.py --hyperparameters vgg.json --retrain-epochs 20

Writes ``summary.csv`` into ``--out`` (default a new folder under /tmp), the run folders beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fi_data.demo import DemoParams, demo_cues, demo_dataset, demo_scores, resolve_variant  # noqa: E402
from fi_data.params import FRAME_STREAMS  # noqa: E402
from generalization import variant_table  # noqa: E402

FACE_CUE = "expression"
"""The demo cue drawn on the face (``fi_data.demo.CUES``)."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="whole,face",
                        help=f"comma-separated --frames choices to compare, from {FRAME_STREAMS} (default whole,face)")
    parser.add_argument("--time-budget", default="5m", help="search budget of each run (default 5m)")
    parser.add_argument("--demo-variant", type=int, default=None, help="a demo variant seed (default: the standard demo)")
    parser.add_argument("--hyperparameters", type=Path, default=None,
                        help="retrain this JSON file of hyperparameter values per choice instead of searching")
    parser.add_argument("--retrain-epochs", type=int, default=20,
                        help="epochs of each retraining with --hyperparameters (default 20)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new one under /tmp)")
    args = parser.parse_args(argv)
    choices = [c.strip() for c in args.frames.split(",") if c.strip()]
    bad = [c for c in choices if c not in FRAME_STREAMS]
    if bad or "whole" not in choices or len(choices) < 2:
        parser.error(f"--frames: give 'whole' and at least one of face, both (got {args.frames!r})")
    params = resolve_variant(DemoParams(variant=args.demo_variant))
    trait = next(c.trait for c in demo_cues(params) if c.name == FACE_CUE)
    data = demo_dataset(variant=args.demo_variant)
    ceiling = demo_scores(data)
    out = args.out or Path(tempfile.mkdtemp(prefix="fi-face-vs-whole-"))
    out.mkdir(parents=True, exist_ok=True)
    how = (f"budget {args.time_budget} per run" if args.hyperparameters is None
           else f"{args.hyperparameters} retrained for {args.retrain_epochs} epochs per run")
    print(f"demo {data.name} (variant {args.demo_variant}); face-borne cue '{FACE_CUE}' carries {trait}; "
          f"{how}; output in {out}", flush=True)
    rows = []
    for frames in choices:
        name = f"frames-{frames}"
        if args.hyperparameters is None:
            command = [sys.executable, str(ROOT / "run_search.py"), "run", "--frames", frames, "--time-budget",
                       args.time_budget, "--runs-dir", str(out), "--run-name", name, "--verbose", "0"]
        else:
            command = [sys.executable, str(ROOT / "run_search.py"), "retrain", "--from", str(args.hyperparameters),
                       "--frames", frames, "--retrain-epochs", str(args.retrain_epochs), "--run-dir", str(out / name),
                       "--verbose", "0"]
        if args.demo_variant is not None:
            command += ["--demo-variant", str(args.demo_variant)]
        print("$ " + " ".join(command), flush=True)
        start = time.monotonic()
        with open(out / f"{name}.log", "w") as log:
            status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        if status != 0:
            print(f"--frames {frames}: run_search.py exited with {status}; see {out / f'{name}.log'}")
            return 1
        table = variant_table(out / name)
        rows.append({"frames": frames,
                     f"{trait} model": table.loc[trait, "model 1-MAE"],
                     f"{trait} ridge": table.loc[trait, "ridge 1-MAE"],
                     f"{trait} mean": table.loc[trait, "mean 1-MAE"],
                     f"{trait} ceiling": ceiling.loc["ceiling", trait],
                     f"{trait} model R²": table.loc[trait, "model R²"],
                     "mean model": table.loc["mean", "model 1-MAE"],
                     "mean ridge": table.loc["mean", "ridge 1-MAE"],
                     "mean mean-predictor": table.loc["mean", "mean 1-MAE"],
                     "mean ceiling": ceiling.loc["ceiling", "one_minus_mae"],
                     "model R²": table.loc["mean", "model R²"],
                     "job wall s": round(time.monotonic() - start, 1)})
    summary = pd.DataFrame(rows).set_index("frames")
    summary.to_csv(out / "summary.csv")
    print(f"\ntest split, 1-MAE ({trait}: the trait of the face-borne cue; 'mean': over the five traits; "
          "ridge = clip-statistics ridge on the whole frames' statistics):")
    print(summary.round(4).T.to_string())
    whole = summary.loc["whole", f"{trait} model"]
    best = summary.drop(index="whole")[f"{trait} model"]
    verdict = bool((best > whole).any())
    print(f"\ntarget: face or both beats whole on {trait}: {'PASS' if verdict else 'FAIL'} "
          f"(whole {whole:.4f}; " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()) + ")")
    return 0 if verdict else 2


if __name__ == "__main__":
    sys.exit(main())
