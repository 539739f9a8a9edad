#!/usr/bin/env python
"""Hyperparameter search for multimodal (MFCC + frames) Big Five regression on First Impressions V2.

The main job, with no arguments, runs on the built-in demo dataset::

    python run_search.py                      # = python run_search.py run

Commands (each has ``--help``):

    run       prepare the data, search, retrain the best configuration, score it, report
    prepare   discover the dataset and build the feature cache only
    search    prepare (cached) and search only; no retraining
    retrain   retrain + score + report from saved hyperparameters (a run folder or a JSON file)
    predict   score new clips with a finished run's model
    baselines the mean and identity-lookup baselines per split, from the labels alone
    compare   one row per finished run: data, trials, test scores with intervals, baselines
    inspect   one PNG per clip: the frames, crops and audio the model sees, the clip's flags and facts

This file only parses arguments and orchestrates the stages of the toolkit (``fi_data``,
``search``); nothing heavy is imported before a command starts, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

from fi_data.params import CLI_PREPROCESSING, PreprocessParams
from fi_data.settings import (add_setting_arguments, default_of, duration, flag_of, help_of, positive_int,
                              setting_values)
from search.config import SearchConfig

ROOT = Path(__file__).resolve().parent
COMMANDS = ("run", "prepare", "search", "retrain", "predict", "baselines", "compare", "inspect")
DEFAULT_RUNS_DIR = ROOT / "tuner_runs"
DEFAULT_CACHE_DIR = ROOT / ".fi_cache"

# The demo job is sized to finish in about 15 minutes on a 2-core CPU (README).
DEMO_SEARCH_DEFAULTS = {"max_epochs": 9, "time_budget": 420.0, "batch_sizes": "16,32"}
DEMO_CHOICES = {"vgg_width": [8, 16], "vgg_depth": [3, 2, 4], "fusion_units": [64, 128],
                "temporal_units": [32, 64]}
"""Hyperparameter choices the demo narrows to, so a trial takes seconds on a 2-core CPU."""
SEARCH_SETTINGS = ("tuner", "factor", "hyperband_iterations", "max_trials", "executions_per_trial", "crop_size",
                   "augment", "audio_masking", "allow_resnet", "early_stopping_patience", "max_consecutive_failures",
                   "worker_timeout_s", "strategy", "overwrite", "verbose", "retrain_epochs", "train_on_train_plus_val",
                   "retrain_from_checkpoint", "jit_compile", "mixed_precision")
"""The ``SearchConfig`` settings whose flags are made from their fields (``fi_data.settings``); the
others (max_epochs, time budget, batch sizes, seed, --fix/--choices, trials per process) have
demo-or-real defaults or a syntax of their own, resolved in :func:`search_config`."""
REAL_SEARCH_DEFAULTS = {"max_epochs": default_of(SearchConfig, "max_epochs"), "time_budget": None,
                        "batch_sizes": ",".join(map(str, default_of(SearchConfig, "batch_sizes")))}
"""Real data: the :class:`search.config.SearchConfig` defaults (no time budget)."""


PASSWORDS_HELP = ("passwords of encrypted archives: 'PW' for all, or 'ARCHIVE=PW,ARCHIVE=PW' (names may be globs "
                  "such as 'test80_*.zip'). Also read from the FI_PASSWORDS environment variable (same syntax) "
                  "and --passwords-file")
PASSWORDS_FILE_HELP = "file with one 'ARCHIVE=PW' per line ('*=PW' for all); '#' starts a comment"


def _positive_ints(text: str) -> str:
    """'32,16,64': positive integers, comma-separated (kept as text; parsed in search_config)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers like 32,16,64, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 32,16,64, got {text!r}")
    return text


def _fixed_value(text: str):
    """'name=value', the value read as a Python number or bool literal (``ast.literal_eval``:
    3, 0.001, 1e-3, True; 'true'/'false' in any case), else kept as text ('vgg')."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, raw = text.split("=", 1)
    if raw.strip().lower() in ("true", "false"):
        return name.strip(), raw.strip().lower() == "true"
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return name.strip(), raw
    return name.strip(), value if isinstance(value, (int, float)) else raw


def _choices_value(text: str):
    """'name=v1,v2,...' with each value parsed like --fix values."""
    name, raw = _fixed_value(text)
    values = [_fixed_value(f"{name}={v}")[1] for v in str(raw).split(",") if v != ""]
    if not values:
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    return name, values


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding the First Impressions V2 release as downloaded (outer zips "
                        "train-1.zip ... test-2e.zip, inner training80_XX.zip ..., annotation zips or "
                        ".pkl files) or already extracted, in any mix. Default: the built-in demo "
                        "dataset, generated once into .fi_demo/")
    g.add_argument("--passwords", default=None, metavar="SPEC", help=PASSWORDS_HELP)
    g.add_argument("--passwords-file", type=Path, default=None, metavar="FILE", help=PASSWORDS_FILE_HELP)
    g.add_argument("--split", default="official", choices=("official", "speaker-disjoint"),
                   help="official train/validation/test split (default), or a deterministic ~60/20/20 "
                        "re-split grouped by YouTube id (no person in two splits; seeded by --seed)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the speaker-disjoint split, the oracle, Keras, shuffling and augmentation "
                        "(default: 0; for retrain, the run's seed)")
    g.add_argument("--demo-clips", default=None, metavar="TRAIN,VAL,TEST",
                   help="clips per split of the generated demo dataset (default: 240,80,80, or the "
                        "variant's sizes with --demo-variant)")
    g.add_argument("--demo-variant", type=int, default=None, metavar="SEED",
                   help="generate a different demo dataset, drawn from SEED: which trait rides on which "
                        "cue, each cue's direction and strength, the noise, the clip sizes and the number "
                        "of clips (fi_data.demo). Default: the standard demo")

    g = p.add_argument_group("preprocessing (feature cache)")
    g.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help=f"folder of feature caches, one sub-folder per parameter hash (default: {DEFAULT_CACHE_DIR.name}/)")
    g.add_argument("--workers", type=positive_int, default=None,
                   help="processes decoding clips in parallel (default: number of CPU cores)")
    add_setting_arguments(g, PreprocessParams, CLI_PREPROCESSING)


def _add_search_args(p: argparse.ArgumentParser, retrain: bool = True) -> None:
    g = p.add_argument_group("search")
    add_setting_arguments(g, SearchConfig, ["tuner"])
    g.add_argument("--max-epochs", type=positive_int, default=None,
                   help="most epochs one model trains (Hyperband max_epochs; epochs per trial for random/"
                        "bayesian). Default: with a time budget, planned from measured epoch costs so that "
                        "a full Hyperband bracket fits (the plan is printed); without one, "
                        f"{DEMO_SEARCH_DEFAULTS['max_epochs']} on the demo, "
                        f"{REAL_SEARCH_DEFAULTS['max_epochs']} on real data. Given, it wins (with a warning "
                        "when it cannot fit the budget)")
    add_setting_arguments(g, SearchConfig, ["factor", "hyperband_iterations", "max_trials", "executions_per_trial"])
    g.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                   help="the search's deadline (e.g. 900, 15m, 2h): no trial starts after it, the running "
                        "trial stops at the end of its epoch; then the best so far is retrained (its own "
                        "limit: --retrain-epochs) and reported. Default: 7m on the demo, none on real data")
    g.add_argument("--no-time-budget", action="store_true", help="no time budget, even on the demo")
    g.add_argument("--batch-sizes", type=_positive_ints, default=None, metavar="B,B,...",
                   help="batch sizes the search chooses from, the first being the default "
                        f"(default: {DEMO_SEARCH_DEFAULTS['batch_sizes']} on the demo, "
                        f"{REAL_SEARCH_DEFAULTS['batch_sizes']} on real data)")
    add_setting_arguments(g, SearchConfig, ["crop_size", "augment", "audio_masking", "allow_resnet"])
    g.add_argument("--fix", type=_fixed_value, action="append", default=[], metavar="NAME=VALUE",
                   help="hold one hyperparameter fixed, e.g. --fix backbone=vgg --fix vgg_depth=2 (repeatable)")
    g.add_argument("--choices", type=_choices_value, action="append", default=[], metavar="NAME=V1,V2,...",
                   help="search only these values of one hyperparameter, e.g. --choices vgg_width=8,16 "
                        "(repeatable; the first value is the default). The demo narrows the space to "
                        "CPU-sized models: " + " ".join(f"{k}={','.join(map(str, v))}"
                                                       for k, v in DEMO_CHOICES.items()))
    add_setting_arguments(g, SearchConfig, ["early_stopping_patience"])
    per_process = default_of(SearchConfig, "trials_per_process")
    g.add_argument("--trials-per-process", type=int, default=per_process, metavar="N",
                   help="run trials in fresh child processes of at most N trials each, resuming the same "
                        "project, so memory stays bounded over long searches (TensorFlow grows ~30 MiB per "
                        f"trial in one process); 0 runs every trial in this process (default: {per_process})")
    add_setting_arguments(g, SearchConfig, ["max_consecutive_failures", "jit_compile", "mixed_precision"])
    g = p.add_argument_group(
        "distributed tuning",
        "One search on several processes or machines (Keras Tuner's chief/worker mode over gRPC): run the "
        "same command on every machine with a shared run folder, once with --role chief (serves the oracle, "
        "then retrains the best and reports) and once per worker with --role worker (runs trials only). "
        "Without --role, Keras Tuner's KERASTUNER_TUNER_ID/_ORACLE_IP/_ORACLE_PORT variables decide.")
    g.add_argument("--role", default=None, choices=("single", "chief", "worker"),
                   help="single (default: one process searches), chief, or worker")
    g.add_argument("--oracle-address", default=None, metavar="HOST:PORT",
                   help="where the chief listens and the workers connect, e.g. 10.0.0.5:8000 (chief and worker)")
    g.add_argument("--worker-id", default=None,
                   help="this worker's id, unique among the workers (default: worker-<host>-<pid>); a worker "
                        "restarted with its old id resumes its unfinished trial")
    add_setting_arguments(g, SearchConfig, ["worker_timeout_s", "strategy"])
    if retrain:
        _add_retrain_args(p, job=True)
    g = p.add_argument_group("run folder")
    g.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR,
                   help=f"where run folders go (default: {DEFAULT_RUNS_DIR.name}/)")
    g.add_argument("--run-name", default=None,
                   help="run folder name (default: 'demo', or '<data folder name>-<split>'); "
                        "rerunning the same command resumes this run")
    add_setting_arguments(g, SearchConfig, ["overwrite"])
    g.add_argument("--continue", dest="continue_search", action="store_true",
                   help="search on in a FINISHED run (retrained and reported) with a new time budget, then "
                        "retrain again; without it, rerunning a finished run only prints its summary")
    add_setting_arguments(g, SearchConfig, ["verbose"])


def _add_retrain_args(p: argparse.ArgumentParser, *, job: bool = False) -> None:
    """The retraining's flags; ``job``: the search command's (its retraining may continue from
    the best trial's checkpoint), not the ``retrain`` command's."""
    g = p.add_argument_group("retraining the best configuration")
    add_setting_arguments(g, SearchConfig, ["retrain_epochs", "train_on_train_plus_val",
                                            *(["retrain_from_checkpoint"] if job else [])])
    g.add_argument("--retrain-seeds", type=positive_int, default=1, metavar="K",
                   help="retrain the best configuration with K seeds (--seed, --seed+1, ...); the report gives "
                        "their mean and SD and the one best on validation is saved (default 1)")
    g.add_argument("--ensemble-top", type=positive_int, default=1, metavar="K",
                   help="deliver the average of the K best distinct configurations of the search, each "
                        "retrained once, as one model; the report compares it with the best alone (default 1: "
                        "no ensemble; needs a run folder's top_hyperparameters.json)")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the flag and what was wrong), not the
    whole usage block; ``--help`` still gives the usage. Sub-commands use the same class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (no TensorFlow import)."""
    parser = _Parser(
        prog="run_search.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="With no command, 'run' is used: 'python run_search.py [run options]'.\n"
               "Run 'python run_search.py COMMAND --help' for the flags of a command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the whole job: prepare, search, retrain the best, score on test, report",
                       description="Prepare the feature cache, run the hyperparameter search on validation "
                                   "1-MAE, retrain the best configuration, score it on the test split and write "
                                   "the report, plots and TensorBoard logs.")
    _add_data_args(p)
    _add_search_args(p)

    p = sub.add_parser("prepare", help="discover the dataset and build the feature cache only",
                       description="Find every clip and label, print the set sizes, preprocess into the "
                                   "feature cache (resumable) and plot the label distributions and 3 samples.")
    _add_data_args(p)

    p = sub.add_parser("search", help="prepare (cached) and run the search only, without retraining")
    _add_data_args(p)
    _add_search_args(p, retrain=False)

    p = sub.add_parser("retrain", help="retrain, score and report from saved hyperparameters, without searching",
                       description="Rebuild a configuration from a run folder (its best_hyperparameters.json and "
                                   "settings) or a JSON file of hyperparameters, retrain it, score every split "
                                   "and write the report into a run folder. From a run folder, the run's feature "
                                   "cache is reused as it is (no discovery or preprocessing) unless --data-dir is "
                                   "given; from a JSON file, the dataset flags below say what to prepare (default: "
                                   "the demo).")
    p.add_argument("--from", dest="source", type=Path, required=True, metavar="RUN_OR_JSON",
                   help="a run folder or a JSON file of hyperparameter values")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="output run folder (default: '<run>-retrain' beside the run folder given to --from; "
                        "for a JSON file, tuner_runs/retrain-<file name>). It becomes a run folder that "
                        "retrain --from and predict --run accept")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished retraining in the output folder (default: refuse)")
    p.add_argument("--max-epochs", type=positive_int, default=None,
                   help="the search's max_epochs, whose multiple caps the retraining when --retrain-epochs is not "
                        "given (default: the run's)")
    p.add_argument(flag_of(SearchConfig, "early_stopping_patience"), dest="early_stopping_patience", type=int,
                   default=None, metavar="N",
                   help=help_of(SearchConfig, "early_stopping_patience", False) + " (default: the run's; for a "
                        f"JSON file, {default_of(SearchConfig, 'early_stopping_patience')})")
    add_setting_arguments(p, SearchConfig, ["verbose"])
    _add_retrain_args(p)
    _add_data_args(p)

    p = sub.add_parser("predict", help="score new clips with a finished run's model",
                       description="Score .mp4 clips (files, folders or zip archives) with a run's "
                                   "best_model.keras, preprocessed exactly as it was trained. Prints a table "
                                   "and writes predictions CSV and JSON files.")
    p.add_argument("inputs", nargs="+", type=Path, help=".mp4 files, folders of them, or zip archives")
    p.add_argument("--run", type=Path, required=True, help="a finished run folder (holding best_model.keras)")
    p.add_argument("--out", type=Path, default=None,
                   help="output prefix for <out>.csv and <out>.json (default: <run>/predictions/<date-time>, "
                        "so earlier predictions are kept)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out (default: refuse)")
    p.add_argument("--passwords", default=None, metavar="SPEC", help=PASSWORDS_HELP)
    p.add_argument("--passwords-file", type=Path, default=None, metavar="FILE", help=PASSWORDS_FILE_HELP)
    p.add_argument("--batch-size", type=positive_int, default=16, help="clips per prediction batch (default: 16)")

    p = sub.add_parser("baselines", help="the mean and identity-lookup baselines per split, from labels alone",
                       description="Read the annotation pickles (or their archives; no videos needed) and print, "
                                   "per split, the 1-MAE of the mean predictor (training means) and of the "
                                   "identity lookup (each clip predicted as the mean training label of its "
                                   "YouTube video; no audio, no video), and the share of clips whose video "
                                   "also has training clips.")
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding the annotation files or the release")
    p.add_argument("--split", default="official", choices=("official", "speaker-disjoint"),
                   help="official split (default) or the speaker-disjoint re-split (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the speaker-disjoint split (default 0)")
    p.add_argument("--passwords", default=None, metavar="SPEC", help=PASSWORDS_HELP)
    p.add_argument("--passwords-file", type=Path, default=None, metavar="FILE", help=PASSWORDS_FILE_HELP)

    p = sub.add_parser("compare", help="compare finished runs: one row each, printed and written as markdown + CSV",
                       description="One row per finished run folder: dataset (cache key), clips per split, the "
                                   "share of test clips whose YouTube id is in training (the split protocol), "
                                   "trials, search wall time, test 1-MAE / R² / CCC with 95%% intervals, the "
                                   "baselines and the best hyperparameters.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="finished run folders")
    p.add_argument("--out", type=Path, default=DEFAULT_RUNS_DIR / "comparison",
                   help="output prefix: <out>.md and <out>.csv (default: tuner_runs/comparison)")
    p = sub.add_parser("inspect", help="one PNG per clip showing exactly what the model will see",
                       usage="run_search.py inspect CLIP [CLIP ...] --out DIR [--run RUN] [options]",
                       description="For each clip (an .mp4 file, a folder or zip archive of them, or an archive "
                                   "locator such as a.zip::inner.zip::clip.mp4) write <DIR>/<clip name>.png: the "
                                   "sampled frames as cached, the centre crop the model gets at validation/test, "
                                   "the black-bar crop box and the centre crop drawn on a source frame, the MFCC "
                                   "input (librosa specshow, time in seconds), and the clip's flags and probe "
                                   "facts as text. Prints one line per clip; a clip that cannot be used gets its "
                                   "reason and a text-only PNG. Exit status 0 when at least one clip was drawn in "
                                   "full, else 1.")
    p.add_argument("clips", nargs="*", type=Path, metavar="CLIP",
                   help=".mp4 files, folders of them, zip archives, or archive locators 'a.zip::member.mp4' "
                        "(at least one)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder for <clip name>.png (created; names are sanitized, a repeated name gets "
                        "-2, -3, ...; an existing PNG of the same name is replaced). Required")
    p.add_argument("--run", type=Path, default=None, metavar="RUN",
                   help="a run folder whose preprocessing.json gives the preprocessing (cache_params, crop_size, "
                        "mfcc_frames_mean) (default: none, i.e. the default PreprocessParams(), crop 128 and "
                        "M = None: audio shown unpadded)")
    p.add_argument("--passwords", default=None, metavar="SPEC", help=PASSWORDS_HELP + " (default: none)")
    p.add_argument("--passwords-file", type=Path, default=None, metavar="FILE",
                   help=PASSWORDS_FILE_HELP + " (default: none)")
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="show the traceback of every error (default: errors of input, settings, disk "
                                  "or a stopped process print one line; bugs always show their traceback)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``); no command means ``run``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        print("\nFlags of the default command 'run':\n")
        parser.parse_args(["run", "--help"])  # prints and exits
    return parser.parse_args(argv)



# ---------------------------------------------------------------------------------------
# Orchestration (imports of the toolkit happen inside, after argument parsing)

def expected_errors() -> tuple:
    """Exception types whose message says all a user needs (bad input or settings, a busy or
    full disk, a stopped child process): printed as one line, exit status 2. Anything else is a
    bug of the toolkit and keeps its traceback; ``--debug`` shows the traceback of these too."""
    import pickle

    from fi_data.annotations import AnnotationFormatError
    from fi_data.archives import ArchiveError
    from fi_data.cache import DiskFullError
    from fi_data.errors import StoppedError, UserError
    from fi_data.ffmpeg_tools import FFmpegNotFoundError
    from fi_data.locks import FolderInUseError
    from search.tuner import SearchFailedError
    return (UserError, StoppedError, ArchiveError, AnnotationFormatError, pickle.UnpicklingError, DiskFullError,
            FFmpegNotFoundError, FolderInUseError, SearchFailedError, FileNotFoundError, PermissionError,
            NotADirectoryError, IsADirectoryError)


def _user_error(message: str) -> Exception:
    """``fi_data.errors.UserError(message)``, imported when needed (``--help`` imports nothing)."""
    from fi_data.errors import UserError
    return UserError(message)


def _passwords(args):
    from fi_data.archives import Passwords
    return Passwords.from_sources(args.passwords, args.passwords_file)


def _demo_sizes(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise _user_error(f"--demo-clips: expected three positive integers TRAIN,VAL,TEST, got {text!r}")
    return sizes


def prepare(args, plots_dir: Path | None = None):
    """Discover the dataset (or make the demo), build or reuse the feature cache, plot.

    Returns:
        ``(cache, discovery)``: the opened ``FeatureCache`` and the ``DiscoveryResult``.
    """
    import functools

    from fi_data.archives import open_clip, remove_stale_temporaries
    from fi_data.cache import build_cache
    from fi_data.cache_format import open_cache
    from fi_data.dataset_report import plot_trait_distributions
    from fi_data.discovery import discover
    from fi_data.sample_plots import plot_samples, used_clips

    if args.data_dir is None:
        from fi_data.demo import demo_dataset
        sizes = {}
        if args.demo_clips is not None or args.demo_variant is None:
            sizes = dict(zip(("n_train", "n_val", "n_test"), _demo_sizes(args.demo_clips or "240,80,80")))
        variant = {} if args.demo_variant is None else {"variant": args.demo_variant}
        data_dir = demo_dataset(workers=args.workers, **sizes, **variant)
        print(f"[data] demo dataset: {data_dir}")
    else:
        data_dir = args.data_dir
    passwords = _passwords(args)
    tmp_dir = args.cache_dir / "tmp"
    remove_stale_temporaries(tmp_dir)  # left by a killed job
    discovery = discover(data_dir, passwords, split_mode=args.split, seed=args.seed or 0, tmp_dir=tmp_dir)
    print(discovery.summary())
    params = preprocess_params(args)
    opener = functools.partial(open_clip, passwords=passwords, tmp_dir=tmp_dir)
    cache = open_cache(build_cache(discovery.clips, args.cache_dir, params, open_clip=opener, workers=args.workers))
    remove_stale_temporaries(tmp_dir)  # the spools of the finished preprocessing workers
    plots_dir = Path(plots_dir) if plots_dir is not None else cache.path / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_trait_distributions(used_clips(discovery.clips, cache), plots_dir / "trait_distributions.png")
    plot_samples(cache, plots_dir / "samples.png")
    print(f"[data] plots: {plots_dir / 'trait_distributions.png'}, {plots_dir / 'samples.png'}")
    return cache, discovery


def preprocess_params(args):
    """The ``fi_data.cache.PreprocessParams`` of parsed data arguments.

    Raises:
        fi_data.errors.UserError: for settings ``PreprocessParams`` refuses.
    """
    from fi_data.errors import UserError

    try:
        return PreprocessParams(**setting_values(args, CLI_PREPROCESSING))
    except ValueError as e:
        raise UserError(f"preprocessing settings: {e}") from e


def search_config(args):
    """The ``SearchConfig`` for parsed ``run``/``search`` arguments (demo or real defaults)."""
    defaults = DEMO_SEARCH_DEFAULTS if args.data_dir is None else REAL_SEARCH_DEFAULTS
    budget = None if args.no_time_budget else (args.time_budget or defaults["time_budget"])
    batch_sizes = [int(b) for b in (args.batch_sizes or defaults["batch_sizes"]).split(",")]
    choices = dict(DEMO_CHOICES) if args.data_dir is None else {}
    choices = {k: v for k, v in choices.items() if k not in dict(args.fix)}
    choices.update(dict(args.choices))
    params = preprocess_params(args)  # the cached frame (and face crop) sizes bound the crop
    face_flag = "--face-size"
    for what, shape, flag in (("frames", params.frame_shape, face_flag if params.frames == "face" else None),
                              ("face crops", params.face_shape, face_flag)):
        if shape is not None and args.crop_size > min(shape[1:3]):
            size = f"{shape[1]}x{shape[2]} pixels" + (f", {flag} {params.face_size}" if flag else "")
            raise _user_error(f"--crop-size {args.crop_size}: larger than the cached {what} ({size}); use at most "
                              f"{min(shape[1:3])}" + (f" or a larger {flag}" if flag else ""))
    given = [name for name in SEARCH_SETTINGS if hasattr(args, name)]  # search has no retraining flags
    return SearchConfig(
        **setting_values(args, given), max_epochs=args.max_epochs or defaults["max_epochs"],
        plan_epochs=args.max_epochs is None, seed=args.seed or 0, time_budget_s=budget,
        batch_sizes=tuple(batch_sizes), fixed_hyperparameters=dict(args.fix), hyperparameter_choices=choices,
        trials_per_process=args.trials_per_process or None)


def run_dir_for(args) -> Path:
    """``--runs-dir/--run-name``; the default name is stable so that a rerun resumes."""
    demo = "demo" if getattr(args, "demo_variant", None) is None else f"demo-variant-{args.demo_variant}"
    name = args.run_name or (demo if args.data_dir is None else f"{Path(args.data_dir).resolve().name}-{args.split}")
    return Path(args.runs_dir) / name


def distributed_role(args):
    """The ``search.distributed.Role`` of ``--role/--oracle-address/--worker-id``, written into
    the ``KERASTUNER_*`` environment that Keras Tuner reads; without ``--role``, the role that
    environment already names (single when unset)."""
    from search.distributed import Role, default_worker_id

    if args.role is None:
        if args.oracle_address or args.worker_id:
            raise _user_error("--oracle-address and --worker-id need --role chief or --role worker")
        return Role.current()
    worker_id = args.worker_id or (default_worker_id() if args.role == "worker" else None)
    role = Role(args.role, args.oracle_address, worker_id)
    role.apply()
    return role


def cmd_prepare(args) -> int:
    prepare(args)
    return 0


def cmd_search(args, retrain: bool = False) -> int:
    # Imported here, not at the top, so that --help stays instant (no TensorFlow).
    from fi_data.locks import FolderLock
    from search.distributed import run_worker
    from search.job import retrain_and_report, run_search
    from search.runs import save_data_origin
    from search.summary import format_summary

    config = search_config(args)  # validate settings before any long work
    run_dir = run_dir_for(args)
    role = distributed_role(args)
    if role.kind == "worker":  # runs trials only; the chief retrains and reports
        run_worker(run_dir, config, lambda: prepare(args)[0])
        print(f"[search] worker {role.worker_id}: the chief has no trials left; it retrains and reports")
        return 0
    with FolderLock(run_dir, "run folder"):  # one search of a run folder at a time (workers share it)
        if retrain and _reprint_finished(run_dir, config, args):
            return 0
        cache, discovery = prepare(args, plots_dir=run_dir / "plots")
        save_data_origin(run_dir, discovery.root, demo=args.data_dir is None)
        result = run_search(cache, run_dir, config)
        print(f"[search] stopped by {result.stopped_by} after {result.elapsed_s:.0f} s; "
              f"best validation 1-MAE {result.best.score:.4f} (trial {result.best.trial_id})")
        if not retrain:
            print(f"[search] best hyperparameters: {result.paths.best_hyperparameters}")
            return 0
        metrics = retrain_and_report(cache, run_dir, result.best, result.config, **_variation_args(args, run_dir))
    print(format_summary(metrics, run_dir))
    return 0


def _reprint_finished(run_dir: Path, config, args) -> bool:
    """Print the summary of a finished run (retrained, ``metrics.json`` written) with the same
    search settings and return True, unless ``--overwrite`` or ``--continue`` asks for work."""
    import json

    # Deferred like every import of a command (--help stays instant).
    from search.runs import RunPaths, load_run
    from search.summary import format_summary

    paths = RunPaths(run_dir)
    if config.overwrite or args.continue_search or not (paths.metrics.is_file() and paths.config.is_file()):
        return False
    saved = load_run(run_dir)
    differences = saved.config.search_differences(config)
    if config.plan_epochs:  # the plan chose these; leaving --max-epochs out accepts them
        for planned in ("max_epochs", "max_trials", "hyperband_iterations"):
            differences.pop(planned, None)
    if differences or saved.metrics is None:
        return False  # other settings: the normal path explains the mismatch
    finished = json.loads(paths.search_summary.read_text()).get("stopped_by") if paths.search_summary.is_file() else None
    print(f"[run] {run_dir} is finished (search stopped by {finished or 'an earlier run'}, retrained and "
          "reported); its summary follows. Pass --continue to search on with a new time budget, or --overwrite "
          "to start over.")
    print(format_summary(saved.metrics, run_dir))
    return True


def _variation_args(args, searched_run) -> dict:
    """``retrain_seeds`` and ``ensemble`` (the 2nd..Kth best configurations) for
    ``retrain_and_evaluate`` from ``--retrain-seeds`` and ``--ensemble-top``."""
    from search.runs import load_top_hyperparameters

    extra = []
    if args.ensemble_top > 1:
        extra = load_top_hyperparameters(searched_run, args.ensemble_top)[1:]
        if len(extra) < args.ensemble_top - 1:
            print(f"[retrain] --ensemble-top {args.ensemble_top}: the search completed only {len(extra) + 1} "
                  "distinct configurations; the ensemble has that many")
    return {"retrain_seeds": args.retrain_seeds, "ensemble": extra}


def cmd_run(args) -> int:
    return cmd_search(args, retrain=True)


def cmd_retrain(args) -> int:
    import dataclasses

    # Imported here, not at the top, so that --help stays instant (no TensorFlow).
    from fi_data.cache_format import open_cache
    from fi_data.locks import FolderLock
    from search.job import retrain_and_report
    from search.runs import load_best_hyperparameters, load_data_origin, load_run, save_data_origin
    from search.summary import format_summary

    source = Path(args.source)
    if source.is_dir():
        saved = load_run(source)
        if saved.best is None:
            raise _user_error(f"{source}: this run has no best_hyperparameters.json yet (no trial finished)")
        config, best = saved.config, saved.best
        run_dir = args.run_dir or source.parent / f"{source.name}-retrain"
        cached = Path(saved.cache.get("path", ""))
    else:
        config, best = SearchConfig(), load_best_hyperparameters(source)
        run_dir = args.run_dir or DEFAULT_RUNS_DIR / f"retrain-{source.stem}"
        cached = None
    changes = {"train_on_train_plus_val": args.train_on_train_plus_val or config.train_on_train_plus_val,
               "verbose": args.verbose}
    for name, value in (("retrain_epochs", args.retrain_epochs), ("max_epochs", args.max_epochs), ("seed", args.seed),
                        ("early_stopping_patience", args.early_stopping_patience)):
        if value is not None:
            changes[name] = value
    config = dataclasses.replace(config, **changes)
    if args.ensemble_top > 1 and not source.is_dir():
        raise _user_error(f"--ensemble-top {args.ensemble_top} needs a run folder for --from (its ranked "
                         f"configurations); {source} is a file")
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file() and not args.overwrite:
        raise _user_error(f"{run_dir} already holds a finished retraining (metrics.json); pass --overwrite to "
                         "replace it, or --run-dir for another folder")
    origin = f"trial {best.trial_id} of {source}" if best.trial_id is not None else str(source)
    print(f"[retrain] rebuilding the configuration of {origin}"
          + (f" (validation 1-MAE {best.score:.4f})" if best.score is not None else "") + f" into {run_dir}: "
          + ", ".join(f"{k}={v}" for k, v in sorted(best.values.items())), flush=True)
    with FolderLock(run_dir, "run folder"):
        if cached is not None and args.data_dir is None and (cached / "manifest.json").is_file():
            cache = open_cache(cached)  # the cache the run searched on
            print(f"[data] feature cache of the run: {cache.path}")
            origin = load_data_origin(source)
            if origin is not None:
                save_data_origin(run_dir, origin["data_dir"], demo=origin["demo"])
        else:
            cache, discovery = prepare(args, plots_dir=Path(run_dir) / "plots")
            save_data_origin(run_dir, discovery.root, demo=args.data_dir is None)
        metrics = retrain_and_report(cache, run_dir, best, config, source=source,
                                     **_variation_args(args, source if source.is_dir() else run_dir))
    print(format_summary(metrics, run_dir))
    return 0


def cmd_predict(args) -> int:
    import time

    from search.predict import flag_legend, predict_clips, write_predictions
    from search.runs import load_data_origin

    out = args.out or Path(args.run) / "predictions" / time.strftime("%Y%m%d-%H%M%S")
    taken = [p for p in (Path(f"{out}.csv"), Path(f"{out}.json")) if p.exists()]
    if taken and not args.overwrite:
        raise _user_error(f"--out {out}: {taken[0]} exists; pass --overwrite to replace it, or another --out")
    table = predict_clips(args.run, args.inputs, passwords=_passwords(args), batch_size=args.batch_size)
    csv_path, json_path = write_predictions(table, out)
    with_scores = table[table["status"] == "ok"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    legend = flag_legend(table)
    if legend:
        print("\nflags: " + "; ".join(f"{flag}: {meaning}" for flag, meaning in legend.items()))
    print(f"\n{len(with_scores)} of {len(table)} clips scored; written {csv_path} and {json_path}")
    origin = load_data_origin(args.run)
    if origin is not None and origin["demo"]:
        print(f"WARNING: {args.run} was trained on the generated demo dataset ({origin['data_dir']}): its scores "
              "of real clips mean nothing. Train on real data with run_search.py run --data-dir DIR.")
    return 0 if len(with_scores) else 1


def cmd_baselines(args) -> int:
    from fi_data.discovery import discover
    from fi_data.splits import apply_split
    from search.evaluation import annotation_baselines

    found = discover(args.data_dir, _passwords(args), tmp_dir=DEFAULT_CACHE_DIR / "tmp", require_videos=False)
    if found.labels.empty:
        raise _user_error(f"{args.data_dir}: no annotation file found (annotation_training.pkl, ... or their zips)")
    labels = apply_split(found.labels, args.split, seed=args.seed) if args.split != "official" else found.labels
    table = annotation_baselines(labels)
    table.columns = ["clips", "mean predictor 1-MAE", "identity lookup 1-MAE", "share of ids in train"]
    print(f"Baselines from the labels under {args.data_dir} ({args.split} split):")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print("The identity lookup predicts each clip as the mean training label of its YouTube video: a model "
          "that does not beat it may be recognising people, not personality (try --split speaker-disjoint).")
    return 0


def cmd_compare(args) -> int:
    from search.compare import compare_runs

    table = compare_runs(args.runs, args.out)
    print(table.drop(columns=["best hyperparameters"]).to_string(index=False))
    print(f"\nWritten {args.out.with_suffix('.md')} and {args.out.with_suffix('.csv')} (with the best hyperparameters)")
    return 0


def cmd_inspect(args) -> int:
    from fi_data.inspect_clip import default_preprocessing, inspect_clips, run_preprocessing

    if not args.clips:
        raise _user_error("inspect: give at least one CLIP (an .mp4 file, folder, zip archive or "
                          "'a.zip::member.mp4' locator)")
    prep = run_preprocessing(args.run) if args.run is not None else default_preprocessing()
    print(f"[inspect] preprocessing: {prep.origin}")
    results = inspect_clips(args.clips, args.out, prep, passwords=_passwords(args))
    drawn = [r for r in results if r["png"] is not None and not r["text_only"]]
    print(f"[inspect] {len(drawn)} of {len(results)} clips drawn in full into {args.out}")
    return 0 if drawn else 1


HANDLERS = {"run": cmd_run, "prepare": cmd_prepare, "search": cmd_search, "retrain": cmd_retrain,
            "predict": cmd_predict, "baselines": cmd_baselines, "compare": cmd_compare, "inspect": cmd_inspect}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for bad input or settings)."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    if getattr(args, "verbose", 1) != 2:  # --verbose 2 shows TensorFlow's start-up lines
        from search.quiet_tf import import_tensorflow_quietly
        import_tensorflow_quietly()
    errors = expected_errors()
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        print("\nInterrupted. Finished work is kept: rerun the same command to continue.", file=sys.stderr)
        return 130
    except errors as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
