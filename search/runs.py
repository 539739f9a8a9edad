"""The run folder: its layout, starting / resuming / overwriting it, and reading it back.

Layout of ``tuner_runs/<run>/`` (``../shared/DESIGN.md`` section 2)::

    config.json                 resolved SearchConfig + the cache's key and path
    tuner/                      the Keras Tuner project (oracle.json, trial_<id>/...)
    tensorboard/trials/<id>/    per-trial scalars and HParams (tensorboard --logdir <run>/tensorboard)
    tensorboard/retrain/        the retraining's scalars and HParams
    trials.csv                  one row per trial (search.trials)
    best_hyperparameters.json   the best trial's values, score and best epoch
    best_model.keras            the retrained model
    preprocessing.json          what an input must look like for best_model.keras
    retrain_history.csv         per-epoch loss / 1-MAE of the retraining
    predictions.csv             per-clip labels and predictions, all splits
    metrics.json                train / validation / test scores beside the mean baseline
    report.md, plots/*.png      the report
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from fi_data.cache_format import FeatureCache, write_json_atomic
from fi_data.errors import UserError
from search.config import SearchConfig

PROJECT_NAME = "tuner"
"""Name of the Keras Tuner project folder inside the run folder."""

TUNER_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")
"""Hyperband's bookkeeping values in a trial's hyperparameters; not model settings."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Paths inside one run folder (see the module docstring)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.json")
    project_dir = property(lambda self: self.root / PROJECT_NAME)
    tensorboard = property(lambda self: self.root / "tensorboard")
    trials_tensorboard = property(lambda self: self.root / "tensorboard" / "trials")
    retrain_tensorboard = property(lambda self: self.root / "tensorboard" / "retrain")
    trials_csv = property(lambda self: self.root / "trials.csv")
    best_hyperparameters = property(lambda self: self.root / "best_hyperparameters.json")
    top_hyperparameters = property(lambda self: self.root / "top_hyperparameters.json")
    best_model = property(lambda self: self.root / "best_model.keras")
    preprocessing = property(lambda self: self.root / "preprocessing.json")
    history = property(lambda self: self.root / "retrain_history.csv")
    predictions = property(lambda self: self.root / "predictions.csv")
    metrics = property(lambda self: self.root / "metrics.json")
    report = property(lambda self: self.root / "report.md")
    plots = property(lambda self: self.root / "plots")
    search_summary = property(lambda self: self.root / "search.json")
    data = property(lambda self: self.root / "data.json")

    def outputs(self) -> tuple:
        """Every file and folder this toolkit writes in the run folder (what overwrite deletes),
        but ``data.json``, which every run rewrites before the search starts."""
        return (self.config, self.project_dir, self.tensorboard, self.trials_csv, self.best_hyperparameters,
                self.top_hyperparameters, self.best_model, self.preprocessing, self.history, self.predictions, self.metrics,
                self.report, self.plots, self.search_summary)


def save_data_origin(run_dir: str | os.PathLike, data_dir: str | os.PathLike, *, demo: bool) -> None:
    """Record in ``<run>/data.json`` which dataset the run was trained on: ``{"data_dir":
    absolute folder, "demo": whether it is the generated demo}`` (``predict`` warns that a demo
    model's scores of real clips mean nothing)."""
    write_json_atomic(RunPaths(Path(run_dir)).data, {"data_dir": str(Path(data_dir).resolve()), "demo": bool(demo)})


def load_data_origin(run_dir: str | os.PathLike) -> dict | None:
    """``data.json`` of :func:`save_data_origin`, or None for a run folder written before it."""
    path = RunPaths(Path(run_dir)).data
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def tensorboard_command(logdir: str | os.PathLike) -> str:
    """The shell command that opens ``logdir`` in TensorBoard with THIS environment's
    ``tensorboard`` (``.venv/bin/tensorboard`` after the README's set-up, which is not on
    ``PATH``), relative to the working folder when it lies under it."""
    exe = Path(sys.executable).with_name("tensorboard")
    if not exe.is_file():
        return f"tensorboard --logdir {logdir}"
    try:
        program = str(exe.relative_to(Path.cwd()))
    except ValueError:
        program = str(exe)
    return f"{program} --logdir {logdir}"


def cache_identity(cache: FeatureCache) -> dict:
    """``{"key": manifest key, "path": absolute cache folder}`` recorded in ``config.json``."""
    return {"key": cache.manifest.get("key"), "path": str(Path(cache.path).resolve())}


def _read_config(path: Path) -> tuple:
    """``(SearchConfig, cache identity dict)`` from a run's ``config.json``."""
    return SearchConfig.load(path), json.loads(path.read_text(encoding="utf-8")).get("cache", {})


def prepare_run_dir(run_dir: str | os.PathLike, config: SearchConfig, cache: FeatureCache) -> RunPaths:
    """Create, resume or overwrite a run folder, then (re)write its ``config.json``.

    With ``config.overwrite`` every output of an earlier run (:meth:`RunPaths.outputs`, and
    nothing else in the folder) is deleted first. Otherwise an existing ``config.json`` must
    agree with ``config`` on the search-defining settings and the cache key, so that
    Keras Tuner resumes the same search.

    Returns:
        The :class:`RunPaths` of the folder.

    Raises:
        ValueError: when resuming with different search settings or another cache (listing
            the differences and how to start over), or an unreadable ``config.json``.
    """
    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    if config.overwrite:
        for p in paths.outputs():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif paths.config.is_file():
        old, old_cache = _read_config(paths.config)
        differences = old.search_differences(config)
        if old_cache.get("key") != cache.manifest.get("key"):
            differences["cache key"] = (old_cache.get("key"), cache.manifest.get("key"))
        if differences:
            listed = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in differences.items())
            raise UserError(f"{paths.root}: this run folder holds a search with other settings ({listed}). "
                             "Rerun with the same settings to resume it, choose another run folder, "
                             "or pass overwrite (--overwrite) to start over.")
    config.save(paths.config, cache=cache_identity(cache))
    return paths


@dataclasses.dataclass(frozen=True)
class BestHyperparameters:
    """The hyperparameter values to rebuild a model, with where they came from.

    Attributes:
        values: hyperparameter name -> value (Hyperband's ``tuner/*`` entries removed).
        score: the trial's validation objective, or None (e.g. a hand-written file).
        trial_id: the Keras Tuner trial id, or None.
        best_epoch: 1-based epoch count at which the trial scored best, or None.
        objective: the objective's name, or None.
    """

    values: dict
    score: float | None = None
    trial_id: str | None = None
    best_epoch: int | None = None
    objective: str | None = None

    def save(self, path: str | os.PathLike) -> None:
        """Write this object as JSON to ``path`` atomically."""
        write_json_atomic(path, dataclasses.asdict(self))


def save_top_hyperparameters(configurations: list, path: str | os.PathLike) -> None:
    """Write a best-first list of :class:`BestHyperparameters` as one JSON list, atomically."""
    write_json_atomic(path, [dataclasses.asdict(c) for c in configurations])


def load_top_hyperparameters(run_dir: str | os.PathLike, k: int) -> list:
    """The ``k`` best distinct configurations of a search, best first.

    Args:
        run_dir: a run folder whose search wrote ``top_hyperparameters.json``.
        k: how many (>= 1).

    Returns:
        list of :class:`BestHyperparameters` (fewer than ``k`` when the search completed
        fewer distinct configurations).

    Raises:
        FileNotFoundError: the run has no ``top_hyperparameters.json`` (its search predates
            it, or none finished), naming the file.
    """
    path = RunPaths(Path(run_dir)).top_hyperparameters
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the run's search did not rank its configurations "
                                "(search again, or drop --ensemble-top)")
    return [BestHyperparameters(**c) for c in json.loads(path.read_text(encoding="utf-8"))[:k]]


def load_best_hyperparameters(path: str | os.PathLike) -> BestHyperparameters:
    """Read best hyperparameters from a run folder or a JSON file.

    Args:
        path: a run folder (its ``best_hyperparameters.json`` is read), a file written by
            :meth:`BestHyperparameters.save`, or a hand-written JSON object of
            ``{name: value}`` (missing hyperparameters take their defaults).

    Raises:
        FileNotFoundError: if the file (or the run folder's file) does not exist.
        ValueError: if the file is not a JSON object of that form (naming the file).
    """
    path = Path(path)
    if path.is_dir():
        path = RunPaths(path).best_hyperparameters
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no best-hyperparameters file (has the search finished a trial?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if isinstance(data.get("values"), dict):
        fields = {f.name for f in dataclasses.fields(BestHyperparameters)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise UserError(f"{path}: unknown keys {unknown}; expected {sorted(fields)}")
        data = dict(data)
    else:
        data = {"values": data}
    data["values"] = {k: v for k, v in data["values"].items() if k not in TUNER_KEYS}
    return BestHyperparameters(**data)


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """What a finished (or interrupted) run folder holds, read back by :func:`load_run`.

    Attributes:
        paths: the folder's :class:`RunPaths`.
        config: the run's :class:`SearchConfig`.
        cache: ``{"key", "path"}`` of the cache it searched on.
        best: its :class:`BestHyperparameters`, or None if no trial completed.
        metrics: the parsed ``metrics.json``, or None before retraining.
    """

    paths: RunPaths
    config: SearchConfig
    cache: dict
    best: BestHyperparameters | None
    metrics: dict | None


def load_run(run_dir: str | os.PathLike) -> SavedRun:
    """Read a run folder's settings and results (for retraining or reporting without searching).

    Raises:
        FileNotFoundError: if the folder has no ``config.json``.
        ValueError: if ``config.json`` is unreadable.
    """
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        raise FileNotFoundError(f"{paths.config}: not a run folder (no config.json)")
    config, cache = _read_config(paths.config)
    best = load_best_hyperparameters(paths.best_hyperparameters) if paths.best_hyperparameters.is_file() else None
    metrics = json.loads(paths.metrics.read_text(encoding="utf-8")) if paths.metrics.is_file() else None
    return SavedRun(paths, config, cache, best, metrics)
