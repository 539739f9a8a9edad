"""12 and 16 frames per clip work end to end: extraction, the cache, the datasets and the model."""

from __future__ import annotations

import subprocess

import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

from fi_data.cache import PreprocessParams, build_cache, open_path
from fi_data.cache_format import open_cache
from fi_data.pipeline import make_dataset
from fi_data.traits import TRAITS
from fi_data.video import evenly_spaced_indices


def _gray_coded_clip(path, n_video_frames: int = 40, fps: int = 10) -> None:
    """Frame k is a flat gray of level 6k, so each cached frame says which source frame it is."""
    frames = np.repeat(np.arange(n_video_frames, dtype=np.uint8)[:, None, None, None] * 6, 36 * 64 * 3, axis=1)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", "64x36", "-r", str(fps),
                    "-i", "-", "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000:duration=4",
                    "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-c:a", "aac", "-shortest", str(path)],
                   input=frames.reshape(n_video_frames, 36, 64, 3)[..., 0].tobytes(), check=True, capture_output=True)


@pytest.mark.parametrize("n_frames", [12, 16])
def test_n_frames_reach_the_model(n_frames, tmp_path):
    source = tmp_path / "clip.mp4"
    _gray_coded_clip(source)
    rows = [{"clip_id": f"-moreFrame{i:02d}.000", "split": split, "status": "ok", "source": str(source),
             **dict.fromkeys(TRAITS, 0.3 + 0.1 * i), "interview": 0.5}
            for i, split in enumerate(["train", "train", "validation", "test"])]
    params = PreprocessParams(n_frames=n_frames, frame_height=36, frame_width=64)
    cache = open_cache(build_cache(pd.DataFrame(rows), tmp_path / "cache", params, open_clip=open_path, workers=1,
                                   progress=False))
    assert cache.frame_shape == (n_frames, 36, 64, 3)
    frames = np.asarray(cache.split("train").frames[0])
    levels = np.round(frames[:, 18, 32].mean(axis=-1) / 6).astype(int)  # the source frame each one is
    assert list(levels) == list(evenly_spaced_indices(40, n_frames))
    (audio, video), y = next(iter(make_dataset(cache.split("train"), training=True, batch_size=2, crop_size=32)))
    assert video.shape == (2, n_frames, 32, 32, 3)

    from search.hypermodel import PersonalityHyperModel
    hypermodel = PersonalityHyperModel(cache, batch_sizes=(2,), crop_size=32,
                                       fixed={"backbone": "vgg", "vgg_depth": 1, "vgg_width": 8, "temporal": "lstm",
                                              "temporal_units": 8, "audio_branch": "conv1d", "fusion_units": 8})
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
