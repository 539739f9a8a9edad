"""Score new clips with a finished run: exactly the preprocessing the model was trained with.

``preprocessing.json`` in the run folder records the cache parameters (sample rate, MFCC
settings, frame count and size) and M (the padded MFCC length); each clip goes through
:func:`fi_data.cache.extract_clip_features` (the cache's own code), and ``best_model.keras``
takes its arrays as they are: the center crop and the scaling are the model's first layer
(``fi_models.serving``). Run folders of older versions, whose model takes float crops, still
work: their crop is replayed with :func:`fi_data.pipeline.prepare_clip` (the validation/test
transform) and the recorded crop size. A clip that cannot be read gets its reason and the
others are still scored.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from fi_data.archives import ArchiveError, open_clip, resolve_passwords
from fi_data.cache import CLIP_FLAGS, PreprocessParams, extract_clip_features
from fi_data.cache_format import write_json_atomic
from fi_data.discovery import find_videos
from fi_data.errors import UserError
from fi_data.traits import TRAITS
from search.runs import RunPaths

PREDICTION_COLUMNS = ("clip", "source", "status", "flags", *TRAITS)
"""Columns of the prediction table, in order."""


def load_trained(run_dir: str | os.PathLike):
    """The run's model and its preprocessing record.

    Returns:
        ``(model, record)``: the loaded ``keras.Model`` and the ``preprocessing.json`` dict.

    Raises:
        FileNotFoundError: if ``best_model.keras`` or ``preprocessing.json`` is missing
            (the run has not retrained yet).
    """
    import keras

    import fi_models.fusion  # noqa: F401 - registers the custom layers, metric and losses
    import fi_models.losses  # noqa: F401
    import fi_models.metrics  # noqa: F401
    import fi_models.serving  # noqa: F401 - the crop-and-scale layer of every model saved since it moved in

    paths = RunPaths(Path(run_dir))
    for p in (paths.best_model, paths.preprocessing):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; predict needs a run that finished retraining "
                                    "(run_search.py run, or run_search.py retrain --from RUN)")
    record = json.loads(paths.preprocessing.read_text(encoding="utf-8"))
    model = keras.saving.load_model(paths.best_model)
    return model, record


def predict_clips(run_dir: str | os.PathLike, inputs, *, passwords=None, batch_size: int = 16,
                  tmp_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Predict the five traits of every clip found in ``inputs``.

    Args:
        run_dir: a finished run folder (``best_model.keras`` + ``preprocessing.json``).
        inputs: paths of ``.mp4`` files, folders (searched recursively, archives included)
            or zip archives (nested archives are read in place).
        passwords: passwords of encrypted archives (see ``fi_data.archives.Passwords``).
        batch_size: clips per ``model.predict`` call.
        tmp_dir: where archive members and decoder outputs go briefly (default: a temporary
            folder inside the run folder, removed afterwards).

    Returns:
        DataFrame with :data:`PREDICTION_COLUMNS`: one row per clip; ``status`` is ``"ok"``
        and the traits are floats in label units, or ``status`` is the reason the clip could
        not be scored and the traits are NaN.

    Raises:
        FileNotFoundError: the run folder is not finished, or an input path does not exist.
        ValueError: no clip was found in ``inputs``.
    """
    model, record = load_trained(run_dir)
    if tmp_dir is None:
        with tempfile.TemporaryDirectory(prefix="predict-tmp-", dir=RunPaths(Path(run_dir)).root) as tmp:
            return _predict(model, record, inputs, resolve_passwords(passwords), batch_size, Path(tmp))
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    return _predict(model, record, inputs, resolve_passwords(passwords), batch_size, Path(tmp_dir))


def _predict(model, record: dict, inputs, passwords, batch_size: int, tmp_dir: Path) -> pd.DataFrame:
    from fi_data.pipeline import prepare_clip
    from fi_models.serving import takes_cached_frames

    params = PreprocessParams.from_dict(record["cache_params"])
    mfcc_frames, crop_size = record.get("mfcc_frames_mean"), int(record["crop_size"])
    if takes_cached_frames(model):  # the model crops and scales: the cached arrays go in as they are
        def model_input(clip):
            return (clip.audio[None], clip.frames[None]) + (() if clip.faces is None else (clip.faces[None],))
    else:  # a run folder of an older version: its model takes float crops, replay them
        def model_input(clip):
            return prepare_clip(clip.audio, clip.frames, crop_size)
    videos, problems = find_videos(inputs, passwords, tmp_dir=tmp_dir)
    if not videos and not problems:
        raise UserError(f"no .mp4 clip found in {[str(p) for p in inputs]}")

    rows = [{"clip": where, "source": where, "status": reason, "flags": ""} for where, reason in problems]
    pending = []  # (row, model inputs of one clip)

    def flush():
        if not pending:
            return
        inputs = tuple(np.concatenate(arrays) for arrays in zip(*(x for _, x in pending)))
        preds = np.asarray(model.predict(inputs, verbose=0, batch_size=batch_size), dtype=np.float64)
        for (row, _), pred in zip(pending, preds):
            row.update(dict(zip(TRAITS, pred.tolist())))
        pending.clear()

    for name, source in videos:
        row = {"clip": name, "source": source, "status": "ok", "flags": ""}
        rows.append(row)
        try:
            with open_clip(source, passwords=passwords, tmp_dir=tmp_dir) as path:
                clip = extract_clip_features(path, params, mfcc_frames, tmp_dir=tmp_dir, source_label=source)
        except (ArchiveError, OSError) as e:
            row["status"] = f"open_failed: {e}"
            continue
        row["flags"] = ",".join(clip.flags)
        if clip.status != "ok":
            detail = clip.detail.strip().splitlines()[0] if clip.detail.strip() else ""
            row["status"] = clip.status + (f": {detail}" if detail else "")
            continue
        pending.append((row, model_input(clip)))
        if len(pending) >= batch_size:
            flush()
    flush()
    table = pd.DataFrame(rows)
    for trait in TRAITS:
        if trait not in table:
            table[trait] = np.nan
    return table[list(PREDICTION_COLUMNS)]


def flag_legend(table: pd.DataFrame) -> dict:
    """``{flag: meaning}`` (``fi_data.cache.CLIP_FLAGS``) of every flag in the table's ``flags``
    column (comma-separated), sorted by name."""
    shown = sorted({flag for flags in table["flags"].fillna("") for flag in str(flags).split(",") if flag})
    return {flag: CLIP_FLAGS.get(flag, "(not documented)") for flag in shown}


def write_predictions(table: pd.DataFrame, out_prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write the prediction table to ``<out_prefix>.csv`` and ``<out_prefix>.json`` (records).

    Returns:
        The two paths written.
    """
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = Path(f"{out_prefix}.csv"), Path(f"{out_prefix}.json")
    table.to_csv(csv_path, index=False)
    records = json.loads(table.to_json(orient="records"))  # NaN -> null
    write_json_atomic(json_path, {"traits": list(TRAITS), "clips": records})
    return csv_path, json_path
