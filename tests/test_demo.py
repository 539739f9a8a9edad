"""The demo generator: real layout and formats, documented content, ceiling, caching."""
import json
import pickletools
import shutil
import subprocess
import zipfile

import numpy as np
import pandas as pd
import pytest

from fi_data import demo
from fi_data.annotations import CLIP_FILE_RE, PICKLE_KEY_ORDER, load_annotation_pickle
from fi_data.archives import open_clip
from fi_data.demo import (CUES, LABEL_CORR, LABEL_MEAN, LABEL_SD, DemoParams, demo_dataset, demo_plan, demo_scores,
                          generate_demo, render_frame, synthesize_voice)
from fi_data.discovery import discover
from fi_data.traits import INTERVIEW, TRAITS

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg/ffprobe not on PATH (the toolkit needs them)")

TINY = dict(n_train=6, n_val=3, n_test=3, seed=5, width=64, height=36, duration_s=2.0, clips_per_inner=4,
            inner_per_outer=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "data", progress=False, workers=2, **TINY)


def read_plan(root):
    return pd.read_csv(root / "demo_hidden.csv", dtype={"clip_id": str, "fps": str})


# --- the plan (no media) --------------------------------------------------------------------

def test_plan_sizes_ids_and_determinism():
    params = DemoParams(n_train=240, n_val=80, n_test=80)
    plan = demo_plan(params)
    assert plan["split"].value_counts().to_dict() == {"train": 240, "validation": 80, "test": 80}
    assert plan["clip_id"].map(lambda c: bool(CLIP_FILE_RE.match(c + ".mp4"))).all()
    assert plan["clip_id"].is_unique
    starts = plan["clip_id"].str[0]
    assert (starts == "-").any() and (starts == "_").any()
    per_id = plan["clip_id"].str[:11].value_counts()
    assert per_id.max() <= 6 and (per_id > 1).any()
    speakers = plan.groupby(plan["clip_id"].str[:11])["split"].nunique()
    assert (speakers > 1).any()  # ids shared across splits, as in the release
    assert set(plan["fps"]) == {"30", "30000/1001"} and set(plan["channels"]) == {1, 2}
    assert set(plan["width"]) == {256, 192} and set(plan["height"]) == {144}
    cues = plan[[f"cue_{c.name}" for c in CUES]].to_numpy()
    assert cues.min() >= 0 and cues.max() <= 1
    pd.testing.assert_frame_equal(plan, demo_plan(params))
    assert not plan["clip_id"].equals(demo_plan(DemoParams(seed=1))["clip_id"])


def test_labels_follow_real_training_statistics():
    plan = demo_plan(DemoParams(n_train=20000, n_val=1, n_test=1))
    keys = [*TRAITS, INTERVIEW]
    values = plan[keys]
    assert np.abs(values.mean().to_numpy() - LABEL_MEAN).max() < 0.01
    assert np.abs(values.std().to_numpy() - LABEL_SD).max() < 0.01
    assert np.abs(values.corr().to_numpy() - LABEL_CORR).max() < 0.04
    assert values.min().min() >= 0 and values.max().max() <= 1


def test_cues_follow_their_traits():
    plan = demo_plan(DemoParams(n_train=4000, n_val=1, n_test=1, cue_noise=0.5))
    for cue in CUES:
        r = np.corrcoef(plan[f"cue_{cue.name}"], plan[cue.trait])[0, 1]
        sd = demo.cue_noise_sd(cue, 0.5)  # global 1.25, structural 0.4 label SDs
        assert sd == (1.25 if cue.kind == "global" else 0.4)
        # r = 1 / sqrt(1 + sd^2) before clipping: 0.62 (global), 0.93 (structural)
        assert r == pytest.approx(1 / np.sqrt(1 + sd ** 2), abs=0.04), (cue.name, r)
    assert {c.kind for c in CUES} == set(demo.CUE_KINDS)


def test_scores_ceiling_above_single_channels_above_mean():
    params = DemoParams(n_train=3000, n_val=1, n_test=3000)
    plan = demo_plan(params)
    scores = demo_scores(plan, params.cue_noise)["one_minus_mae"]
    assert scores["ceiling"] > scores["audio_only"] + 0.01
    assert scores["ceiling"] > scores["video_only"] + 0.01
    assert min(scores["audio_only"], scores["video_only"]) > scores["mean_baseline"] + 0.04
    # global cues alone (what clip statistics can read) reach less than half of the margin
    margin = scores["ceiling"] - scores["mean_baseline"]
    assert 0.2 * margin < scores["global_only"] - scores["mean_baseline"] < 0.5 * margin
    # the mean baseline by hand
    test, train = plan[plan["split"] == "test"], plan[plan["split"] == "train"]
    by_hand = 1 - np.abs(test[list(TRAITS)].to_numpy() - train[list(TRAITS)].mean().to_numpy()).mean()
    assert scores["mean_baseline"] == pytest.approx(by_hand, abs=1e-12)
    exact = demo_plan(DemoParams(n_train=500, n_val=1, n_test=500, cue_noise=0.0))
    assert demo_scores(exact, 0.0).loc["ceiling", "one_minus_mae"] > 0.995  # noiseless cues: labels recovered


def test_params_are_validated():
    with pytest.raises(ValueError, match="even-sized"):
        DemoParams(width=255)
    with pytest.raises(ValueError, match="split sizes"):
        DemoParams(n_test=0)
    assert DemoParams().key() == DemoParams().key() != DemoParams(seed=1).key()


# --- content mapping, before encoding -------------------------------------------------------

def _row(fields=None, **cues):
    """A plan row with the given cue values (by cue name) and other fields replaced."""
    row = demo_plan(DemoParams(n_train=1, n_val=1, n_test=1)).iloc[0].copy()
    for name, value in cues.items():
        row[f"cue_{name}"] = value
    for name, value in (fields or {}).items():
        row[name] = value
    return row


def test_voice_pitch_rate_breath_and_intonation_follow_cues():
    n = 44100 * 4
    for u in (0.0, 0.5, 1.0):  # the pitch is a nuisance now (voice_height), with a flat intonation
        x = synthesize_voice(_row({"voice_height": u}, breathiness=0.0, intonation=0.5), n)
        start = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())[0]  # the middle 80 ms of the first syllable
        assert _pitch(x[start + 1764:start + 5292]) == pytest.approx(100 * 3 ** u, rel=0.03)
    for u, rate in ((0.0, 1.5), (1.0, 4.5)):
        x = synthesize_voice(_row(speech_rate=u), n)
        voiced = np.convolve(np.abs(x) > 0.05 * np.abs(x).max(), np.ones(441), "same") > 0
        onsets = np.count_nonzero(np.diff(voiced.astype(int)) == 1)
        assert abs(onsets - rate * 4) <= 0.25 * rate * 4 + 1
    ratios = []
    for u in (0.0, 1.0):
        spec = np.abs(np.fft.rfft(synthesize_voice(_row(breathiness=u), n))) ** 2
        f = np.fft.rfftfreq(n, 1 / 44100)
        ratios.append(spec[(f > 5500) & (f < 7000)].sum() / spec[f < 5000].sum())
    assert ratios[1] > 100 * ratios[0]  # +30 dB of breath noise


def _pitch(segment):
    ac = np.correlate(segment, segment, "full")[segment.size - 1:]
    lo, hi = 44100 // 700, 44100 // 60
    return 44100 / (np.argmax(ac[lo:hi]) + lo)


@pytest.mark.parametrize("u", [0.0, 0.5, 1.0])
def test_intonation_glides_each_syllable(u):
    row = _row({"voice_height": 0.3}, intonation=u, breathiness=0.0, speech_rate=0.0)
    x = synthesize_voice(row, 44100 * 2)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    start, length, window = loud[0], int(demo.SYLLABLE_S * 44100), int(0.04 * 44100)
    first = _pitch(x[start + window // 4:start + window])  # the syllable's first and last 40 ms
    last = _pitch(x[start + length - window:start + length - window // 4])
    # centres about 0.16 and 0.84 of the way through: 2 ** (0.68 * octaves), octaves = 2u - 1
    assert last / first == pytest.approx(2 ** (0.68 * (2 * u - 1)), rel=0.12)


def _stat_features(x):
    """The cached MFCCs of a 44.1 kHz waveform (fi_data.audio, default settings) and the ridge's
    audio statistics of them (fi_models.statistics.AudioStatistics)."""
    import librosa

    from fi_data.audio import waveform_features
    from fi_data.params import PreprocessParams
    from fi_models.statistics import AudioStatistics

    params = PreprocessParams()
    mfcc, _ = waveform_features(librosa.resample(x, orig_sr=44100, target_sr=params.sample_rate), params)
    return mfcc, np.asarray(AudioStatistics()(mfcc[None, :, :, None]))[0]


def test_intonation_is_invisible_to_clip_statistics_but_not_to_the_sequence():
    falling, rising = (_stat_features(synthesize_voice(_row(intonation=u, breathiness=0.2), 44100 * 4))
                       for u in (0.0, 1.0))
    other_voice = _stat_features(synthesize_voice(_row({"voice_height": 0.6}, intonation=0.0, breathiness=0.2),
                                                  44100 * 4))
    stats_gap = np.abs(falling[1] - rising[1]).mean()
    assert stats_gap < 0.2 * np.abs(falling[1] - other_voice[1]).mean()  # a nuisance moves them 5x more
    assert np.abs(falling[0] - rising[0]).mean() > 5 * stats_gap  # frame by frame the two differ


STILL = dict(width=256, height=144, dx=0.0, dy=0.0, gradient=0.0, light=1.0, cast_r=1.0, cast_g=1.0, cast_b=1.0,
             face_size=0.4)


def _grid_statistics(frame):
    """The ridge's frame statistics of one frame (fi_models.statistics.FrameStatistics), in grey levels."""
    from fi_models.statistics import FrameStatistics

    return 255.0 * np.asarray(FrameStatistics()(frame[None, None]))[0]


def test_background_colour_follows_its_cue_and_the_nuisances_multiply():
    warm, cool = (render_frame(_row(STILL, background=u)) for u in (0.0, 1.0))
    changed = np.abs(warm.astype(int) - cool.astype(int)).max(-1) > 40  # background pixels (not clutter or person)
    assert changed.mean() > 0.3
    assert np.abs(warm[changed].mean(0) - [235, 150, 60]).max() < 10
    assert np.abs(cool[changed].mean(0) - [60, 130, 235]).max() < 10
    dim = render_frame(_row({**STILL, "light": 0.85, "cast_r": 1.08}, background=0.0))
    assert dim[changed][:, 0].mean() == pytest.approx(235 * 0.85 * 1.08, rel=0.03)


def test_stripes_turn_with_their_cue_and_leave_the_statistics_alone():
    frames = {u: render_frame(_row(STILL, stripes=u, background=0.5)) for u in (0.0, 1.0)}
    shirt = (slice(110, 140), slice(110, 146))  # below the face at dx = 0
    for u, frame in frames.items():
        grey = frame[shirt].astype(float).mean(-1)
        along_rows, along_cols = np.abs(np.diff(grey, axis=0)).mean(), np.abs(np.diff(grey, axis=1)).mean()
        # horizontal stripes (u = 0) change down the rows, vertical ones across the columns
        assert (along_rows > 4 * along_cols) if u == 0.0 else (along_cols > 4 * along_rows)
    gap = np.abs(_grid_statistics(frames[0.0]) - _grid_statistics(frames[1.0])).max()
    other_background = render_frame(_row(STILL, stripes=0.0, background=0.7))
    # turning the stripes moves the grid means by a few grey levels (where cell edges cut them),
    # a tenth of what a small change of the background colour does
    assert gap < 0.1 * np.abs(_grid_statistics(frames[0.0]) - _grid_statistics(other_background)).max()


def test_expression_curves_the_mouth_and_leaves_the_statistics_alone():
    ink = np.array([110.0, 30.0, 40.0])
    lifts = {}
    for u in (0.0, 0.5, 1.0):
        face, alpha = demo.render_face(100, u)
        mouth = np.abs(face - ink).max(-1) < 25
        rows, cols = np.nonzero(mouth)
        middle = rows[np.abs(cols - 51) < 4].mean()
        corners = rows[np.abs(cols - 51) > 12].mean()
        lifts[u] = middle - corners  # > 0: corners above the middle (a smile)
        assert alpha[50, 50] == 1.0 and alpha[0, 0] == 0.0
    assert lifts[0.0] < -5 and abs(lifts[0.5]) < 1.5 and lifts[1.0] > 5
    frown, smile = (render_frame(_row(STILL, expression=u)) for u in (0.0, 1.0))
    assert np.abs(_grid_statistics(frown) - _grid_statistics(smile)).max() < 1.0  # grey levels


def test_the_detector_finds_the_demo_face():
    from fi_data.faces import face_box

    plan = demo_plan(DemoParams(n_train=20, n_val=1, n_test=1, seed=3))
    found = 0
    for _, row in plan.iterrows():
        frame = render_frame(row)
        box = face_box(np.stack([frame] * 3))
        side = row["face_size"] * row["height"]
        centre = (row["width"] / 2 + row["dx"] * row["width"], (0.4 + row["dy"]) * row["height"])
        if not box.fallback:
            found += 1
            assert abs(box.left + box.size / 2 - centre[0]) < 0.25 * side
            assert abs(box.top + box.size / 2 - centre[1]) < 0.35 * side
    assert found >= 0.95 * len(plan)


# --- a generated dataset ----------------------------------------------------------------------

def test_layout_and_archive_formats(tiny):
    names = sorted(p.name for p in tiny.iterdir())
    assert names == ["demo.json", "demo_hidden.csv", "test-1e.zip", "test-annotation-e.zip", "train-1.zip",
                     "train-2.zip", "train-annotation.zip", "val-1.zip", "val-annotation-e.zip"]
    with zipfile.ZipFile(tiny / "test-1e.zip") as zf:
        assert zf.namelist() == ["test-1/", "test-1/test80_01.zip"]
        assert zf.getinfo("test-1/test80_01.zip").compress_type == zipfile.ZIP_STORED
    with zipfile.ZipFile(tiny / "train-2.zip") as zf:
        assert zf.namelist() == ["training80_02.zip"]
    with zipfile.ZipFile(tiny / "train-annotation.zip") as zf:
        assert zf.namelist() == ["annotation_training.pkl"]
        data = zf.read("annotation_training.pkl")
    ops = list(pickletools.genops(data))
    assert ops[0][1] == 2 and "BINUNICODE" not in {op.name for op, _, _ in ops}
    with zipfile.ZipFile(tiny / "train-annotation.zip") as zf, zf.open("annotation_training.pkl") as f:
        raw = load_annotation_pickle(f)
    assert list(raw) == list(PICKLE_KEY_ORDER)
    assert all(type(v) is np.float64 for v in raw[INTERVIEW].values())
    meta = json.loads((tiny / "demo.json").read_text())
    assert meta["params"]["n_train"] == 6 and [c["name"] for c in meta["cues"]] == [c.name for c in CUES]


def test_round_trip_through_discovery_and_extracted_layout(tiny, tmp_path):
    plan = read_plan(tiny)
    result = discover(tiny, tmp_dir=tmp_path / "tmp")
    assert result.problems == [] and result.labels_without_video == [] and result.videos_without_labels == []
    clips = result.clips.set_index("clip_id")
    assert clips["split"].value_counts().to_dict() == {"train": 6, "validation": 3, "test": 3}
    expected = plan.set_index("clip_id").loc[clips.index]
    keys = [*TRAITS, INTERVIEW]
    assert clips[keys].to_numpy().tolist() == expected[keys].to_numpy().tolist()
    assert (clips["split"] == expected["split"]).all()

    extracted = tmp_path / "extracted"  # the same dataset unpacked by a user
    for outer in tiny.glob("*.zip"):
        with zipfile.ZipFile(outer) as zf:
            zf.extractall(extracted / outer.stem)
    for inner in sorted(extracted.rglob("*.zip")):
        with zipfile.ZipFile(inner) as zf:
            zf.extractall(inner.with_suffix(""))
        inner.unlink()
    unpacked = discover(extracted, tmp_dir=tmp_path / "tmp").clips.set_index("clip_id").loc[clips.index]
    assert unpacked[keys + ["split"]].equals(clips[keys + ["split"]])
    assert unpacked["source"].str.endswith(".mp4").all() and not unpacked["source"].str.contains("::").any()


def ffprobe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-count_frames", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def test_clips_are_h264_aac_with_planned_properties(tiny, tmp_path):
    plan = read_plan(tiny).set_index("clip_id")
    clips = discover(tiny, tmp_dir=tmp_path).clips
    for _, clip in clips.iterrows():
        row = plan.loc[clip["clip_id"]]
        with open_clip(clip["source"], tmp_dir=tmp_path) as path:
            streams = ffprobe(path)
        video, audio = streams["video"], streams["audio"]
        assert (video["codec_name"], video["pix_fmt"]) == ("h264", "yuv420p")
        assert (video["width"], video["height"]) == (row["width"], row["height"])
        assert video["r_frame_rate"] == ("30/1" if row["fps"] == "30" else "30000/1001")
        num, _, den = row["fps"].partition("/")
        assert int(video["nb_read_frames"]) == round(2.0 * float(num) / float(den or 1))
        assert (audio["codec_name"], audio["profile"], audio["sample_rate"]) == ("aac", "LC", "44100")
        assert audio["channels"] == row["channels"]
        assert float(audio["duration"]) == pytest.approx(2.0, abs=0.05)


def test_decoded_content_matches_the_rendered_cues(tiny, tmp_path):
    plan = read_plan(tiny).set_index("clip_id")
    errors, correlations = [], []
    for _, clip in discover(tiny, tmp_dir=tmp_path).clips.head(4).iterrows():
        row = plan.loc[clip["clip_id"]]
        w, h = int(row["width"]), int(row["height"])
        with open_clip(clip["source"], tmp_dir=tmp_path) as path:
            rgb = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                                  "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
            pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-f", "f32le", "-"],
                                 capture_output=True, check=True).stdout
        frame = np.frombuffer(rgb, np.uint8).reshape(h, w, 3).astype(float)
        intended = render_frame(row).astype(float)

        def blocks(img):  # mean colour of 4x4 blocks (sizes here are multiples of 4)
            return img.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3))

        # H.264 at crf 20 with 4:2:0 chroma keeps block colours within a few levels of the rendering
        errors.append(np.abs(blocks(frame) - blocks(intended)).mean())
        assert np.abs(frame.mean((0, 1)) - intended.mean((0, 1))).max() < 3
        audio = np.frombuffer(pcm, np.float32)
        n = min(audio.size, 88200)
        voice = synthesize_voice(row, 88200)[:n]
        correlations.append(np.corrcoef(audio[:n], voice)[0, 1])
    assert max(errors) < 3  # measured: 1.2 to 1.7 levels
    assert min(correlations) > 0.98  # AAC keeps the synthesized waveform (measured: > 0.99)


def test_generation_is_deterministic(tiny, tmp_path):
    again = generate_demo(tmp_path / "again", progress=False, workers=1, **TINY)
    for path in sorted(tiny.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_demo_dataset_generates_once(tmp_path, monkeypatch):
    params = dict(TINY, n_train=2, n_val=1, n_test=1, duration_s=1.0)
    stale = tmp_path / f"{DemoParams(**params).key()}.tmp-interrupted"  # a generation killed earlier
    (stale / "train").mkdir(parents=True)
    first = demo_dataset(tmp_path, progress=False, **params)
    assert first == tmp_path / DemoParams(**params).key() and (first / "demo.json").is_file()
    # No staging folder left, the stale one included; the lock file of the generation stays.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, ".lock"])
    monkeypatch.setattr(demo, "generate_demo", lambda *a, **k: pytest.fail("regenerated a cached demo"))
    assert demo_dataset(tmp_path, progress=False, **params) == first
    scores = demo_scores(first)
    assert list(scores.index) == ["ceiling", "audio_only", "video_only", "global_only", "mean_baseline"]


def test_output_folder_must_be_empty(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        generate_demo(tmp_path, progress=False, **TINY)
    assert (tmp_path / "x").read_text() == "keep me"


def test_the_standard_demo_keeps_its_key_and_variants_draw_other_datasets():
    from fi_data.demo import DemoParams, demo_cues, demo_plan, demo_scores, resolve_variant

    assert DemoParams().key() == "f18dcdb61da1"  # DEMO_VERSION 2; a variant-free key (no "variant" field)
    assert resolve_variant(DemoParams()) == DemoParams() and demo_cues(DemoParams()) == CUES
    a, b = resolve_variant(DemoParams(variant=1)), resolve_variant(DemoParams(variant=2))
    assert a == resolve_variant(DemoParams(variant=1)) and demo_cues(a) == demo_cues(resolve_variant(DemoParams(variant=1)))
    assert a.key() != b.key() != DemoParams().key()
    assert [c.trait for c in demo_cues(a)] != [c.trait for c in demo_cues(b)]
    for params in (a, b):
        cues = demo_cues(params)
        assert {c.trait for c in cues} == set(TRAITS)  # every trait has a cue
        assert sorted(c.name for c in cues) == sorted(c.name for c in CUES)
        assert {c.modality for c in cues} == {"audio", "video"}
        assert 120 <= params.n_train <= 300 and 40 <= params.n_val <= 100 and 40 <= params.n_test <= 100
        plan = demo_plan(params)
        assert len(plan) == params.n_train + params.n_val + params.n_test
        scores = demo_scores(plan, params.cue_noise, cues=cues)["one_minus_mae"]
        assert scores["ceiling"] > scores["mean_baseline"] + 0.03
    # a negative sign really inverts the cue: the cue correlates negatively with its trait
    cue = next(c for c in demo_cues(a) if c.sign < 0)
    plan = demo_plan(a)
    assert np.corrcoef(plan[f"cue_{cue.name}"], plan[cue.trait])[0, 1] < -0.3
