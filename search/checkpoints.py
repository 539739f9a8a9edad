"""Keep only the trial checkpoints a search can still load.

Keras Tuner saves every trial's weights (``<project>/trial_<id>/checkpoint.weights.h5``; about
68 MB for the demo's models, 505 MB for a demo search) and loads one again only when Hyperband
promotes that trial to the next round of its bracket (``keras_tuner`` ``Hyperband.
_build_hypermodel`` loads ``tuner/trial_id``'s checkpoint), and the job's retraining may start from
the best trial's (``search.job.run_job``). So, after each trial, the checkpoints of ended trials
that can no longer be promoted are deleted (:func:`prune_checkpoints`), the best completed
trial's aside:

- a trial of a bracket that is complete (the oracle dropped it) or of a bracket's last round;
- a trial whose next round is full and that was not chosen for it;
- a chosen trial once its successor has ended (the successor holds the weights from then on).

Random search and Bayesian optimization never load a checkpoint: every ended trial's goes but
the best one's. The sizes come from the files themselves.
"""

from __future__ import annotations

from pathlib import Path

ENDED = ("COMPLETED", "FAILED", "INVALID", "STOPPED")
"""Keras Tuner trial statuses after which a trial writes no more weights."""


def promotable_trials(brackets: list, sizes, status: dict) -> set:
    """Trial ids whose checkpoint a Hyperband oracle may still load.

    Args:
        brackets: ``HyperbandOracle._brackets`` (the incomplete brackets): dicts with
            ``bracket_num`` and ``rounds``, a list of rounds, each a list of
            ``{"past_id": promoted trial id or None, "id": trial id}``.
        sizes: ``sizes(bracket_num, round_num)`` -> trials the round holds when full
            (``HyperbandOracle._get_size``).
        status: trial id -> Keras Tuner status string.

    Returns:
        The ids of trials that may be promoted later, or were promoted to a trial that has
        not ended (a resumed search builds that trial again from the checkpoint).
    """
    needed = set()
    for bracket in brackets:
        rounds = bracket["rounds"]
        for round_num in range(len(rounds) - 1):
            successors = rounds[round_num + 1]
            full = len(successors) >= sizes(bracket["bracket_num"], round_num + 1)
            chosen = {}
            for info in successors:
                chosen.setdefault(info["past_id"], []).append(info["id"])
            for info in rounds[round_num]:
                trial_id = info["id"]
                if trial_id in chosen:
                    if any(status.get(s) not in ENDED for s in chosen[trial_id]):
                        needed.add(trial_id)
                elif not full:
                    needed.add(trial_id)
    return needed


def prune_checkpoints(tuner) -> int:
    """Delete the checkpoints of ``tuner``'s ended trials that no later trial can load.

    Args:
        tuner: a Keras Tuner tuner whose oracle holds the trials in this process (not a
            distributed worker's client oracle: nothing is done then).

    Returns:
        Bytes freed.
    """
    oracle = tuner.oracle
    trials = getattr(oracle, "trials", None)
    if not isinstance(trials, dict):
        return 0
    status = {trial_id: str(getattr(t.status, "value", t.status)) for trial_id, t in trials.items()}
    keep = set()
    if hasattr(oracle, "_brackets"):  # Hyperband
        keep = promotable_trials(oracle._brackets, oracle._get_size, status)
    best = oracle.get_best_trials(1)
    if best and status.get(best[0].trial_id) == "COMPLETED":
        keep.add(best[0].trial_id)  # the retraining may start from it
    freed = 0
    for trial_id, state in status.items():
        if state not in ENDED or trial_id in keep:
            continue
        path = Path(tuner._get_checkpoint_fname(trial_id))
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


def trial_checkpoint(project_dir: str | Path, trial_id: str) -> Path:
    """Where Keras Tuner keeps trial ``trial_id``'s best-epoch weights under ``project_dir``
    (``Tuner._get_checkpoint_fname`` with Keras 3: ``trial_<id>/checkpoint.weights.h5``, written
    by ``SaveBestEpoch`` at each epoch that improved the objective)."""
    return Path(project_dir) / f"trial_{trial_id}" / "checkpoint.weights.h5"


def checkpoint_bytes(project_dir: str | Path) -> int:
    """Total size of the trial checkpoints (``trial_*/checkpoint*``) under ``project_dir``."""
    return sum(p.stat().st_size for p in Path(project_dir).glob("trial_*/checkpoint*") if p.is_file())
