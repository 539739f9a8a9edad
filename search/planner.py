"""Plan a search to fit its time budget: measure what an epoch costs, then choose the epochs.

:func:`measure_epoch_cost` times a few configurations of the space on real batches: the
default model (the first trial) and ``n_random`` configurations drawn the way the oracle
draws them, each built, traced on one batch, then timed over (up to) one epoch. The
cost of a trial is ``overhead_s + epochs * epoch_s`` with the means over those models.

:func:`plan_search` then chooses Keras Tuner's ``max_epochs`` (and ``hyperband_iterations``)
for Hyperband so that the FIRST bracket Keras Tuner runs (its most exploratory one: many
trials of few epochs, the best promoted ``factor``-fold up to ``max_epochs``) fits in
:data:`BUDGET_SHARE` of the budget; for random and Bayesian search it chooses the epochs per
trial and ``max_trials``. Bracket sizes and epochs come from Keras Tuner's own
``HyperbandOracle`` (``_get_size`` / ``_get_epochs``, Li et al. 2018, "Hyperband", JMLR 18),
not from a copy of its formulas.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time

import keras
import keras_tuner as kt
import numpy as np

BUDGET_SHARE = 0.7
"""Share of the time budget the first bracket may take (the estimate is a mean over a few
models; trials of bigger models cost more)."""

MAX_PLANNED_EPOCHS = 81
"""Largest ``max_epochs`` the planner chooses (3**4): beyond it a budget buys iterations."""

MIN_EPOCHS = 2
"""Smallest ``max_epochs`` the planner chooses (Keras Tuner's Hyperband needs >= 2)."""

TRIAL_BOOKKEEPING_S = 2.0
"""Seconds Keras Tuner and the tuner of ``search.tuner`` add per trial (checkpoint, trial
files, TensorBoard logs, ``trials.csv``), measured on the demo; added to the overhead."""

MAX_TIMED_BATCHES = 20
"""Training batches timed per model at most (an epoch of a large split is extrapolated)."""


@dataclasses.dataclass(frozen=True)
class EpochCost:
    """Measured cost of training, in seconds: per trial (build + trace) and per epoch."""

    overhead_s: float
    epoch_s: float
    models: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """A search plan: the settings chosen and what the first bracket will cost.

    Attributes:
        max_epochs, hyperband_iterations, max_trials: the planned settings.
        rounds: ``[(trials, epochs), ...]`` of the first bracket (Hyperband) or
            ``[(max_trials, epochs)]``.
        seconds: estimated seconds of that bracket (or of all random/Bayesian trials).
        fits: whether it fits in the budget share.
        cost: the :class:`EpochCost` used.
    """

    tuner: str
    max_epochs: int
    factor: int
    hyperband_iterations: int
    max_trials: int
    rounds: tuple
    seconds: float
    fits: bool
    cost: EpochCost

    def line(self) -> str:
        """The one-line plan printed before the search."""
        speed = f"~{self.cost.epoch_s:.1f} s/epoch + {self.cost.overhead_s:.0f} s/trial"
        if self.tuner == "hyperband":
            chain = " → ".join(str(n) for n, _ in self.rounds)
            epochs = " → ".join(str(e) for _, e in self.rounds)
            return (f"plan: max_epochs {self.max_epochs}, factor {self.factor}: first bracket of {chain} trials "
                    f"({epochs} epochs) ≈ {self.seconds / 60:.1f} min at {speed}; "
                    f"{self.hyperband_iterations} Hyperband iteration(s)")
        return (f"plan: {self.max_trials} {self.tuner} trials of {self.max_epochs} epochs ≈ "
                f"{self.seconds / 60:.1f} min at {speed}")


def first_bracket(max_epochs: int, factor: int) -> tuple:
    """``[(trials, epochs), ...]`` per round of the first bracket Keras Tuner's Hyperband runs."""
    oracle = kt.oracles.HyperbandOracle(objective=kt.Objective("score", "max"), max_epochs=max_epochs, factor=factor)
    bracket = oracle._get_num_brackets() - 1  # Keras Tuner starts with the most aggressive one
    return tuple((oracle._get_size(bracket, r), oracle._get_epochs(bracket, r)) for r in range(bracket + 1))


def bracket_seconds(rounds, cost: EpochCost) -> float:
    """Estimated seconds of a bracket: every trial pays the overhead and trains the epochs it
    adds to its parent's (a promoted trial continues from its parent's checkpoint)."""
    total, previous = 0.0, 0
    for trials, epochs in rounds:
        total += trials * (cost.overhead_s + (epochs - previous) * cost.epoch_s)
        previous = epochs
    return total


def iteration_seconds(max_epochs: int, factor: int, cost: EpochCost) -> float:
    """Estimated seconds of one whole Hyperband iteration (all its brackets)."""
    oracle = kt.oracles.HyperbandOracle(objective=kt.Objective("score", "max"), max_epochs=max_epochs, factor=factor)
    brackets = oracle._get_num_brackets()
    return sum(bracket_seconds([(oracle._get_size(b, r), oracle._get_epochs(b, r)) for r in range(b + 1)], cost)
               for b in range(brackets))


def plan_search(cost: EpochCost, budget_s: float, *, tuner: str = "hyperband", factor: int = 3,
                max_epochs: int | None = None, max_trials: int | None = None) -> Plan:
    """Choose the search's epochs (and iterations / trials) so that it fits ``budget_s``.

    Args:
        cost: from :func:`measure_epoch_cost`.
        budget_s: the search's time budget in seconds (> 0).
        tuner: ``"hyperband"``, ``"random"`` or ``"bayesian"``.
        factor: Hyperband's reduction factor (>= 2).
        max_epochs: given (the user's ``--max-epochs``): kept as it is; the plan then only
            says whether it fits. None: the largest value in ``MIN_EPOCHS..MAX_PLANNED_EPOCHS``
            whose first bracket fits in ``BUDGET_SHARE * budget_s`` (``MIN_EPOCHS`` when none fits).
        max_trials: random/Bayesian only: kept when given, else as many trials as fit.

    Returns:
        A :class:`Plan`.

    Raises:
        ValueError: ``budget_s <= 0``, ``factor < 2``.
    """
    if not budget_s > 0 or not math.isfinite(budget_s):
        raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    if factor < 2:
        raise ValueError(f"factor must be >= 2, got {factor}")
    room = BUDGET_SHARE * budget_s
    if tuner == "hyperband":
        fitting = [e for e in range(MIN_EPOCHS, MAX_PLANNED_EPOCHS + 1)
                   if bracket_seconds(first_bracket(e, factor), cost) <= room]
        epochs = max_epochs or (max(fitting) if fitting else MIN_EPOCHS)
        rounds = first_bracket(epochs, factor)
        seconds = bracket_seconds(rounds, cost)
        iterations = max(1, int(room // max(iteration_seconds(epochs, factor, cost), 1e-9)))
        return Plan(tuner, epochs, factor, iterations, max_trials or 0, rounds, seconds, seconds <= room, cost)
    trial_s = lambda e: cost.overhead_s + e * cost.epoch_s  # noqa: E731
    if max_epochs:
        epochs = max_epochs
    else:  # enough epochs to learn, and at least 8 trials when the budget allows
        epochs = MIN_EPOCHS
        for e in range(MIN_EPOCHS, MAX_PLANNED_EPOCHS + 1):
            if 8 * trial_s(e) <= room:
                epochs = e
    trials = max_trials or max(1, int(room // trial_s(epochs)))
    seconds = trials * trial_s(epochs)
    return Plan(tuner, epochs, factor, 1, trials, ((trials, epochs),), seconds, seconds <= room, cost)


def _random_hyperparameters(space: kt.HyperParameters, seed: int) -> kt.HyperParameters:
    """Values drawn like Keras Tuner's oracle draws a random trial (active parameters only)."""
    hp = space.copy()
    rng = random.Random(seed)
    for p in hp.space:
        if hp.is_active(p):
            hp.values[p.name] = p.random_sample(rng.randint(0, 2**31 - 1))
    return hp


def measure_epoch_cost(hypermodel, *, n_random: int = 3, seed: int = 0) -> EpochCost:
    """Time the default model and ``n_random`` random configurations of ``hypermodel``.

    Each model is built and trained on one batch and validated on one (the overhead:
    building, tracing; plus :data:`TRIAL_BOOKKEEPING_S`), then trained on a whole epoch, or
    on :data:`MAX_TIMED_BATCHES` batches extrapolated to one, and validated on the whole
    validation split (at most half as many batches, extrapolated).

    Args:
        hypermodel: a ``search.hypermodel.PersonalityHyperModel``.
        n_random, seed: how many random configurations, and the seed of their draws.

    Returns:
        An :class:`EpochCost` (means over the models).
    """
    space = kt.HyperParameters()
    hypermodel.declare(space)
    configs = [kt.HyperParameters()] + [_random_hyperparameters(space, seed + i) for i in range(n_random)]
    n_train = len(hypermodel.cache.split("train"))
    n_val = len(hypermodel.cache.split("validation"))
    overheads, epochs = [], []
    for hp in configs:
        keras.backend.clear_session()
        start = time.perf_counter()
        model = hypermodel.build(hp)
        batch_size = int(hp.get("batch_size"))
        train, val = hypermodel.datasets(batch_size)
        train, val = train.repeat(), val.repeat()  # small splits: fewer batches than timed
        model.fit(train, epochs=1, steps_per_epoch=1, verbose=0)
        model.evaluate(val, steps=1, verbose=0)
        overheads.append(time.perf_counter() - start + TRIAL_BOOKKEEPING_S)
        train_batches, val_batches = math.ceil(n_train / batch_size), math.ceil(n_val / batch_size)
        timed_train, timed_val = min(train_batches, MAX_TIMED_BATCHES), min(val_batches, MAX_TIMED_BATCHES // 2)
        start = time.perf_counter()
        model.fit(train, epochs=1, steps_per_epoch=timed_train, verbose=0)
        batch_s = (time.perf_counter() - start) / timed_train
        start = time.perf_counter()
        model.evaluate(val, steps=timed_val, verbose=0)
        val_s = (time.perf_counter() - start) / timed_val
        epochs.append(train_batches * batch_s + val_batches * val_s)
    keras.backend.clear_session()
    return EpochCost(overhead_s=float(np.mean(overheads)), epoch_s=float(np.mean(epochs)), models=len(configs))
