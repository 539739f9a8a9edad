"""build_cache end to end on small clips made with ffmpeg: bad inputs, key, resume, plots."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fi_data import ffmpeg_tools
from fi_data.cache import (PreprocessParams, build_cache, cache_key, extract_clip_features, open_path,
                           summarize_cache)
from fi_data.cache_format import MANIFEST_NAME, open_cache, write_synthetic_cache
from fi_data.sample_plots import plot_samples
from fi_data.traits import SPLITS, TRAITS

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
ROOT = Path(__file__).resolve().parents[1]


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def make_clip(path, *, seconds=2.0, size="192x144", audio="sine=frequency=330:sample_rate=44100", channels=2,
              audio_filter=None, faststart=False):
    video = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds}"]
    sound = [] if audio is None else ["-f", "lavfi", "-t", str(seconds), "-i", audio]
    out = ["-map", "0:v"] + ([] if audio is None else ["-map", "1:a", "-c:a", "aac", "-ac", str(channels)])
    out += ["-af", audio_filter] if audio_filter else []
    out += ["-movflags", "+faststart"] if faststart else []
    ffmpeg(*video, *sound, *out, "-c:v", "libx264", "-pix_fmt", "yuv420p", path)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One file per kind of input, good and bad; name -> path."""
    d = tmp_path_factory.mktemp("clips")
    c = {
        "good": make_clip(d / "good.mp4"),
        "dash": make_clip(d / "-starts-with-dash.mp4", audio="sine=frequency=500:sample_rate=44100"),
        "mono": make_clip(d / "mono.mp4", channels=1),
        "no_audio": make_clip(d / "no_audio.mp4", audio=None),
        "silent": make_clip(d / "silent.mp4", audio="anullsrc=r=44100:cl=stereo"),
        "short_audio": make_clip(d / "short_audio.mp4", audio="sine=sample_rate=44100:duration=0.01"),
        "zero_audio": make_clip(d / "zero_audio.mp4", audio_filter="atrim=end_sample=1"),
        "few_frames": make_clip(d / "few_frames.mp4", seconds=0.1),
        "odd_resolution": make_clip(d / "odd_resolution.mp4", size="250x250"),
    }
    good = c["good"].read_bytes()
    (d / "moov_missing.mp4").write_bytes(good[: len(good) // 2])  # moov is written at the end
    (d / "empty.mp4").write_bytes(b"")
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    fast = make_clip(d / "faststart.mp4", faststart=True).read_bytes()
    (d / "truncated.mp4").write_bytes(fast[: len(fast) * 6 // 10])
    (d / "no_frames.mp4").write_bytes(fast[: fast.find(b"mdat") + 4])  # header only: every packet missing
    for name in ("moov_missing", "empty", "garbage", "truncated", "no_frames"):
        c[name] = d / f"{name}.mp4"
    c["missing_file"] = d / "not-there.mp4"
    return c


EXPECTED = {  # name: (split, status, flags that must be present)
    "good": ("train", "ok", set()),
    "dash": ("train", "ok", set()),
    "mono": ("train", "ok", {"mono_audio"}),
    "no_audio": ("train", "ok", {"no_audio_stream"}),
    "silent": ("train", "ok", {"silent_audio"}),
    "short_audio": ("validation", "ok", {"audio_shorter_than_fft_window"}),
    "zero_audio": ("validation", "ok", {"audio_zero_length"}),
    "few_frames": ("validation", "ok", {"few_decodable_frames"}),
    "odd_resolution": ("test", "ok", {"odd_resolution"}),
    "truncated": ("test", "ok", {"frame_count_mismatch"}),
    "moov_missing": ("test", "unreadable_container", set()),
    "empty": ("test", "empty_file", set()),
    "garbage": ("train", "unreadable_container", set()),
    "no_frames": ("validation", "no_decodable_frames", set()),
    "missing_file": ("train", "missing_file", set()),
}


def clip_id(name, n=0):
    return f"{name[:11]:_<11}.{n:03d}"  # the real shape: 11 characters, a dot, 3 digits


def table_for(clips, names, split_of=None):
    rows = []
    for i, name in enumerate(names):
        split = (split_of or {}).get(name) or EXPECTED[name][0]
        labels = {t: round(0.1 + 0.05 * ((i + j) % 16), 2) for j, t in enumerate(TRAITS)}
        rows.append({"clip_id": clip_id(name), "split": split, **labels, "interview": 0.5,
                     "source": str(clips[name]), "status": "ok"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def bad_cache(clips, tmp_path_factory):
    table = table_for(clips, list(EXPECTED))
    extra = table[table.clip_id == clip_id("no_audio")].assign(clip_id=clip_id("no_audio", 1), split="test")
    table = pd.concat([table, extra.assign(status="ok"),
                       extra.assign(clip_id=clip_id("unlabelled"), status="no_labels")], ignore_index=True)
    root = tmp_path_factory.mktemp("bad_cache")
    return table, build_cache(table, root, open_clip=open_path, workers=2, progress=False)


def test_every_bad_input_gets_its_recorded_reason(bad_cache):
    _, cache_dir = bad_cache
    manifest = open_cache(cache_dir).manifest
    for name, (split, status, flags) in EXPECTED.items():
        entry = manifest["clips"][clip_id(name)]
        assert (entry["split"], entry["status"]) == (split, status), name
        assert flags <= set(entry["flags"]), (name, entry)
    assert manifest["clips"][clip_id("good")]["flags"] == []
    assert manifest["clips"][clip_id("unlabelled")]["status"] == "no_labels"  # the table's own reason is kept
    assert "moov atom not found" in manifest["clips"][clip_id("moov_missing")]["detail"]
    problems = manifest["problems"]
    assert problems["skipped"]["unreadable_container"]["count"] == 2
    assert problems["flagged"]["no_audio_stream"]["count"] == 2
    assert not (cache_dir / "parts").exists() and not (cache_dir / "tmp").exists()


def test_arrays_hold_only_usable_clips_finite_and_typed(bad_cache):
    table, cache_dir = bad_cache
    cache = open_cache(cache_dir)
    m = cache.manifest["mfcc_frames_mean"]
    kept = {s: sorted(clip_id(n) for n, (split, status, _) in EXPECTED.items() if split == s and status == "ok")
            for s in SPLITS}
    kept["test"] = sorted(kept["test"] + [clip_id("no_audio", 1)])
    for s in SPLITS:
        arrays = cache.split(s)
        assert list(arrays.clip_ids) == kept[s]
        assert arrays.audio.shape == (len(kept[s]), 24, m, 1) and arrays.audio.dtype == np.float32
        assert arrays.frames.shape == (len(kept[s]), 6, 140, 248, 3) and arrays.frames.dtype == np.uint8
        assert np.isfinite(arrays.audio).all()
        rows = table.set_index("clip_id").loc[list(arrays.clip_ids), list(TRAITS)].to_numpy(np.float32)
        np.testing.assert_array_equal(arrays.targets, rows)
        assert cache.manifest["splits"][s]["n"] == len(kept[s])
    # no audio: all-zero audio in train and in test alike
    for s, cid in (("train", clip_id("no_audio")), ("test", clip_id("no_audio", 1))):
        arrays = cache.split(s)
        assert not arrays.audio[arrays.clip_ids.index(cid)].any()
    # M is the mean over the TRAINING clips with usable audio (good, dash, mono, silent)
    lengths = [cache.manifest["clips"][clip_id(n)]["audio_frames"] for n in ("good", "dash", "mono", "silent")]
    assert m == int(np.floor(np.mean(lengths) + 0.5))
    assert min(lengths) > 120


def test_summary_prints_set_sizes_and_m(bad_cache):
    _, cache_dir = bad_cache
    text = summarize_cache(cache_dir)
    m = open_cache(cache_dir).manifest["mfcc_frames_mean"]
    assert text.startswith("Set sizes: train 5 (2 skipped), validation 3 (1 skipped), test 3 (3 skipped)")
    assert f"M = {m} " in text and "unreadable_container 2" in text


def test_summary_of_a_synthetic_cache(tmp_path):
    text = summarize_cache(write_synthetic_cache(tmp_path / "synthetic"))
    assert text.splitlines()[:2] == ["Set sizes: train 16, validation 8, test 8",
                                     "Mean MFCC frame count over the training set: M = 40"]


def test_extract_clip_features_gives_the_cached_row(bad_cache, clips):
    _, cache_dir = bad_cache
    cache = open_cache(cache_dir)
    params = PreprocessParams.from_dict(cache.params)
    arrays = cache.split("train")
    for name in ("dash", "silent"):
        row = arrays.clip_ids.index(clip_id(name))
        features = extract_clip_features(clips[name], params, cache.manifest["mfcc_frames_mean"])
        assert features.status == "ok"
        np.testing.assert_array_equal(features.audio, arrays.audio[row])
        np.testing.assert_array_equal(features.frames, arrays.frames[row])
    assert extract_clip_features(clips["empty"], params, 10).status == "empty_file"


def test_black_bars_are_cropped_in_the_cache_and_for_prediction_alike(clips, tmp_path):
    """The crop box goes into the clip's manifest entry; predict's extraction gives the same frames."""
    barred = tmp_path / "letterbox.mp4"  # 4:3 frame, 16:9 picture: 18 black rows top and bottom
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=192x108:rate=30:duration=2,pad=192:144:0:18:black",
           "-f", "lavfi", "-t", "2", "-i", "sine=frequency=330:sample_rate=44100", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", barred)
    table = table_for({**clips, "letterbox": barred}, ["good", "letterbox"], {"letterbox": "train"})
    cache = open_cache(build_cache(table, tmp_path / "cache", open_clip=open_path, workers=1, progress=False))
    entries = cache.manifest["clips"]
    assert entries[clip_id("letterbox")]["crop"] == {"top": 18, "bottom": 126, "left": 0, "right": 192}
    assert entries[clip_id("good")]["crop"] == {"top": 0, "bottom": 144, "left": 0, "right": 192}
    arrays = cache.split("train")
    frames = arrays.frames[arrays.clip_ids.index(clip_id("letterbox"))]
    assert (frames.max(axis=(0, 2, 3)) > 0).all()  # every row is picture: the bars are gone
    again = extract_clip_features(barred, PreprocessParams.from_dict(cache.params), cache.manifest["mfcc_frames_mean"])
    np.testing.assert_array_equal(again.frames, frames)
    assert again.info["crop"] == entries[clip_id("letterbox")]["crop"]


def test_sample_plot_png(bad_cache, tmp_path):
    _, cache_dir = bad_cache
    out = plot_samples(cache_dir, tmp_path / "plots" / "samples.png", n=3)
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (576, 1600)  # figsize (2*6 + 8, 2.4*3) inches at 80 dpi
    mean_mfcc = write_synthetic_cache(tmp_path / "mean", audio_shape=(24, 1), params={"representation": "mean_mfcc"})
    image = matplotlib.image.imread(plot_samples(mean_mfcc, tmp_path / "mean.png", n=1))
    assert image.shape[:2] == (192, 1600)
    assert (image[:, 1000:1200, :3].std(axis=2) > 0.1).any()  # the 24 means are drawn in colour


def test_same_inputs_reuse_the_cache_and_changes_make_a_new_key(bad_cache, clips, capsys):
    table, cache_dir = bad_cache
    assert build_cache(table, cache_dir.parent, open_clip=_explode, workers=1, progress=True) == cache_dir
    assert capsys.readouterr().out.startswith(f"Feature cache up to date: {cache_dir}\nSet sizes: train 5")
    params = PreprocessParams()
    key = cache_key(table, params)
    assert cache_dir.name == key and key.startswith("mfcc-")
    assert cache_key(table.assign(source="/elsewhere/x.mp4"), params) == key  # moving the data keeps it
    assert cache_key(table, dataclasses.replace(params, n_mfcc=20)) != key
    assert cache_key(table, dataclasses.replace(params, skip_loop_filter=False)) != key
    resplit = table.copy()
    resplit.loc[0, "split"] = "test"
    assert cache_key(resplit, params) != key
    assert cache_key(table.sample(frac=1.0, random_state=1), params) == key  # row order does not matter


def _explode(source):
    raise AssertionError(f"a finished cache must not open any clip, opened {source}")


@pytest.mark.parametrize("representation, shape", [("mean_mfcc", (24, 1)), ("logmel", (64, None, 1))])
def test_other_representations(clips, tmp_path, representation, shape):
    table = table_for(clips, ["good", "mono"], {"mono": "validation"})
    cache = open_cache(build_cache(table, tmp_path, PreprocessParams(representation=representation),
                                   open_clip=open_path, workers=1, progress=False))
    m = cache.manifest["mfcc_frames_mean"]
    expected = tuple(m if s is None else s for s in shape)
    assert cache.audio_shape == expected and cache.split("validation").audio.shape == (1, *expected)
    assert cache.manifest["params"]["representation"] == representation


@pytest.mark.parametrize("change, message", [
    (lambda t: t.assign(split="training"), "unknown split"),
    (lambda t: t.assign(openness=np.nan), "outside \\[0, 1\\] or missing"),
    (lambda t: t.assign(clip_id="same.000"), "duplicate clip ids"),
    (lambda t: t.assign(clip_id=[f"../x{i}.000" for i in range(len(t))]), "plain file names"),
    (lambda t: t.drop(columns=["source"]), "lacks columns \\['source'\\]"),
])
def test_bad_clip_tables_are_refused(clips, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        build_cache(change(table_for(clips, ["good", "mono"])), tmp_path, open_clip=open_path, progress=False)


def test_unpicklable_opener_is_refused(clips, tmp_path):
    with pytest.raises(ValueError, match="picklable"):
        build_cache(table_for(clips, ["good"]), tmp_path, open_clip=lambda s: open_path(s), progress=False)


def test_missing_ffmpeg_gives_one_clear_error(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(ffmpeg_tools.shutil, "which", lambda name: None)
    ffmpeg_tools.require_ffmpeg.cache_clear()
    try:
        with pytest.raises(ffmpeg_tools.FFmpegNotFoundError, match="apt-get install ffmpeg"):
            build_cache(table_for(clips, ["good"]), tmp_path, open_clip=open_path, progress=False)
    finally:
        ffmpeg_tools.require_ffmpeg.cache_clear()


BUILD_SCRIPT = """
import contextlib, json, signal, sys, time
from pathlib import Path
import pandas as pd
sys.path.insert(0, {root!r})
from fi_data.cache import build_cache

@contextlib.contextmanager
def slow_open(source):  # slow enough to interrupt mid-run
    time.sleep(1.0)
    yield Path(source)

if __name__ == "__main__":
    # A shell's background job inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: restore Python's handler so that the test's Ctrl-C always lands.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    table = pd.DataFrame(json.loads(Path(sys.argv[1]).read_text()))
    build_cache(table, sys.argv[2], open_clip=slow_open, workers=int(sys.argv[3]), progress=False)
"""


def start_build(tmp_path, table, root, workers):
    script, table_json = tmp_path / "build.py", tmp_path / "table.json"
    script.write_text(BUILD_SCRIPT.format(root=str(ROOT)))
    table_json.write_text(table.to_json(orient="records"))
    return subprocess.Popen([sys.executable, str(script), str(table_json), str(root), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_parts(parts_dir, n, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if parts_dir.is_dir() and len(list(parts_dir.glob("[!.]*.npz"))) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} parts in {parts_dir} after {timeout} s")


def test_interrupted_runs_resume_to_identical_arrays(clips, tmp_path):
    names = ["good", "dash", "mono", "silent", "odd_resolution", "few_frames", "no_audio", "truncated"]
    table = table_for(clips, names, {"odd_resolution": "train", "few_frames": "validation", "truncated": "test"})
    reference = open_cache(build_cache(table, tmp_path / "reference", open_clip=open_path, workers=1,
                                       progress=False))
    root = tmp_path / "interrupted"
    parts = root / cache_key(table, PreprocessParams()) / "parts"

    # 1. Ctrl-C while two workers run: finished parts stay, the workers are stopped. On a fast
    #    machine the 8 small clips can all finish before the signal lands: then start again.
    for _ in range(3):
        shutil.rmtree(root, ignore_errors=True)
        proc = start_build(tmp_path, table, root, workers=2)
        wait_for_parts(parts, 1, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if not (root / cache_key(table, PreprocessParams()) / "manifest.json").is_file():
            break
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    # 2. kill -9 of a one-worker run that resumed.
    proc = start_build(tmp_path, table, root, workers=1)
    done = len(list(parts.glob("[!.]*.npz")))
    wait_for_parts(parts, done + 1, proc)
    proc.kill()
    proc.communicate(timeout=60)
    finished = sorted(parts.glob("[!.]*.npz"))
    assert 2 <= len(finished) < len(names) and not (root / parts.parent.name / MANIFEST_NAME).exists()
    for part in finished:  # every part present is whole
        with np.load(part) as npz:
            assert npz["frames"].shape[0] in (0, 6)
    # 3. a half-written part and scratch files, as a crash mid-write leaves them
    (parts / ".partial-12345-good_______.000.npz").write_bytes(b"PK\x03\x04 half written")
    finished[0].unlink()

    resumed = open_cache(build_cache(table, root, open_clip=open_path, workers=2, progress=False))
    for s in SPLITS:
        a, b = reference.split(s), resumed.split(s)
        assert a.clip_ids == b.clip_ids
        for field in ("audio", "frames", "targets"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    strip = lambda m: {k: v for k, v in m.items() if k != "created"}  # noqa: E731
    assert strip(reference.manifest) == strip(resumed.manifest)
    assert sorted(os.listdir(resumed.path)) == sorted(os.listdir(reference.path))


def test_preprocess_params_round_trip_and_validation():
    params = PreprocessParams(representation="logmel", n_mels=40)
    assert PreprocessParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(ValueError, match="unknown preprocessing parameters \\['colour'\\]"):
        PreprocessParams.from_dict({**params.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="representation must be one of"):
        PreprocessParams(representation="mfccs")
    with pytest.raises(ValueError, match="would be all zeros"):
        PreprocessParams(representation="mean_mfcc", standardize="coefficient")
    with pytest.raises(ValueError, match="n_frames must be a positive integer"):
        PreprocessParams(n_frames=0)


def test_two_builds_of_one_cache_at_once_decode_once_and_agree(clips, tmp_path, capsys):
    """The second build waits for the first (the cache's lock) and reuses its result."""
    import threading

    table = table_for(clips, ["good", "dash"], {"dash": "train"})
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_cache(table, tmp_path, open_clip=open_path,
                                                                          workers=1, progress=True)))
               for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(timeout=300)
    out = capsys.readouterr().out
    assert len(results) == 2 and results[0] == results[1] and (results[0] / "manifest.json").is_file()
    assert out.count("Preprocessing 2 clips") == 1 and "Feature cache built by another process" in out
    assert "this feature cache is in use by pid" in out


def test_a_clip_failing_on_a_full_disk_is_not_recorded_and_is_retried_with_space(clips, tmp_path, monkeypatch):
    """ENOSPC is the machine's fault, never a clip's verdict (issue 15 §3)."""
    import fi_data.cache as cache_module

    table = table_for(clips, ["good", "garbage"], {"garbage": "train"})
    monkeypatch.setattr(cache_module, "_free_bytes", lambda folder: 10 * 2**20)  # 10 MiB left
    with pytest.raises(cache_module.DiskFullError, match=r"clip .* failed \(\w+\) with only 10 MiB free in .*tmp"):
        build_cache(table, tmp_path, open_clip=open_path, workers=1, progress=False)
    parts = list((next(tmp_path.iterdir()) / "parts").glob("*.npz"))
    assert clip_id("garbage") not in " ".join(p.name for p in parts)  # nothing recorded for it
    monkeypatch.undo()
    cache = open_cache(build_cache(table, tmp_path, open_clip=open_path, workers=1, progress=False))
    entry = cache.manifest["clips"][clip_id("garbage")]
    assert entry["status"] == EXPECTED["garbage"][1]  # its real verdict, decided with space


def test_enospc_while_writing_a_part_or_before_assembly_is_one_clear_error(clips, tmp_path, monkeypatch):
    import errno

    import fi_data.cache as cache_module

    table = table_for(clips, ["good"])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(cache_module.np, "savez", full)
        with pytest.raises(cache_module.DiskFullError, match=r"writing the features of clip .* in .*parts failed on "
                                                              r"the machine, not the clip"):
            build_cache(table, tmp_path, open_clip=open_path, workers=1, progress=False)
    with monkeypatch.context() as m:  # the good clip needs no check; the assembly finds 1 MiB left
        m.setattr(cache_module, "_free_bytes", lambda folder: 2**20)
        with pytest.raises(cache_module.DiskFullError, match=r"assembling the cache's arrays needs .* MiB free on "
                                                              r"this disk, 1 MiB are"):
            build_cache(table, tmp_path, open_clip=open_path, workers=1, progress=False)
    assert open_cache(build_cache(table, tmp_path, open_clip=open_path, workers=1, progress=False))
