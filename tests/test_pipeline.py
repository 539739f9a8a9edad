"""Tests of fi_data.pipeline: the tf.data pipeline of ((audio, video), y) batches.

The fixture cache encodes each clip's row number i into its audio (every value = i), its
targets (i + 0.25 * trait index) and its frames (channel 2 = i), and each pixel's position
into the frames (channel 0 = row y, channel 1 = column x). Every batch can then be checked
exactly: which clips it holds, that x and y belong together, and which window was cropped.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fi_data.cache_format import SplitArrays, write_split
from fi_data.pipeline import (CROP_ONLY, AugmentConfig, center_crop_frames, eval_transform, iterate_batches,
                              make_dataset, mask_audio, prepare_clip, read_rows, train_transform)
from fi_data.traits import TRAITS

N, F, H, W, CROP = 21, 3, 20, 30, 8
AUDIO_SHAPE = (24, 10, 1)
TRAIT_OFFSETS = np.arange(len(TRAITS), dtype=np.float32) * 0.25


def _encoded_split(n=N, audio_shape=AUDIO_SHAPE):
    ids = np.arange(n)
    frames = np.zeros((n, F, H, W, 3), np.uint8)
    frames[..., 0] = np.arange(H)[:, None]
    frames[..., 1] = np.arange(W)[None, :]
    frames[..., 2] = ids[:, None, None, None]
    audio = np.broadcast_to(ids.reshape(n, *[1] * len(audio_shape)), (n, *audio_shape)).astype(np.float32)
    targets = (ids[:, None] + TRAIT_OFFSETS[None, :]).astype(np.float32)
    return SplitArrays("train", audio, frames, targets, tuple(f"clip{i:07d}xxx.{i % 6:03d}" for i in ids))


def _on_disk(tmp_path, split):
    """Write the split in the cache format and open it memory-mapped, as FeatureCache does."""
    write_split(tmp_path, split)
    folder = Path(tmp_path) / split.name
    return dataclasses.replace(split, **{name: np.load(folder / f"{name}.npy", mmap_mode="r")
                                         for name in ("audio", "frames", "targets")})


@pytest.fixture
def split(tmp_path):
    return _on_disk(tmp_path, _encoded_split())


def _epoch(dataset):
    return [(a.numpy(), v.numpy(), y.numpy()) for (a, v), y in dataset]


def _clip_ids(audio):
    return audio.reshape(len(audio), -1)[:, 0].astype(int)


def _windows(video):
    """Per clip: (top, left, flipped) read from the position-encoded pixels, checking the crop is
    one contiguous window shared by all frames."""
    pixels = np.rint(video * 255).astype(int)
    out = []
    for clip in pixels:
        assert (clip == clip[0]).all(), "frames of one clip got different windows"
        rows, cols = clip[0, :, 0, 0], clip[0, 0, :, 1]
        assert (clip[0, :, :, 0] == rows[:, None]).all() and (clip[0, :, :, 1] == cols[None, :]).all()
        np.testing.assert_array_equal(rows, rows[0] + np.arange(CROP))
        flipped = cols[0] > cols[-1]
        np.testing.assert_array_equal(cols[::-1] if flipped else cols, min(cols) + np.arange(CROP))
        out.append((int(rows[0]), int(min(cols)), bool(flipped)))
    return out


def test_eval_batches_shapes_dtypes_order_and_ranges(split):
    ds = make_dataset(split, training=False, batch_size=4, crop_size=CROP)
    (a_spec, v_spec), y_spec = ds.element_spec
    assert a_spec.shape.as_list() == [None, *AUDIO_SHAPE] and a_spec.dtype == tf.float32
    assert v_spec.shape.as_list() == [None, F, CROP, CROP, 3] and v_spec.dtype == tf.float32
    assert y_spec.shape.as_list() == [None, 5] and y_spec.dtype == tf.float32
    batches = _epoch(ds)
    assert [len(y) for _, _, y in batches] == [4, 4, 4, 4, 4, 1]
    audio = np.concatenate([a for a, _, _ in batches])
    video = np.concatenate([v for _, v, _ in batches])
    targets = np.concatenate([y for _, _, y in batches])
    np.testing.assert_array_equal(_clip_ids(audio), np.arange(N))  # fixed row order
    np.testing.assert_array_equal(targets, np.arange(N)[:, None] + TRAIT_OFFSETS)
    assert video.dtype == np.float32 and 0.0 <= video.min() and video.max() <= 1.0
    clip_of_pixel = np.broadcast_to(np.arange(N)[:, None, None, None], video.shape[:-1])
    np.testing.assert_array_equal(video[..., 2], (clip_of_pixel / 255.0).astype(np.float32))


def test_center_crop_is_the_exact_center(split):
    (_, video), _ = next(iter(make_dataset(split, training=False, batch_size=N, crop_size=CROP)))
    pixels = np.rint(video.numpy() * 255).astype(int)
    # (20 - 8) // 2 = 6 and (30 - 8) // 2 = 11
    np.testing.assert_array_equal(pixels[..., 0], np.broadcast_to(np.arange(6, 14)[:, None], pixels.shape[:-1]))
    np.testing.assert_array_equal(pixels[..., 1], np.broadcast_to(np.arange(11, 19)[None, :], pixels.shape[:-1]))
    # odd margins round down: a 5x7 image cropped to 2x2 starts at row 1, column 2
    image = np.arange(35, dtype=np.uint8).reshape(5, 7, 1)
    np.testing.assert_array_equal(center_crop_frames(image, 2).numpy()[..., 0], [[9, 10], [16, 17]])
    with pytest.raises(ValueError, match="smaller than the 6x6 crop"):
        center_crop_frames(image, 6)


def test_labels_stay_with_their_clips_after_shuffling(split):
    for config in (CROP_ONLY, AugmentConfig()):
        ds = make_dataset(split, training=True, batch_size=4, crop_size=CROP, augment=config)
        seen = []
        for audio, video, targets in _epoch(ds):
            ids = _clip_ids(audio)
            assert (audio == ids.reshape(-1, 1, 1, 1)).all()
            np.testing.assert_array_equal(targets, ids[:, None] + TRAIT_OFFSETS)
            if config is CROP_ONLY:
                clip_of_pixel = np.broadcast_to(ids[:, None, None, None], video.shape[:-1])
                np.testing.assert_array_equal(np.rint(video[..., 2] * 255), clip_of_pixel)
            assert list(ids) == sorted(ids)  # rows are read in ascending order
            seen.extend(ids)
        assert sorted(seen) == list(range(N)) and seen != list(range(N))  # each clip once, shuffled


def test_random_crops_are_windows_shared_by_the_frames_of_a_clip(split):
    config = AugmentConfig(brightness=0.0, contrast=0.0)  # crop + flip only, pixel values kept
    dataset = make_dataset(split, training=True, batch_size=7, crop_size=CROP, augment=config)
    windows = [w for _, v, _ in _epoch(dataset) for w in _windows(v)]
    assert all(0 <= top <= H - CROP and 0 <= left <= W - CROP for top, left, _ in windows)
    assert len({(top, left) for top, left, _ in windows}) > 5
    assert {flipped for _, _, flipped in windows} == {True, False}


def test_crops_and_order_change_between_epochs_and_repeat_with_the_same_seed(split):
    def run(seed):
        ds = make_dataset(split, training=True, batch_size=4, crop_size=CROP, seed=seed, augment=CROP_ONLY)
        return [_epoch(ds) for _ in range(2)]

    def by_clip(epoch):
        return {i: w for a, v, _ in epoch for i, w in zip(_clip_ids(a), _windows(v))}

    first, again, other = run(0), run(0), run(1)
    for e1, e2 in zip(first, again):
        for b1, b2 in zip(e1, e2, strict=True):
            for x1, x2 in zip(b1, b2):
                np.testing.assert_array_equal(x1, x2)
    assert by_clip(first[0]) != by_clip(first[1])  # new crops in epoch 2 ...
    assert sorted(by_clip(first[0]).values()) != sorted(by_clip(first[1]).values())  # ... not just reassigned
    order = [[list(_clip_ids(a)) for a, _, _ in epoch] for epoch in first]
    assert order[0] != order[1]  # new order in epoch 2
    assert by_clip(first[0]) != by_clip(other[0])


def test_repeat_gives_whole_reshuffled_epochs(split):
    ds = make_dataset(split, training=True, batch_size=3, crop_size=CROP, repeat=True)
    assert ds.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    ids = [list(_clip_ids(a)) for (a, _), _ in ds.take(14).as_numpy_iterator()]
    epoch1, epoch2 = sum(ids[:7], []), sum(ids[7:], [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(N)) and epoch1 != epoch2


def test_a_keras_model_trains_on_the_dataset(split):
    import keras
    audio_in, video_in = keras.Input(AUDIO_SHAPE, name="audio"), keras.Input((F, CROP, CROP, 3), name="video")
    features = keras.layers.Concatenate()([keras.layers.Flatten()(audio_in), keras.layers.Flatten()(video_in)])
    model = keras.Model([audio_in, video_in], keras.layers.Dense(5)(features))
    model.compile(optimizer="sgd", loss="mae")
    history = model.fit(make_dataset(split, training=True, batch_size=8, crop_size=CROP, seed=None),
                        validation_data=make_dataset(split, training=False, batch_size=8, crop_size=CROP),
                        epochs=2, shuffle=False, verbose=0)
    assert len(history.history["val_loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert model.predict(make_dataset(split, training=False, batch_size=8, crop_size=CROP), verbose=0).shape == (N, 5)


def test_drop_remainder_gives_full_static_batches(split):
    ds = make_dataset(split, training=True, batch_size=4, crop_size=CROP, drop_remainder=True)
    assert ds.element_spec[1].shape.as_list() == [4, 5]
    assert [len(y) for _, _, y in _epoch(ds)] == [4] * 5


def test_photometric_jitter_values():
    n = 6
    frames = np.full((n, F, H, W, 3), 100, np.uint8)
    audio = np.zeros((n, *AUDIO_SHAPE), np.float32)
    seed = tf.constant([3, 4], tf.int64)
    kwargs = dict(crop_size=CROP, audio_masking=False)
    none = AugmentConfig(random_crop=False, flip=False, brightness=0.0, contrast=0.0)
    _, plain = train_transform(audio, frames, seed, config=none, **kwargs)
    np.testing.assert_array_equal(plain.numpy(), eval_transform(audio, frames, CROP)[1].numpy())
    # contrast scales deviations from the frame's mean: a flat frame stays as it is
    _, contrast = train_transform(audio, frames, seed, config=dataclasses.replace(none, contrast=0.5), **kwargs)
    np.testing.assert_allclose(contrast.numpy(), 100 / 255, atol=1e-6)
    # brightness adds one delta in [-0.2, 0.2] per clip, the same on all its frames and pixels
    _, bright = train_transform(audio, frames, seed, config=dataclasses.replace(none, brightness=0.2), **kwargs)
    delta = bright.numpy().reshape(n, -1) - 100 / 255
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1], delta.shape), atol=1e-6)
    assert (np.abs(delta) <= 0.2 + 1e-6).all() and np.ptp(delta[:, 0]) > 0.01
    # contrast around a two-valued frame (mean 0.5): 0.5 +- 0.5 * factor, clipped to [0, 1]
    frames2 = np.zeros((1, 1, 2, 2, 3), np.uint8)
    frames2[:, :, 0] = 255
    _, out = train_transform(np.zeros((1, 2), np.float32), frames2, seed, crop_size=2,
                             config=dataclasses.replace(none, contrast=0.5))
    factor = 1 + (2 * tf.random.stateless_uniform((1, 9), seed=seed).numpy()[0, 4] - 1) * 0.5
    expected = np.clip([0.5 + 0.5 * factor, 0.5 - 0.5 * factor], 0, 1)
    np.testing.assert_allclose(out.numpy()[0, 0, :, 0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(out.numpy()[0, 0, :, 1, 2], expected, atol=1e-6)


def test_audio_masking_bands():
    audio = np.ones((2, 24, 30, 1), np.float32)
    u = np.zeros((2, 9), np.float32)  # columns 5..8: frequency width, start; time width, start
    u[0, 5:9] = [0.5, 0.5, 0.99, 0.0]  # freq width floor(0.5*5)=2 at floor(0.5*23)=11; time width 3 at 0
    u[1, 5:9] = [0.0, 0.7, 0.0, 0.7]  # both widths 0: nothing masked
    out = mask_audio(audio, tf.constant(u), AugmentConfig(freq_mask_max=4, time_mask_fraction=0.1)).numpy()
    expected = np.ones_like(audio)
    expected[0, 11:13] = 0
    expected[0, :, 0:3] = 0
    np.testing.assert_array_equal(out, expected)


def test_audio_masking_in_training_batches(split):
    config = AugmentConfig(freq_mask_max=4, time_mask_fraction=0.3)  # time bands of 0..3 frames
    masked = 0
    for audio, _, targets in _epoch(make_dataset(split, training=True, batch_size=7, crop_size=CROP,
                                                 audio_masking=True, augment=config)):
        for clip, i in zip(audio[..., 0], targets[:, 0].astype(int)):
            if i == 0:
                continue  # clip 0's audio is all zeros: nothing to see
            zero_rows = np.flatnonzero((clip == 0).all(axis=1))
            zero_cols = np.flatnonzero((clip == 0).all(axis=0))
            expected = np.full(clip.shape, float(i), np.float32)
            expected[zero_rows] = 0
            expected[:, zero_cols] = 0
            np.testing.assert_array_equal(clip, expected)  # only whole bands are zeroed
            assert len(zero_rows) <= 4 and len(zero_cols) <= 3
            for band in (zero_rows, zero_cols):  # each band is contiguous
                np.testing.assert_array_equal(band, band[:1].sum() + np.arange(len(band)))
            masked += len(zero_rows) + len(zero_cols) > 0
    assert masked > N // 2


def test_mean_mfcc_audio(tmp_path):
    split = _on_disk(tmp_path, _encoded_split(audio_shape=(24, 1)))
    ds = make_dataset(split, training=True, batch_size=5, crop_size=CROP)
    assert ds.element_spec[0][0].shape.as_list() == [None, 24, 1]
    for audio, _, targets in _epoch(ds):
        np.testing.assert_array_equal(audio[:, :, 0], np.broadcast_to(targets[:, :1], (len(audio), 24)))
    with pytest.raises(ValueError, match="audio_masking needs time-frequency audio"):
        make_dataset(split, training=True, batch_size=5, crop_size=CROP, audio_masking=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(batch_size=2.5), "batch_size must be a positive integer"),
    (dict(crop_size=21), r"crop_size 21 must be an integer in 1..20 for frames of 20x30"),
])
def test_bad_arguments_are_named(split, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_dataset(split, **{"training": True, "batch_size": 4, "crop_size": CROP, **kwargs})


def test_bad_splits_are_named():
    good = _encoded_split()
    empty = SplitArrays("validation", good.audio[:0], good.frames[:0], good.targets[:0], ())
    with pytest.raises(ValueError, match="split 'validation' has no clips"):
        make_dataset(empty, training=False, batch_size=4, crop_size=CROP)
    wrong = dataclasses.replace(good, frames=good.frames.astype(np.float32))
    with pytest.raises(ValueError, match="split 'train': frames is float32 .* expected uint8"):
        make_dataset(wrong, training=False, batch_size=4, crop_size=CROP)


def test_map_functions_give_the_same_result_eagerly_and_in_dataset_map():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(5, 24, 30, 1)).astype(np.float32)
    frames = rng.integers(0, 256, size=(5, F, H, W, 3), dtype=np.uint8)
    seed = tf.constant([7, 11], tf.int64)
    u = tf.random.stateless_uniform((5, 9), seed=seed)
    functions = {
        "train": lambda a, f: train_transform(a, f, seed, crop_size=CROP, audio_masking=True),
        "eval": lambda a, f: eval_transform(a, f, CROP),
        "center_crop": lambda a, f: (a, center_crop_frames(f, CROP)),
        "mask_audio": lambda a, f: (mask_audio(a, u, AugmentConfig()), f),
    }
    for name, fn in functions.items():
        eager = fn(tf.constant(audio), tf.constant(frames))
        mapped = next(iter(tf.data.Dataset.from_tensors((audio, frames)).map(fn)))
        for x, y in zip(eager, mapped, strict=True):
            np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=name)
    assert not np.array_equal(functions["train"](audio, frames)[0].numpy(), audio)  # masking did something


def test_iterate_batches_is_the_same_batches_as_numpy(split):
    kwargs = dict(training=True, batch_size=4, crop_size=CROP, seed=5)
    from_generator = list(iterate_batches(split, **kwargs))
    from_dataset = _epoch(make_dataset(split, **kwargs))
    assert len(from_generator) == len(from_dataset) == 6
    for (xs, y), (a, v, y2) in zip(from_generator, from_dataset):
        assert isinstance(xs, list) and isinstance(xs[0], np.ndarray) and xs[1].dtype == np.float32
        for got, want in zip((xs[0], xs[1], y), (a, v, y2)):
            np.testing.assert_array_equal(got, want)


def test_prepare_clip_matches_the_validation_batches(split):
    (audio, video), _ = next(iter(make_dataset(split, training=False, batch_size=N, crop_size=CROP)))
    a, v = prepare_clip(split.audio[13], split.frames[13], crop_size=CROP)
    assert a.shape == (1, *AUDIO_SHAPE) and v.shape == (1, F, CROP, CROP, 3)
    np.testing.assert_array_equal(a[0], audio.numpy()[13])
    np.testing.assert_array_equal(v[0], video.numpy()[13])


def test_read_rows_from_files_views_and_arrays(split, tmp_path):
    rows = np.array([0, 1, 2, 5, 7, 8, 20])
    for arr in (split.frames, split.audio, split.targets):
        expected = np.asarray(arr)[rows]
        for source in (arr, arr[:], np.asarray(arr).copy()):  # file, memmap view, in memory
            np.testing.assert_array_equal(read_rows(source, rows), expected)
    with pytest.raises(IndexError, match=r"row numbers must be in \[0, 21\)"):
        read_rows(split.targets, [3, 21])
    path = tmp_path / "train" / "frames.npy"
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(OSError, match="frames.npy: read .* the cache file is truncated"):
        read_rows(split.frames, [19, 20])


def _mapped_kib(path):
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, current = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            current = fields[-1] if len(fields) >= 6 else None
        elif fields[0] == "Rss:" and current == str(path):
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_an_epoch_does_not_map_the_frames_file_into_memory(tmp_path):
    split = _on_disk(tmp_path, _encoded_split(n=64))
    path = Path(split.frames.filename)
    _epoch(make_dataset(split, training=True, batch_size=8, crop_size=CROP))
    assert _mapped_kib(path) == 0
    np.asarray(split.frames[np.arange(64)])  # what fancy indexing of the memmap would do
    assert _mapped_kib(path) >= 64 * split.frames[0].nbytes // 1024 - 4
