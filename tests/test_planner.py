"""The budget planner (search.planner) and the deadline (search.tuner.DeadlineStop)."""

import json
import time

import keras
import pandas as pd
import pytest

from fi_data.cache_format import write_synthetic_cache
from search import planner
from search.config import SearchConfig
from search.hypermodel import PersonalityHyperModel
from search.planner import BUDGET_SHARE, EpochCost, bracket_seconds, first_bracket, plan_search
from search.job import run_search
from search.tuner import plan_for_budget


def test_first_bracket_is_keras_tuners():
    assert first_bracket(9, 3) == ((9, 1), (3, 3), (1, 9))
    assert first_bracket(27, 3) == ((27, 1), (9, 3), (3, 9), (1, 27))
    # promoted trials pay only the epochs they add
    assert bracket_seconds(((9, 1), (3, 3), (1, 9)), EpochCost(2.0, 1.0, 1)) == 9 * 3 + 3 * 4 + 1 * 8


@pytest.mark.parametrize("budget", [60, 420, 600, 3600])
def test_the_plan_is_the_largest_bracket_that_fits(budget):
    cost = EpochCost(overhead_s=3.0, epoch_s=2.0, models=3)
    plan = plan_search(cost, budget)
    assert plan.fits and plan.seconds <= BUDGET_SHARE * budget
    assert plan.seconds == bracket_seconds(first_bracket(plan.max_epochs, 3), cost)
    if plan.max_epochs < planner.MAX_PLANNED_EPOCHS:
        bigger = [bracket_seconds(first_bracket(e, 3), cost) for e in range(plan.max_epochs + 1, 82)]
        assert min(bigger) > BUDGET_SHARE * budget
    assert "plan: max_epochs" in plan.line() and "→" in plan.line()


def test_random_search_gets_the_same_epoch_planning():
    plan = plan_search(EpochCost(1.0, 2.0, 1), 600, tuner="random")
    assert plan.fits and plan.max_trials >= 8 and plan.seconds <= BUDGET_SHARE * 600


def test_an_explicit_max_epochs_wins_with_a_warning_when_it_cannot_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(planner, "measure_epoch_cost", lambda hypermodel, **kw: EpochCost(5.0, 10.0, 1))
    config = SearchConfig(max_epochs=30, time_budget_s=60.0, plan_epochs=False)
    kept, plan = plan_for_budget(None, tmp_path / "run", config)
    assert kept.max_epochs == 30 and plan.max_epochs == 30 and not plan.fits
    assert "WARNING: with --max-epochs 30 the first bracket needs about" in capsys.readouterr().out
    planned, plan = plan_for_budget(None, tmp_path / "run", SearchConfig(time_budget_s=600.0, plan_epochs=True))
    assert planned.max_epochs == plan.max_epochs and plan.fits
    assert "plan: max_epochs" in capsys.readouterr().out


class _SlowEpochs(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(self.seconds)


class SlowHyperModel(PersonalityHyperModel):
    """Every epoch takes at least ``EPOCH_S`` seconds."""

    EPOCH_S = 1.0

    def fit(self, hp, model, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), _SlowEpochs(self.EPOCH_S)]
        return super().fit(hp, model, *args, **kwargs)


def test_the_deadline_stops_the_running_trial_and_no_trial_starts_after_it(tmp_path, monkeypatch):
    # the measurement is tested above; here the budget goes to the trials
    monkeypatch.setattr(planner, "measure_epoch_cost", lambda hypermodel, **kw: EpochCost(1.0, 1.0, 1))
    cache = write_synthetic_cache(tmp_path / "cache", {"train": 8, "validation": 4, "test": 4},
                                  audio_shape=(24, 20, 1), frame_shape=(2, 36, 36, 3))
    budget = 8.0
    config = SearchConfig(tuner="random", max_trials=5, max_epochs=50, time_budget_s=budget, crop_size=32,
                          batch_sizes=(4,), trials_per_process=None, early_stopping_patience=0)
    hypermodel = SlowHyperModel(cache, batch_sizes=(4,), crop_size=32)
    start = time.monotonic()
    result = run_search(cache, tmp_path / "run", config, hypermodel=hypermodel)
    wall = time.monotonic() - start
    trials = pd.read_csv(tmp_path / "run" / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 1 and result.stopped_by == "time_budget"  # no second trial started
    row = trials.iloc[0]
    assert row["status"] == "COMPLETED" and bool(row["stopped_at_deadline"])
    assert 1 <= int(row["epochs_trained"]) < 50
    # at most one epoch (the slow sleep plus its step) after the deadline, plus bookkeeping
    assert wall <= budget + SlowHyperModel.EPOCH_S + 2.0
    summary = json.loads((tmp_path / "run" / "search.json").read_text())
    assert summary["stopped_by"] == "time_budget" and summary["wall_s"] <= budget + SlowHyperModel.EPOCH_S + 2.0
