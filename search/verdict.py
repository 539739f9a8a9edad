"""The verdict: does the retrained model beat the strong simple baselines? Said in words.

Read from the ``metrics.json`` content (``search.train.retrain_and_evaluate``): the mean
1-MAE of the model and of each baseline (``search.train.BASELINE_NAMES``: the mean
predictor, the clip-statistics ridge) on validation and test. The *best baseline* is the
one with the best VALIDATION 1-MAE (chosen without the test split, like the model). Any
loss to it, however small, is a warning, never a success.
"""

from __future__ import annotations

from search.evaluation import format_interval

ADVICE = ("try a longer --time-budget (more trials and epochs), a larger --max-epochs, or wider --choices; "
          "report.md lists every trial")
"""What the warning suggests changing."""


def _mean_score(metrics: dict, split: str, prefix: str | None) -> float | None:
    row = metrics["scores"].get(split, {}).get("mean", {})
    value = row.get("one_minus_mae" if prefix is None else f"{prefix}_one_minus_mae")
    return None if value is None else float(value)


def best_baseline(metrics: dict) -> tuple:
    """``(prefix, name)`` of the baseline with the best validation mean 1-MAE.

    Raises:
        KeyError: ``metrics`` has no validation scores of any baseline.
    """
    names = metrics.get("baselines") or {"baseline": "mean predictor"}
    scored = {p: _mean_score(metrics, "validation", p) for p in names}
    scored = {p: v for p, v in scored.items() if v is not None}
    if not scored:
        raise KeyError("metrics.json holds no validation score of any baseline")
    prefix = max(scored, key=scored.get)
    return prefix, names[prefix]


def verdict_lines(metrics: dict) -> list:
    """The verdict's lines (the first lines of the summary and of the report).

    Returns:
        One ``Verdict: ...`` line; then a ``WARNING: ...`` line when the model does not beat
        the best baseline on test or on validation (and another when it is below the mean
        predictor on test), each with the scores and what to change.
    """
    prefix, name = best_baseline(metrics)
    held_out = "validation" not in metrics.get("trained_on", ["train"])
    parts, losses = [], []
    for split in ("validation", "test"):
        model, base = _mean_score(metrics, split, None), _mean_score(metrics, split, prefix)
        if model is None or base is None:
            continue
        diff = model - base
        word = "beats" if diff > 0 else "does not beat"
        parts.append(f"on {split} {model:.4f} vs {base:.4f} ({diff:+.4f})")
        if diff <= 0 and (split == "test" or held_out):
            losses.append(f"{split} ({diff:+.4f})")
    overall = "beats" if not losses else "does NOT beat"
    lines = [f"Verdict: the retrained model {overall} the best baseline, the {name} (chosen on validation), "
             f"in mean 1-MAE: " + "; ".join(parts) + "."]
    if not held_out:
        lines.append("Note: the model was retrained on validation too, so its validation score is not held out.")
    if losses:
        lines.append(f"WARNING: the model does not beat the {name} on {' and '.join(losses)}; "
                     f"the baseline is the better predictor here. {ADVICE[0].upper()}{ADVICE[1:]}.")
    paired = interval_line(metrics, "test")
    if paired:
        lines.append(paired)
    mean_test, model_test = _mean_score(metrics, "test", "baseline"), _mean_score(metrics, "test", None)
    if prefix != "baseline" and mean_test is not None and model_test is not None and model_test <= mean_test:
        lines.append(f"WARNING: the model is not even better than the mean predictor on test "
                     f"({model_test:.4f} vs {mean_test:.4f}).")
    return lines


def interval_line(metrics: dict, split: str) -> str | None:
    """``"Test, model minus each baseline (1-MAE, 95% interval ...): mean predictor +0.0870
    [+0.0800, +0.0940]; ..."``, from ``metrics["intervals"]``; None when absent."""
    records = metrics.get("intervals", {}).get(split)
    if not records:
        return None
    names = metrics.get("baselines") or {"baseline": "mean predictor"}
    found = {r["quantity"]: r for r in records if r["metric"] == "one_minus_mae"}
    parts = [f"{name} {format_interval(r['estimate'], r['low'], r['high'])}"
             for prefix, name in names.items() if (r := found.get(f"model - {prefix}"))]
    model = found.get("model")
    head = f"{split.capitalize()} 1-MAE " + (f"{format_interval(model['estimate'], model['low'], model['high'])}; "
                                             if model else "")
    return (head + "model minus each baseline, 95% cluster-bootstrap interval over YouTube ids: "
            + "; ".join(parts) + ".")


def variation_lines(metrics: dict, split: str = "test") -> list:
    """Lines on the seeds and the ensemble of a retraining (``metrics["seeds"]``,
    ``metrics["ensemble"]`` of ``search.train.retrain_and_evaluate``), or ``[]``.

    Returns:
        ``Seeds ...: test 1-MAE mean ± SD ...`` when several seeds were trained, and
        ``Ensemble of K ...: test 1-MAE ... vs the single best configuration ...`` when the
        delivered model is an ensemble.
    """
    lines = []
    seeds = metrics.get("seeds") or {}
    summary = (seeds.get("summary") or {}).get(split)
    if summary:
        lines.append(f"Seeds {', '.join(map(str, seeds['seeds']))} (the same configuration retrained): {split} "
                     f"1-MAE {summary['one_minus_mae']['mean']:.4f} ± {summary['one_minus_mae']['sd']:.4f}, "
                     f"R² {summary['r2']['mean']:.4f} ± {summary['r2']['sd']:.4f} (mean ± SD); saved: seed "
                     f"{seeds['saved_seed']} ({seeds['chosen_by']}).")
    ensemble = metrics.get("ensemble") or {}
    single = (ensemble.get("best_single") or {}).get(split)
    model = metrics["scores"].get(split, {}).get("mean")
    if single and model:
        diff = model["one_minus_mae"] - single["one_minus_mae"]
        lines.append(f"Ensemble of {len(ensemble['members'])} configurations (trials "
                     f"{', '.join(map(str, ensemble['member_trials']))}, predictions averaged): {split} 1-MAE "
                     f"{model['one_minus_mae']:.4f} vs {single['one_minus_mae']:.4f} for the best configuration "
                     f"alone ({diff:+.4f}).")
    return lines
