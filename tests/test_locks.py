"""One owner per folder (fi_data.locks), children that die with their parent (search.entry)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import run_search
from conftest import ROOT
from fi_data.locks import FolderInUseError, FolderLock

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from fi_data.locks import FolderLock
    with FolderLock(sys.argv[1], "run folder"):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
""")


def _holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(ROOT), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_the_holder_and_freed_on_exit(tmp_path):
    with FolderLock(tmp_path, "run folder"):
        with pytest.raises(FolderInUseError, match=rf"{tmp_path}: this run folder is in use by pid {os.getpid()}"):
            FolderLock(tmp_path, "run folder").__enter__()
    with FolderLock(tmp_path):  # released
        pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path, 60)
    with pytest.raises(FolderInUseError, match=f"pid {proc.pid}"):
        FolderLock(tmp_path).__enter__()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with FolderLock(tmp_path):  # the kernel dropped the dead process's lock: nothing stale
        assert f'"pid": {os.getpid()}' in (tmp_path / ".lock").read_text()


def test_a_waiting_lock_waits_for_the_holder(tmp_path, capsys):
    proc = _holder(tmp_path, 1.5)
    start = time.monotonic()
    with FolderLock(tmp_path, "feature cache", wait=True):
        assert proc.poll() is not None and time.monotonic() - start > 0.5
    assert f"this feature cache is in use by pid {proc.pid}" in capsys.readouterr().out


def test_a_second_search_of_a_run_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    def no_data_work(*args, **kwargs):
        raise AssertionError("the data stage started in a locked run folder")

    monkeypatch.setattr(run_search, "prepare", no_data_work)
    run_dir = tmp_path / "demo"
    with FolderLock(run_dir, "run folder"):
        assert run_search.main(["run", "--runs-dir", str(tmp_path), "--run-name", "demo"]) == 2
    assert f"{run_dir}: this run folder is in use by pid {os.getpid()}" in capsys.readouterr().err


CHILD_OF_A_DOOMED_PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import os, sys, time; sys.path.insert(0, sys.argv[1]); from search.entry import die_with_parent; "
        "die_with_parent(int(sys.argv[2])); print('armed', flush=True); time.sleep(60)", sys.argv[1], str(os.getpid())],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "armed"
    print(child.pid, flush=True)
    time.sleep(60)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux-only")
def test_a_search_child_dies_with_its_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", CHILD_OF_A_DOOMED_PARENT, str(ROOT)], stdout=subprocess.PIPE,
                              text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # kill -9 of the main job
    parent.wait(timeout=10)
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        if open(f"/proc/{child}/stat").read().split()[2] == "Z":  # exited, not yet reaped by init
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def test_die_with_parent_stops_an_orphan_at_once():
    out = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "from search.entry import die_with_parent; die_with_parent(1)", str(ROOT)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "the parent search process 1 is gone" in out.stderr
