"""``report.md`` and ``plots/*.png`` of a run folder, from the files the run wrote.

The report reads only files (``config.json``, ``metrics.json``, ``retrain_history.csv``,
``predictions.csv``, ``trials.csv``), so it can be regenerated at any time with
:func:`write_report`. The one file it updates is ``trials.csv``: its ``diverged`` column is
filled in from the mean predictor's validation score in ``metrics.json``
(``search.trials.mark_diverged``). Plots use Matplotlib's object-oriented API (``matplotlib.figure.
Figure``), which renders with the Agg canvas without touching the global pyplot backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fi_data.traits import SPLITS, TRAITS
from fi_models.metrics import ONE_MINUS_MAE
from search.runs import RunPaths, tensorboard_command
from search.trials import DIVERGED_MARGIN, format_value, rewrite_trials_csv
from search.verdict import variation_lines, verdict_lines

PLOTS = {"curves": "retrain_curves.png", "baseline": "test_vs_baseline.png",
         "scatter": "test_predicted_vs_true.png", "trials": "trial_scores.png"}
"""Plot key -> file name under ``plots/``."""


LOSS_NAMES = {"mae": "MAE", "mse": "MSE", "ccc_mae": "MAE + (1 - CCC)"}
"""Loss hyperparameter value (``fi_models.losses.LOSSES``) -> its name on the loss axis."""


def _save(fig: Figure, path: Path) -> Figure:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_curves(history: pd.DataFrame, path: Path, best_epoch: int | None = None,
                loss: str | None = None) -> Figure:
    """Training and validation loss and 1-MAE of the retrained model per epoch (1-based),
    with the restored best epoch marked when given.

    Args:
        history: ``retrain_history.csv`` (columns ``epoch``, ``loss``, ``one_minus_mae`` and
            their ``val_`` twins).
        path: the PNG to write.
        best_epoch: the restored epoch (1-based), or None.
        loss: the ``loss`` hyperparameter (``"mae"``, ``"mse"``, ``"ccc_mae"``), named on the
            loss axis; None names it only "loss".

    Returns:
        The Matplotlib ``Figure`` (axes: loss, then 1-MAE).
    """
    fig = Figure(figsize=(10, 4))
    loss_label = f"loss: {LOSS_NAMES.get(loss, loss)} (label units)" if loss else "loss"
    for ax, key, title in zip(fig.subplots(1, 2), ("loss", ONE_MINUS_MAE), (loss_label, "1-MAE")):
        ax.plot(history["epoch"], history[key], marker="o", label="train")
        if "val_" + key in history:
            ax.plot(history["epoch"], history["val_" + key], marker="o", label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls=":", label="best epoch (weights kept)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=title, title=f"retraining: {title}")
        ax.legend()
    return _save(fig, path)


def plot_test_vs_baseline(scores: dict, path: Path) -> None:
    """Per-trait and mean test 1-MAE of the model beside the mean predictor and the ridge."""
    names = [*TRAITS, "mean"]
    bars = {"model": "one_minus_mae", "mean predictor": "baseline_one_minus_mae",
            "clip-statistics ridge": "ridge_one_minus_mae"}
    bars = {label: [scores[n][key] for n in names] for label, key in bars.items() if key in scores["mean"]}
    x = np.arange(len(names))
    width = 0.8 / len(bars)
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    for i, (label, values) in enumerate(bars.items()):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
    low = min(v for values in bars.values() for v in values)
    ax.set(xticks=x, xticklabels=names, ylabel="test 1-MAE", ylim=(max(0.0, low - 0.05), 1.0),
           title="test 1-MAE per trait")
    ax.legend()
    _save(fig, path)


def plot_predicted_vs_true(predictions: pd.DataFrame, baseline_mean: dict, path: Path) -> None:
    """One scatter per trait of test predictions against labels, with y = x and the baseline."""
    test = predictions[predictions["split"] == "test"]
    fig = Figure(figsize=(4 * len(TRAITS), 4))
    for ax, trait in zip(fig.subplots(1, len(TRAITS)), TRAITS):
        ax.scatter(test[f"true_{trait}"], test[f"pred_{trait}"], s=8, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="gray", lw=1, label="y = x")
        ax.axhline(baseline_mean[trait], color="tab:red", lw=1, ls="--", label="training mean")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true", ylabel="predicted", title=trait)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_trial_scores(trials: pd.DataFrame, path: Path, baselines: dict | None = None) -> Figure:
    """Each trial's validation score in trial order, failed trials marked, and the running best.

    Diverged trials (``trials["diverged"]`` True, see ``search.trials.mark_diverged``) are
    kept off the y scale: they are drawn as red triangles on the bottom edge, with a note of
    how many lie below it, so the scale shows the differences between the useful trials.
    Failed (unscored) trials are marked with a cross on the bottom edge.

    Args:
        trials: ``trials.csv`` (columns ``trial_id``, ``score``; ``diverged`` optional).
        path: the PNG to write.
        baselines: name -> validation 1-MAE (e.g. ``{"mean predictor": 0.88}``), drawn as
            horizontal lines; None or empty draws none.

    Returns:
        The Matplotlib ``Figure`` (one axes; y in validation 1-MAE).
    """
    baselines = {k: float(v) for k, v in (baselines or {}).items() if v is not None and np.isfinite(v)}
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    order = np.arange(len(trials))
    score = pd.to_numeric(trials["score"], errors="coerce").to_numpy(dtype=float)
    done = np.isfinite(score)
    flagged = trials["diverged"] if "diverged" in trials else pd.Series(False, index=trials.index)
    diverged = done & flagged.map(lambda v: str(v).strip().lower() in ("true", "1")).to_numpy(dtype=bool)
    kept = done & ~diverged
    shown = [*score[kept], *baselines.values()]
    if shown:
        low, high = min(shown), max(shown)
        pad = 0.1 * (high - low) or 0.01
        ax.set_ylim(low - pad, high + pad)
    bottom = ax.get_ylim()[0]
    ax.plot(order[kept], score[kept], "o", label="trial")
    if done.any():
        best = pd.Series(np.where(done, score, np.nan)).cummax().ffill().to_numpy()
        ax.step(order, np.maximum(best, bottom), where="post", color="tab:green", label="best so far")
    for (name, value), color in zip(baselines.items(), ("tab:gray", "tab:purple", "tab:brown")):
        ax.axhline(value, color=color, ls="--", lw=1, label=f"{name} ({value:.4f})")
    if diverged.any():
        n = int(diverged.sum())
        ax.plot(order[diverged], np.full(n, bottom), "v", color="tab:red", clip_on=False, ms=8,
                label="diverged (score below the axis)")
        ax.annotate(f"{n} diverged trial{'s' if n > 1 else ''} below (lowest {np.min(score[diverged]):.3f})",
                    xy=(0.01, 0.03), xycoords="axes fraction", color="tab:red", fontsize=9)
    failed = ~done
    if failed.any() and done.any():
        ax.plot(order[failed], np.full(failed.sum(), bottom), "x", color="tab:red", clip_on=False,
                label="failed / not scored")
    if len(trials) <= 30:
        ax.set_xticks(order, trials["trial_id"].astype(str), rotation=90 if len(trials) > 12 else 0)
    ax.set(xlabel="trial id (in order)", ylabel="validation 1-MAE (best epoch)", title="search: trial scores")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _markdown_table(rows: list, header: list) -> str:
    def cell(v):
        if isinstance(v, float):
            return "n/a" if not np.isfinite(v) else f"{v:.4f}"
        return "n/a" if v is None else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _interval_section(metrics: dict) -> list:
    """Markdown lines: the test split's bootstrap intervals (``metrics["intervals"]``), if any."""
    records = metrics.get("intervals", {}).get("test")
    if not records:
        return []
    names = {"model": "model", **(metrics.get("baselines") or {})}

    def label(quantity):
        if quantity.startswith("model - "):
            return f"model − {names.get(quantity[8:], quantity[8:])}"
        return names.get(quantity, quantity)

    rows = [[label(r["quantity"]), r["metric"], r["estimate"], r["low"], r["high"]] for r in records]
    return [f"Test, 95% intervals ({metrics.get('bootstrap', 'cluster bootstrap over YouTube ids')}); "
            "a paired difference whose interval excludes 0 is a difference you can trust:", "",
            _markdown_table(rows, ["quantity", "metric (mean of traits)", "estimate", "low", "high"]), ""]


def _marked_trials(path: Path, baseline_score: float | None) -> pd.DataFrame | None:
    """``trials.csv`` with its ``diverged`` column computed against ``baseline_score``, or None.

    The file is rewritten (atomically) only when that column changes; every other cell is
    kept as written (read as text, so ids like ``0001`` stay ids).
    """
    if rewrite_trials_csv(path, baseline_score=baseline_score) is None:
        return None
    return pd.read_csv(path, dtype={"trial_id": str})


def diverged_line(trials: pd.DataFrame, baseline_score: float | None) -> str | None:
    """The report's sentence on diverged trials (``trials["diverged"]``), or None when none diverged."""
    if "diverged" not in trials:
        return None
    n = int(trials["diverged"].map(lambda v: str(v).strip().lower() in ("true", "1")).sum())
    if not n:
        return None
    return (f"{n} of {len(trials)} trials diverged: their validation 1-MAE is more than {DIVERGED_MARGIN} below the "
            f"mean predictor's ({baseline_score:.4f}); they are marked `diverged` in `trials.csv` and drawn on "
            "the bottom edge of the trial plot.")


def started_from_line(started: dict) -> str:
    """The report's sentence on the weights the retraining started from (``metrics["started_from"]``)."""
    epoch = started.get("trial_best_epoch")
    return (f"Started from trial {started['trial_id']}'s best checkpoint"
            + (f" (its epoch {epoch})" if epoch else "") + f", `{Path(started['weights']).name}`, not from scratch: "
            "the epochs below come on top of those the search trained.")


def epoch_cap_line(metrics: dict) -> str | None:
    """A warning when the retraining's best epoch is its last one at the epoch cap, or None.

    The best epoch being the last of ``metrics["epochs"]`` means the model was still
    improving on validation when it had to stop: more epochs would likely help.
    """
    best, trained, cap = metrics.get("best_epoch"), metrics.get("epochs_trained"), metrics.get("epochs")
    if best and trained and best == trained and metrics.get("stopped_by_time"):
        return (f"**The best validation epoch is the last one ({best}): the retraining was still improving when "
                f"it reached its time limit (search.train.RETRAIN_TIME_SHARE of the time budget). Retrain with "
                f"more epochs, e.g. `run_search.py retrain --from RUN --retrain-epochs {2 * best}`.**")
    if not best or not cap or best != trained or trained < cap:
        return None
    return (f"**The best validation epoch is the last one ({best} of {cap}): the retraining was still improving "
            f"when it reached its epoch cap. Retrain with more epochs, e.g. `--retrain-epochs {2 * cap}` "
            "(early stopping ends it when it stops improving).**")


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and the plots of a retrained run folder.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: if ``metrics.json`` (retraining) is missing, naming it.
    """
    paths = RunPaths(Path(run_dir))
    if not paths.metrics.is_file():
        raise FileNotFoundError(f"{paths.metrics}: missing; retrain and score the run before reporting")
    metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    scores = metrics["scores"]
    plots = {key: paths.plots / name for key, name in PLOTS.items()}
    plot_curves(pd.read_csv(paths.history), plots["curves"], metrics.get("best_epoch"),
                (metrics.get("hyperparameters") or {}).get("loss"))
    plot_test_vs_baseline(scores["test"], plots["baseline"])
    plot_predicted_vs_true(pd.read_csv(paths.predictions), metrics["baseline_mean"], plots["scatter"])
    validation = scores.get("validation", {}).get("mean", {})
    references = {"mean predictor": validation.get("baseline_one_minus_mae"),
                  "clip-statistics ridge": validation.get("ridge_one_minus_mae")}
    trials = _marked_trials(paths.trials_csv, references["mean predictor"])
    if trials is not None and len(trials):
        plot_trial_scores(trials, plots["trials"], references)

    test = scores["test"]["mean"]
    has_ridge = "ridge_one_minus_mae" in test
    out = [f"# Personality search report: `{paths.root.name}`", "",
           *(f"**{line}**" if line.startswith("WARNING") else line for line in verdict_lines(metrics)), "",
           f"Test 1-MAE **{test['one_minus_mae']:.4f}** (mean of the five traits) against "
           f"**{test['baseline_one_minus_mae']:.4f}** for the mean predictor ({metrics['baseline']})"
           + (f" and **{test['ridge_one_minus_mae']:.4f}** for the clip-statistics ridge" if has_ridge else "")
           + f"; test R² {test['r2']:.4f}, prediction spread {test['spread']:.2f} "
           "(SD of predictions / SD of labels; 1 = the labels' spread, 0 = a constant).", ""]
    if has_ridge:
        ridge = metrics.get("ridge", {})
        out += [f"The clip-statistics ridge: {ridge.get('description', '')}; chosen variant "
                f"`{ridge.get('variant')}` (validation 1-MAE per variant: "
                + ", ".join(f"{k} {v:.4f}" for k, v in ridge.get("validation_one_minus_mae", {}).items()) + ").", ""]
    has_identity = "identity_one_minus_mae" in test
    if has_identity:
        shared = metrics.get("identity_shared_id_share", {}).get("test")
        out += ["The identity lookup predicts each clip as the mean training label of the training clips from "
                "the same YouTube video (no audio, no video)"
                + (f"; {shared:.0%} of the test clips share their video with training clips" if shared is not None
                   else "") + ". A model that does not beat it may be recognising the person rather than reading "
                "personality; with `--split speaker-disjoint` no video is in two splits and the lookup falls back "
                "to the mean predictor.", ""]
    optional = [(has_ridge, "ridge_one_minus_mae", "ridge 1-MAE"), (has_identity, "identity_one_minus_mae",
                                                                    "identity 1-MAE")]
    columns = ("one_minus_mae", "baseline_one_minus_mae", *(c for ok, c, _ in optional if ok), "r2",
               *(("ridge_r2",) if has_ridge else ()), *(("ccc", "pcc") if "ccc" in test else ()), "spread")
    header = ["1-MAE", "mean 1-MAE", *(h for ok, _, h in optional if ok), "R²",
              *(["ridge R²"] if has_ridge else []), *(["CCC", "PCC"] if "ccc" in test else []), "spread"]
    out += ["## Scores", "",
            _markdown_table([[s, scores[s]["n"], *(scores[s]["mean"][c] for c in columns)] for s in SPLITS],
                            ["split", "clips", *header]), "",
            *(["The model was trained on the validation split too, so its validation scores are not "
               "held out.", ""] if "validation" in metrics["trained_on"] else []),
            "Test, per trait:", "",
            _markdown_table([[t, *(scores["test"][t][c] for c in columns)] for t in [*TRAITS, "mean"]],
                            ["trait", *header]), "",
            *_interval_section(metrics),
            *(line for v in variation_lines(metrics) for line in (v, "")),
            f"![test 1-MAE against the baseline](plots/{PLOTS['baseline']})", "",
            f"![test predictions against labels](plots/{PLOTS['scatter']})", ""]
    hp_rows = [[k, format_value(v)] for k, v in metrics["hyperparameters"].items()]
    source = metrics.get("source", {})
    out += ["## Retrained model", "",
            *([started_from_line(metrics["started_from"]), ""] if metrics.get("started_from") else []),
            f"Trained on {' + '.join(metrics['trained_on'])} for {metrics['epochs_trained']} of "
            f"{metrics['epochs']} epochs" + (f", best validation epoch {metrics['best_epoch']} (weights restored)"
                                             if metrics.get("best_epoch") else
                                             ", no epoch beat the untrained weights (kept)"
                                             if metrics.get("best_epoch") == 0 else "")
            + (f" in {metrics['retrain_wall_s']:.0f} s" if metrics.get("retrain_wall_s") is not None else "") + ". "
            f"Model: `{metrics['model']}`; its input preprocessing: `{metrics['preprocessing']}`.", "",
            *(line for line in [epoch_cap_line(metrics)] if line for line in (line, "")),
            _markdown_table(hp_rows, ["hyperparameter", "value"]), "",
            f"![retraining curves](plots/{PLOTS['curves']})", ""]
    if trials is not None and len(trials):
        counts = trials["status"].value_counts().to_dict()
        out += ["## Search", "",
                f"{len(trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())}); "
                f"best validation 1-MAE {source.get('search_score') or float('nan'):.4f} "
                f"(trial {source.get('trial_id')}). Every trial: `trials.csv`.", "",
                *(line for line in [diverged_line(trials, references["mean predictor"])] if line
                  for line in (line, "")),
                f"![trial scores](plots/{PLOTS['trials']})", ""]
    out += ["## TensorBoard", "", "Per-trial scalars and the HParams tab, and the retraining run:", "",
            "```", tensorboard_command(paths.tensorboard), "```", ""]
    paths.report.write_text("\n".join(out), encoding="utf-8")
    return paths.report
