"""The face stream end to end: --frames whole|face|both in the cache, the datasets, the model and predict.

Clips are real H.264 files whose frames hold skimage's astronaut (a real face) pasted on clutter,
or clutter alone (no face).
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from fi_data.cache import PreprocessParams, build_cache, cache_key, extract_clip_features, open_path
from fi_data.cache_format import open_cache
from fi_data.traits import TRAITS
from test_faces import clutter, paste_face

H, W = 360, 640
FACE_AT = (110, 270, 100)  # (top, left, side) of the pasted face in every frame of a face clip
SMALL = dict(frame_height=36, frame_width=64, face_size=40)


def make_clip(path, seed: int, face: bool, seconds: float = 2.0, fps: int = 10) -> None:
    """An H.264 + AAC clip of ``seconds`` whose frames are clutter, with the astronaut's face if ``face``."""
    rng = np.random.default_rng(seed)
    background = clutter(rng, H, W)
    frame = paste_face(background, FACE_AT[2], FACE_AT[0], FACE_AT[1])[0] if face else background
    frames = np.stack([np.roll(frame, 2 * i, axis=1) for i in range(int(seconds * fps))])  # a slow pan
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}",
                    "-r", str(fps), "-i", "-", "-f", "lavfi", "-i",
                    f"sine=frequency={300 + 20 * seed}:sample_rate=16000:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
                   input=frames.tobytes(), check=True, capture_output=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("face_clips")
    made = {}
    for name, face in (("face", True), ("noise", False)):
        make_clip(folder / f"{name}.mp4", seed=1 if face else 2, face=face)
        made[name] = folder / f"{name}.mp4"
    return made


def test_the_cache_is_keyed_by_the_frame_streams():
    table = pd.DataFrame([{"clip_id": "-abcdefghij.000", "split": "train", "status": "ok", "source": "x.mp4",
                           **dict.fromkeys(TRAITS, 0.5), "interview": 0.5}])
    keys = {mode: cache_key(table, PreprocessParams(frames=mode)) for mode in ("whole", "face", "both")}
    assert len(set(keys.values())) == 3
    assert cache_key(table, PreprocessParams(frames="face", face_size=112)) != keys["face"]
    with pytest.raises(ValueError, match="frames must be one of"):
        PreprocessParams(frames="faces")


def test_both_keeps_whole_frames_and_face_crops_on_the_face(clips):
    clip = extract_clip_features(clips["face"], PreprocessParams(frames="both", **SMALL), None)
    assert clip.status == "ok" and "no_face" not in clip.flags
    assert clip.frames.shape == (6, 36, 64, 3) and clip.faces.shape == (6, 40, 40, 3) and clip.faces.dtype == np.uint8
    box = clip.info["face"]
    assert box["found"] >= 2 and box["searched"] in (2, 3)  # two agreeing frames end the search
    centre = (box["top"] + box["size"] / 2, box["left"] + box["size"] / 2)
    top, left, side = FACE_AT  # the pan moves the face by at most 2 px a frame, 38 px at the end
    assert top <= centre[0] <= top + side and left <= centre[1] <= left + side + 40
    assert 1.2 * side <= box["size"] <= 2.0 * side  # the detector's box widened by the margin


def test_face_mode_caches_only_the_face_crops_and_flags_a_clip_without_a_face(clips):
    clip = extract_clip_features(clips["face"], PreprocessParams(frames="face", **SMALL), None)
    assert clip.frames.shape == (6, 40, 40, 3) and clip.faces is None and "no_face" not in clip.flags
    empty = extract_clip_features(clips["noise"], PreprocessParams(frames="face", **SMALL), None)
    assert empty.status == "ok" and "no_face" in empty.flags and empty.info["face"]["found"] == 0
    whole = extract_clip_features(clips["face"], PreprocessParams(**SMALL), None)
    assert whole.faces is None and "face" not in whole.info and whole.frames.shape == (6, 36, 64, 3)


def test_a_both_cache_feeds_a_three_input_model_and_predict_uses_it(clips, tmp_path):
    from fi_data.pipeline import make_dataset
    from search.config import SearchConfig
    from search.hypermodel import PersonalityHyperModel
    from search.predict import predict_clips
    from search.train import retrain_and_evaluate

    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train"] * 4 + ["validation"] * 2 + ["test"] * 2):
        source = clips["face"] if i % 2 == 0 else clips["noise"]
        rows.append({"clip_id": f"-faceTest{i:02d}.00{i % 6}", "split": split, "status": "ok", "source": str(source),
                     **dict(zip(TRAITS, rng.uniform(0.3, 0.7, len(TRAITS)))), "interview": 0.5})
    params = PreprocessParams(frames="both", n_frames=2, **SMALL)
    cache = open_cache(build_cache(pd.DataFrame(rows), tmp_path / "cache", params, open_clip=open_path, workers=1,
                                   progress=False))
    assert cache.face_shape == (2, 40, 40, 3) and cache.frame_shape == (2, 36, 64, 3)
    assert cache.manifest["problems"]["flagged"]["no_face"]["count"] == 4
    train = cache.split("train")
    assert train.faces.shape == (4, 2, 40, 40, 3)
    (audio, video, face), y = next(iter(make_dataset(train, training=True, batch_size=4, crop_size=32)))
    assert video.shape == (4, 2, 32, 32, 3) and face.shape == (4, 2, 32, 32, 3) and y.shape == (4, 5)
    assert float(np.max(face)) <= 1.0

    import keras_tuner as kt
    hypermodel = PersonalityHyperModel(cache, batch_sizes=(4,), crop_size=32)
    from search.hypermodel import FACE_HYPERPARAMETERS, HYPERPARAMETERS
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert [t.name.split(":")[0] for t in model.inputs] == ["audio", "video", "face"]
    assert hypermodel.appearance_from == "face" and "face_appearance" in [layer.name for layer in model.layers]
    assert {p.name for p in hp.space} == set(HYPERPARAMETERS + FACE_HYPERPARAMETERS)

    config = SearchConfig(max_epochs=1, batch_sizes=(4,), crop_size=32, early_stopping_patience=0, verbose=0)
    hps = {"audio_branch": "conv2d", "backbone": "vgg", "vgg_depth": 1, "vgg_width": 8, "face_vgg_depth": 1,
           "face_vgg_width": 8, "fusion_units": 16, "batch_size": 4}
    run_dir = tmp_path / "run"
    retrain_and_evaluate(cache, run_dir, hps, config)
    record = json.loads((run_dir / "preprocessing.json").read_text())
    assert record["inputs"]["faces"]["shape"] == [2, 40, 40, 3] and record["cache_params"]["frames"] == "both"
    table = predict_clips(run_dir, [clips["face"]])
    predictions = pd.read_csv(run_dir / "predictions.csv")
    cached = predictions[predictions["clip_id"] == rows[6]["clip_id"]].iloc[0]  # a test clip made from it
    np.testing.assert_allclose(table.iloc[0][list(TRAITS)].to_numpy(dtype=float),
                               cached[[f"pred_{t}" for t in TRAITS]].to_numpy(dtype=float), atol=1e-4)


def test_a_crop_larger_than_the_face_crops_is_refused_with_the_flag_values():
    import run_search
    from fi_data.errors import UserError

    args = run_search.parse_args(["run", "--frames", "both", "--face-size", "100"])
    with pytest.raises(UserError, match=r"--crop-size 128: larger than the cached face crops \(100x100 pixels, "
                                         r"--face-size 100\); use at most 100 or a larger --face-size"):
        run_search.search_config(args)
    args = run_search.parse_args(["run", "--frames", "face", "--face-size", "100", "--crop-size", "96"])
    assert run_search.preprocess_params(args).frame_shape == (6, 100, 100, 3)
    assert run_search.search_config(args).crop_size == 96
