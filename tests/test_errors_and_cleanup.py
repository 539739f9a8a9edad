"""One-line errors vs tracebacks, early refusal of the crop size, TensorFlow's start-up lines,
stale temporary files, a stopped search child, and which Hyperband checkpoints are kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import run_search
from fi_data.archives import remove_stale_temporaries
from fi_data.errors import StoppedError, UserError
from search import chunked
from search.checkpoints import promotable_trials
from search.quiet_tf import STARTUP_NOISE

ROOT = Path(__file__).resolve().parents[1]


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, tmp_path, capsys):
    def user_fault(args):
        raise UserError("--thing 3: bad")

    def bug(args):
        raise ValueError("an internal contract broke")

    monkeypatch.setitem(run_search.HANDLERS, "prepare", user_fault)
    assert run_search.main(["prepare", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --thing 3: bad"
    with pytest.raises(UserError):  # --debug shows the traceback of user errors too
        run_search.main(["prepare", "--cache-dir", str(tmp_path), "--debug"])
    monkeypatch.setitem(run_search.HANDLERS, "prepare", bug)
    with pytest.raises(ValueError, match="internal contract"):  # not turned into "error: ..."
        run_search.main(["prepare", "--cache-dir", str(tmp_path)])


def test_a_crop_larger_than_the_cached_frames_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fi_data.demo.demo_dataset", lambda *a, **k: pytest.fail("generated the demo"))
    runs = tmp_path / "runs"
    assert run_search.main(["run", "--crop-size", "141", "--runs-dir", str(runs),
                            "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "--crop-size 141: larger than the cached frames (140x248 pixels)" in capsys.readouterr().err
    assert not runs.exists() and not (tmp_path / "cache").exists()


def test_tensorflow_imports_without_its_start_up_lines():
    done = subprocess.run([sys.executable, "-c", "from search.quiet_tf import import_tensorflow_quietly\n"
                           "import_tensorflow_quietly()\nimport tensorflow\nprint('imported')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "imported"
    assert "oneDNN" not in done.stderr and "cuda drivers" not in done.stderr and "absl" not in done.stderr
    # What is dropped: INFO lines and absl's preface; warnings and errors pass.
    assert STARTUP_NOISE.match("I0000 00:00:1796291098.151107 3551 port.cc:153] oneDNN custom operations are on")
    assert STARTUP_NOISE.match("WARNING: All log messages before absl::InitializeLog() is called are written")
    assert not STARTUP_NOISE.match("E0000 00:00:17962.1 3551 cuda_dnn.cc:8] could not load libcudnn")
    assert not STARTUP_NOISE.match("Traceback (most recent call last):")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, theirs = os.getpid(), dead.pid
    for name in (f"spool-{theirs}-a.zip", f"clip-{theirs}-b.mp4", f"spool-{mine}-c.zip", "notes.txt",
                 f"spool-{os.getppid()}-d.zip"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"decode-{theirs}-e").mkdir()
    (tmp_path / f"decode-{theirs}-e" / "frames.raw").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"spool-{mine}-c.zip", "notes.txt",
                                                                 f"spool-{os.getppid()}-d.zip"])
    assert remove_stale_temporaries(tmp_path / "absent") == 0


def test_a_killed_search_child_is_a_one_line_stop_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr(chunked.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=-9))
    paths = SimpleNamespace(root=tmp_path)
    config = SimpleNamespace(trials_per_process=2, strategy="default", verbose=0)
    with pytest.raises(StoppedError, match=r"exited with status -9 \(killed: out of memory\?\).*Rerun"):
        chunked.search_in_processes(SimpleNamespace(path=tmp_path), paths, config)
    assert StoppedError in run_search.expected_errors()


def _round(*pairs):
    return [{"past_id": past, "id": trial_id} for past, trial_id in pairs]


def test_only_checkpoints_a_later_hyperband_round_can_load_are_kept():
    sizes = {(2, 0): 9, (2, 1): 3, (2, 2): 1}.get
    status = {f"{i:02d}": "COMPLETED" for i in range(14)}
    # Round 0 full (00-08); round 1 has chosen 00 and 01 so far (trials 09, 10; 10 still running).
    status["10"] = "RUNNING"
    bracket = {"bracket_num": 2, "rounds": [_round(*[(None, f"{i:02d}") for i in range(9)]),
                                            _round(("00", "09"), ("01", "10")), []]}
    needed = promotable_trials([bracket], lambda b, r: sizes((b, r)), status)
    # 00's successor ended: not needed; 01's successor runs: needed; 02-08 may still be chosen;
    # 09 and 10 (round 1) may be promoted to round 2.
    assert needed == {"01", "02", "03", "04", "05", "06", "07", "08", "09", "10"}
    # Round 1 full and ended, round 2 chose 09 and ended: nothing is needed any more.
    status["10"] = status["11"] = status["12"] = "COMPLETED"
    bracket["rounds"][1].append({"past_id": "02", "id": "11"})
    bracket["rounds"][2] = _round(("09", "12"))
    assert promotable_trials([bracket], lambda b, r: sizes((b, r)), status) == set()
    assert promotable_trials([], lambda b, r: 1, status) == set()  # completed brackets are dropped
