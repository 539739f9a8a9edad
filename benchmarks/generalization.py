#!/usr/bin/env python
"""Does the main job beat strong simple baselines on demo datasets nobody tuned it for?

Runs ``run_search.py run`` as a user would (default choices, a ``--time-budget``, default
10 minutes) on K demo *variants* (``--demo-variant SEED``, ``fi_data.demo.resolve_variant``
and ``demo_cues``: other cue -> trait mappings, directions, strengths, noise, frame sizes and
clip counts) whose seeds are drawn at random here unless ``--seeds`` is given, and prints,
per variant, the test 1-MAE and R² of the retrained model, of the mean predictor and of the
clip-statistics ridge, per trait and on average, the demo's ceiling (``fi_data.demo.demo_scores``)
and the share of the learnable margin (ceiling - mean predictor) that the ridge and the model
reach, plus the search's and the whole job's wall time, and whether the targets of issue 11 hold:

- model test 1-MAE >= ridge - 0.003, model R² > 0.3, model >= mean predictor;
- search wall time <= budget + one epoch (``search.json``'s ``wall_s``; the allowance for
  "one epoch" is the slowest trial's wall time divided by its epochs, from ``trials.csv``).

With ``--compare-scratch`` it also retrains each variant's best configuration from scratch
(``run_search.py retrain --from RUN``: the same epoch cap, patience and time limit) and prints
that model's test 1-MAE and R² beside the job's: with ``--extra --retrain-from-checkpoint`` the
job continues from the best trial's checkpoint, so this measures that choice on the same search.

Usage::

    python benchmarks/generalization.py                      # 3 random variants, 10 min each
    python benchmarks/generalization.py --seeds 11,12 --time-budget 5m
    python benchmarks/generalization.py --variants 2 --time-budget 5m --compare-scratch --extra=--retrain-from-checkpoint

Writes ``summary.csv`` and ``summary.md`` into ``--out`` (default a new folder under /tmp).
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fi_data.demo import demo_dataset, demo_scores  # noqa: E402
from fi_data.traits import TRAITS  # noqa: E402

COLUMNS = {"one_minus_mae": "model 1-MAE", "baseline_one_minus_mae": "mean 1-MAE",
           "ridge_one_minus_mae": "ridge 1-MAE", "r2": "model R²", "baseline_r2": "mean R²", "ridge_r2": "ridge R²"}


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing ({what}); did the run finish?")
    return json.loads(path.read_text())


def variant_table(run_dir: Path) -> pd.DataFrame:
    """Test scores of one finished run: rows TRAITS + mean, columns :data:`COLUMNS`.

    Raises:
        FileNotFoundError / KeyError: a missing ``metrics.json`` or score key (named).
    """
    metrics = _read(run_dir / "metrics.json", "the retraining's scores")
    test = metrics["scores"]["test"]
    rows = {}
    for name in (*TRAITS, "mean"):
        missing = [k for k in COLUMNS if k not in test[name]]
        if missing:
            raise KeyError(f"{run_dir / 'metrics.json'}: scores.test.{name} lacks {missing}")
        rows[name] = {label: test[name][key] for key, label in COLUMNS.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def margin_share(score: float, mean: float, ceiling: float) -> float:
    """The share of the learnable margin ``ceiling - mean`` that ``score`` reaches (1-MAE's)."""
    return (score - mean) / (ceiling - mean)


def summary_row(seed: int, run_dir: Path, job_wall_s: float) -> dict:
    """One variant's line of the summary, with the targets checked."""
    table = variant_table(run_dir)
    ceiling = float(demo_scores(demo_dataset(variant=seed, progress=False)).loc["ceiling", "one_minus_mae"])
    search = _read(run_dir / "search.json", "the search's wall time")
    budget = search.get("time_budget_s")
    trials = pd.read_csv(run_dir / "trials.csv")
    epochs = pd.to_numeric(trials["epochs_trained"], errors="coerce").clip(lower=1)
    per_epoch = (pd.to_numeric(trials["wall_time_s"], errors="coerce") / epochs).max()
    mean = table.loc["mean"]
    row = {"seed": seed, "n_test": _read(run_dir / "metrics.json", "")["scores"]["test"]["n"],
           **{k: round(float(v), 4) for k, v in mean.items()},
           "model - ridge": round(float(mean["model 1-MAE"] - mean["ridge 1-MAE"]), 4),
           "ceiling": round(ceiling, 4),
           "ridge share": round(margin_share(mean["ridge 1-MAE"], mean["mean 1-MAE"], ceiling), 2),
           "model share": round(margin_share(mean["model 1-MAE"], mean["mean 1-MAE"], ceiling), 2),
           "trials": len(trials), "search wall s": search["wall_s"], "budget s": budget,
           "one epoch s": round(float(per_epoch), 1), "job wall s": round(job_wall_s, 1)}
    row["target: >= ridge - 0.003"] = bool(row["model - ridge"] >= -0.003)
    row["target: R² > 0.3"] = bool(mean["model R²"] > 0.3)
    row["target: >= mean"] = bool(mean["model 1-MAE"] >= mean["mean 1-MAE"])
    row["target: wall <= budget + epoch"] = bool(budget is None or search["wall_s"] <= budget + per_epoch)
    return row


def scratch_columns(run_dir: Path, scratch_dir: Path) -> dict:
    """The from-scratch retraining's test mean 1-MAE and R² and its difference to the job's model."""
    job, scratch = variant_table(run_dir).loc["mean"], variant_table(scratch_dir).loc["mean"]
    started = _read(run_dir / "metrics.json", "")["started_from"]
    return {"job started from": f"trial {started['trial_id']}" if started else "scratch",
            "scratch 1-MAE": round(float(scratch["model 1-MAE"]), 4), "scratch R²": round(float(scratch["model R²"]), 4),
            "job - scratch": round(float(job["model 1-MAE"] - scratch["model 1-MAE"]), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=3, help="number of random variants (default 3)")
    parser.add_argument("--seeds", default=None, help="comma-separated variant seeds instead of random ones")
    parser.add_argument("--time-budget", default="10m", help="passed to run_search.py (default 10m)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new one under /tmp)")
    parser.add_argument("--extra", default="", help="extra arguments for run_search.py, as one string")
    parser.add_argument("--compare-scratch", action="store_true",
                        help="also retrain each variant's best configuration from scratch and print it beside the job")
    args = parser.parse_args(argv)
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else [secrets.randbelow(10**6) for _ in range(args.variants)])
    out = args.out or Path(tempfile.mkdtemp(prefix="fi-generalization-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"variant seeds: {seeds}; budget {args.time_budget}; output in {out}", flush=True)
    rows = []
    for seed in seeds:
        command = [sys.executable, str(ROOT / "run_search.py"), "run", "--demo-variant", str(seed),
                   "--time-budget", args.time_budget, "--runs-dir", str(out), "--run-name", f"variant-{seed}",
                   "--verbose", "0", *args.extra.split()]
        print("$ " + " ".join(command), flush=True)
        start = time.monotonic()
        with open(out / f"variant-{seed}.log", "w") as log:
            status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.monotonic() - start
        if status != 0:
            print(f"variant {seed}: run_search.py exited with {status}; see {out / f'variant-{seed}.log'}")
            continue
        run_dir = out / f"variant-{seed}"
        print(f"\nvariant {seed} (test split):")
        print(variant_table(run_dir).to_string(float_format=lambda v: f"{v:.4f}"), flush=True)
        row = summary_row(seed, run_dir, wall)
        if args.compare_scratch:
            scratch_dir = out / f"variant-{seed}-scratch"
            command = [sys.executable, str(ROOT / "run_search.py"), "retrain", "--from", str(run_dir),
                       "--run-dir", str(scratch_dir), "--verbose", "0"]
            print("$ " + " ".join(command), flush=True)
            with open(out / f"variant-{seed}-scratch.log", "w") as log:
                status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
            if status != 0:
                print(f"variant {seed}: the retraining from scratch exited with {status}; see {log.name}")
            else:
                row.update(scratch_columns(run_dir, scratch_dir))
                print({k: row[k] for k in ("model 1-MAE", "scratch 1-MAE", "job - scratch", "job started from")},
                      flush=True)
        rows.append(row)
    if not rows:
        return 1
    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    try:
        text = summary.to_markdown(index=False)
    except ImportError:  # pandas needs the optional 'tabulate' for markdown
        text = "```\n" + summary.to_string(index=False) + "\n```"
    (out / "summary.md").write_text(text + "\n")
    print("\nsummary (test mean over the five traits; 'one epoch s' = the slowest trial's seconds per epoch, "
          "the allowance of the wall-time target):")
    print(summary.to_string(index=False))
    return 0 if all(all(v for k, v in r.items() if k.startswith("target")) for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
