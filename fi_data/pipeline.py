"""The tf.data input pipeline: batches of ``((audio, video), y)`` from a cached split.

This is the assignment's generator ("a tuple ([x0, x1], y)"), built as a ``tf.data`` pipeline
over the memory-mapped feature cache of :mod:`fi_data.cache_format`. Each batch is::

    audio  float32 (b, *audio_shape)       e.g. (b, 24, M, 1) MFCCs, or (b, 24, 1) mean MFCCs
    video  float32 (b, F, crop, crop, 3)   RGB scaled to [0, 1] here (not inside the model)
    y      float32 (b, 5)                  targets in ``TRAITS`` order

Training batches (``training=True``) are reshuffled every epoch and augmented: a random
``crop x crop`` window, a horizontal flip, brightness and contrast jitter and, optionally,
SpecAugment-style time/frequency masking of the audio. Validation and test batches
(``training=False``) take the exact center crop, in row order, with no augmentation;
:func:`prepare_clip` prepares a single new clip the same way for prediction.

All randomness is stateless and keyed by ``seed``: two datasets built with the same seed
yield the same batches epoch after epoch, while each epoch gets a new order and new crops.

Memory stays bounded whatever the split size: only row indices are shuffled, and each batch
reads just its own rows from the cache files (see :func:`make_dataset` for the order of steps).
"""

from __future__ import annotations

import dataclasses
import mmap
import os

import numpy as np
import tensorflow as tf

from fi_data.cache_format import SplitArrays
from fi_data.params import CROP_SIZE
from fi_data.traits import TRAITS

AUTOTUNE = tf.data.AUTOTUNE

# Columns of the per-batch uniform draw in ``train_transform`` (one draw, one seed per batch).
_U_CROP_Y, _U_CROP_X, _U_FLIP, _U_BRIGHT, _U_CONTRAST, _U_FREQ_W, _U_FREQ_0, _U_TIME_W, _U_TIME_0 = range(9)
_N_UNIFORMS = 9
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2 luma, as PIL's convert("L")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """How training batches are augmented. Every draw is per clip, shared by its F frames.

    Attributes:
        random_crop: take a uniformly random ``crop x crop`` window (else the center crop).
        flip: mirror the clip left-right with probability 0.5.
        brightness: add ``delta ~ U[-brightness, brightness]`` to the [0, 1]-scaled pixels
            (``tf.image.adjust_brightness``); 0 turns it off.
        contrast: scale each frame's deviation from its mean gray level by
            ``factor ~ U[1 - contrast, 1 + contrast]`` (PIL's ``ImageEnhance.Contrast`` and
            torchvision's ``adjust_contrast``, with the factor range of
            ``keras.layers.RandomContrast``); 0 turns it off.
        freq_mask_max: audio masking only: width of the frequency (coefficient) band set to
            0, drawn uniformly from ``0..freq_mask_max`` rows (SpecAugment's ``F``,
            Park et al. 2019, arXiv:1904.08779).
        time_mask_fraction: audio masking only: the time band's width is drawn uniformly from
            ``0..floor(time_mask_fraction * M)`` frames (SpecAugment's ``T``, relative to M).
    """

    random_crop: bool = True
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    freq_mask_max: int = 4
    time_mask_fraction: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.brightness <= 1.0:
            raise ValueError(f"AugmentConfig.brightness must be in [0, 1], got {self.brightness}")
        if not 0.0 <= self.contrast < 1.0:
            raise ValueError(f"AugmentConfig.contrast must be in [0, 1), got {self.contrast}")
        if self.freq_mask_max < 0 or not 0.0 <= self.time_mask_fraction <= 1.0:
            raise ValueError("AugmentConfig: freq_mask_max must be >= 0 and time_mask_fraction in [0, 1], "
                             f"got {self.freq_mask_max} and {self.time_mask_fraction}")


CROP_ONLY = AugmentConfig(flip=False, brightness=0.0, contrast=0.0)
"""What ``augment=False`` means for training: the assignment's random crop and nothing else."""


# ---------------------------------------------------------------------------------------------
# Reading rows from the cache
# ---------------------------------------------------------------------------------------------

def _file_location(arr: np.ndarray):
    """``(path, byte offset of row 0)`` if ``arr`` is a whole C-ordered memmap of a file, else None.

    Slices of a memmap keep the parent's ``filename``/``offset`` attributes, so only a memmap
    whose buffer is the mmap itself (as ``numpy.load(mmap_mode="r")`` returns) qualifies.
    """
    if (isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and arr.filename
            and arr.flags.c_contiguous):
        return arr.filename, int(arr.offset)
    return None


def read_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Copy ``arr[rows]`` into a new array, reading a memory-mapped file with ``os.preadv``.

    Fancy-indexing a memmap maps the file's pages into this process, and they stay counted in
    its resident memory until the kernel needs them back: one epoch over a 6000-clip cache
    would "use" all 3.7 GB of frames. Reading with ``preadv`` goes through the page cache
    instead, so the process holds only the rows it asked for. Runs of consecutive rows are
    read with one call. Arrays that are not a file's whole memmap are simply indexed.

    Args:
        arr: array ``(n, ...)``, usually from ``numpy.load(path, mmap_mode="r")``.
        rows: 1-D integer row numbers in ``[0, n)``; sorted rows read fastest.

    Returns:
        A new C-contiguous array ``(len(rows), *arr.shape[1:])`` of ``arr.dtype``.

    Raises:
        IndexError: for a row outside ``[0, n)``.
        OSError: if the file is shorter than its header says (e.g. truncated), naming it.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    n = arr.shape[0]
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"row numbers must be in [0, {n}), got {rows.min()}..{rows.max()}")
    location = _file_location(arr)
    if location is None:
        return np.ascontiguousarray(arr[rows])
    path, offset = location
    out = np.empty((rows.size, *arr.shape[1:]), dtype=arr.dtype)
    row_bytes = out[0].nbytes if rows.size else 0
    flat = out.reshape(rows.size, -1).view(np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while start < rows.size:  # one preadv per run of consecutive rows
            stop = start + 1
            while stop < rows.size and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            want = (stop - start) * row_bytes
            got = os.preadv(fd, [flat[start:stop]], offset + int(rows[start]) * row_bytes)
            if got != want:
                raise OSError(f"{path}: read {got} bytes of rows {rows[start]}..{rows[stop - 1]}, "
                              f"expected {want}; the cache file is truncated, rebuild the cache")
            start = stop
    finally:
        os.close(fd)
    return out


# ---------------------------------------------------------------------------------------------
# Map functions: pure TensorFlow on whole batches, the same eagerly and inside Dataset.map
# ---------------------------------------------------------------------------------------------

def _frame_size(frames: tf.Tensor, crop_size: int) -> tuple:
    """Static ``(H, W)`` of frames ``(..., H, W, C)``; ValueError if smaller than the crop."""
    height, width = frames.shape[-3], frames.shape[-2]
    if height < crop_size or width < crop_size:
        raise ValueError(f"frames of {height}x{width} pixels are smaller than the {crop_size}x{crop_size} crop")
    return height, width


def center_crop_frames(frames, crop_size: int = CROP_SIZE) -> tf.Tensor:
    """The exact center ``crop_size x crop_size`` window of every frame.

    The window starts at row ``(H - crop_size) // 2`` and column ``(W - crop_size) // 2``
    (the convention of ``keras.layers.CenterCrop`` and ``tf.image.resize_with_crop_or_pad``).

    Args:
        frames: uint8 (or any dtype) array/tensor ``(..., H, W, C)``, e.g. one clip
            ``(F, H, W, 3)`` or a batch ``(b, F, H, W, 3)``.
        crop_size: side of the square window, in pixels; ``<= min(H, W)``.

    Returns:
        A tensor ``(..., crop_size, crop_size, C)`` of the input's dtype (not scaled).

    Raises:
        ValueError: if the frames are smaller than the crop.
    """
    frames = tf.convert_to_tensor(frames)
    height, width = _frame_size(frames, crop_size)
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    return frames[..., top:top + crop_size, left:left + crop_size, :]


def scale_frames(frames) -> tf.Tensor:
    """uint8 pixels ``0..255`` -> float32 in ``[0, 1]`` (divided by 255), same shape."""
    return tf.cast(frames, tf.float32) / 255.0


def eval_transform(audio, frames, crop_size: int = CROP_SIZE):
    """Validation/test transform of a batch: center crop, scale; audio unchanged.

    Args:
        audio: float32 ``(b, *audio_shape)``.
        frames: uint8 ``(b, F, H, W, 3)``.
        crop_size: side of the square crop in pixels.

    Returns:
        ``(audio, video)``: audio as given (float32), video float32 ``(b, F, crop, crop, 3)``
        in ``[0, 1]``.
    """
    return tf.convert_to_tensor(audio, tf.float32), scale_frames(center_crop_frames(frames, crop_size))


def _band_mask(length: int, u_width, u_start, max_width: int) -> tf.Tensor:
    """bool ``(b, length)``: True on one band per row, width ``U{0..max_width}``, random start."""
    max_width = min(int(max_width), length)
    width = tf.floor(u_width * (max_width + 1))
    start = tf.floor(u_start * (length - width + 1))
    pos = tf.range(length, dtype=tf.float32)[None, :]
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])


def mask_audio(audio, u: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """SpecAugment-style masking (Park et al. 2019): one frequency and one time band set to 0.

    0 is the mean of sample-wise standardized MFCCs, so a masked band carries no
    information and shifts nothing.

    Args:
        audio: float32 ``(b, N, M, C)``: N coefficients (frequency), M frames (time).
        u: float32 ``(b, 9)`` uniforms in ``[0, 1)`` (as drawn by :func:`train_transform`).
        config: gives ``freq_mask_max`` and ``time_mask_fraction``.

    Returns:
        float32 ``(b, N, M, C)``.
    """
    audio = tf.convert_to_tensor(audio, tf.float32)
    n_freq, n_time = audio.shape[1], audio.shape[2]
    freq = _band_mask(n_freq, u[:, _U_FREQ_W], u[:, _U_FREQ_0], config.freq_mask_max)
    time = _band_mask(n_time, u[:, _U_TIME_W], u[:, _U_TIME_0], int(config.time_mask_fraction * n_time))
    masked = freq[:, :, None, None] | time[:, None, :, None]
    return tf.where(masked, tf.zeros_like(audio), audio)


def _crop_and_flip(frames, top, left, flip, crop_size: int) -> tf.Tensor:
    """uint8 ``(b, F, H, W, C)`` -> ``(b, F, crop, crop, C)``: clip i's window at
    ``(top[i], left[i])`` for all its frames, mirrored left-right where ``flip[i]``."""
    n_frames, channels = frames.shape[1], frames.shape[4]

    def one_clip(args):
        clip, clip_top, clip_left, clip_flip = args
        window = tf.slice(clip, tf.stack([0, clip_top, clip_left, 0]), [n_frames, crop_size, crop_size, channels])
        return tf.cond(clip_flip, lambda: tf.reverse(window, axis=[2]), lambda: window)

    # One contiguous slice per clip: several times faster than a vectorized tf.gather of
    # 3-byte pixels, and a whole window per step keeps map_fn's per-step cost small.
    return tf.map_fn(one_clip, (frames, top, left, flip),
                     fn_output_signature=tf.TensorSpec((n_frames, crop_size, crop_size, channels), frames.dtype))


def _brightness_contrast(video_uint8, delta, factor) -> tf.Tensor:
    """Scale to [0, 1], add ``delta`` and scale contrast by ``factor`` (per clip), clip to [0, 1].

    Contrast blends each frame with its mean gray level ``g`` (ITU-R 601-2 luma weights, as
    PIL's ``ImageEnhance.Contrast`` and torchvision's ``adjust_contrast``). Brightness then
    contrast is ``((x + d) - (g + d)) * f + (g + d) = x * f + g * (1 - f) + d``: one
    multiply-add per pixel with one scalar pair per frame.
    """
    shape = tf.shape(video_uint8)
    batch, n_frames = shape[0], shape[1]
    pixels = tf.reshape(tf.cast(video_uint8, tf.float32) / 255.0, (batch * n_frames, -1, 3))
    gray = tf.tensordot(tf.reduce_mean(pixels, axis=1), _LUMA, axes=1)            # (b * F,)
    factor = tf.repeat(factor, n_frames)
    offset = gray * (1.0 - factor) + tf.repeat(delta, n_frames)
    flat = tf.reshape(pixels, (batch * n_frames, -1))  # scalar per row: fast broadcasting
    flat = tf.clip_by_value(flat * factor[:, None] + offset[:, None], 0.0, 1.0)
    return tf.reshape(flat, shape)


def train_transform(audio, frames, seed, *, crop_size: int = CROP_SIZE, config: AugmentConfig = AugmentConfig(),
                    audio_masking: bool = False):
    """Training transform of a batch; a pure function of its inputs and ``seed``.

    Order: crop and flip on uint8 (fewest bytes), then scale to [0, 1] with brightness and
    contrast in the same pass, clipped to [0, 1]. Each clip draws one window, one flip,
    one brightness delta and one contrast factor for all of its F frames: the frames are
    one continuous shot of one speaker, so a window moving from frame to frame would add a
    camera shake that temporal layers (LSTM/GRU over frames) could mistake for motion, and
    the clip-level label describes the whole clip.

    Args:
        audio: float32 ``(b, *audio_shape)``; masked only if ``audio_masking`` (rank-3 samples).
        frames: uint8 ``(b, F, H, W, 3)`` with static F, H and W.
        seed: int ``(2,)`` tensor, the stateless seed of this batch (same seed, same output).
        crop_size: side of the square crop in pixels, ``<= min(H, W)``.
        config: the augmentation settings.
        audio_masking: apply :func:`mask_audio` (needs audio ``(b, N, M, C)``).

    Returns:
        ``(audio, video)``: float32 ``(b, *audio_shape)`` and float32
        ``(b, F, crop, crop, 3)`` in ``[0, 1]``.

    Raises:
        ValueError: if the frames are smaller than the crop.
    """
    frames = tf.convert_to_tensor(frames)
    height, width = _frame_size(frames, crop_size)
    batch = tf.shape(frames)[0]
    u = tf.random.stateless_uniform((batch, _N_UNIFORMS), seed=seed, dtype=tf.float32)

    if config.random_crop:
        top = tf.cast(tf.floor(u[:, _U_CROP_Y] * (height - crop_size + 1)), tf.int32)
        left = tf.cast(tf.floor(u[:, _U_CROP_X] * (width - crop_size + 1)), tf.int32)
    else:
        top = tf.fill([batch], (height - crop_size) // 2)
        left = tf.fill([batch], (width - crop_size) // 2)
    flip = u[:, _U_FLIP] < 0.5 if config.flip else tf.zeros([batch], tf.bool)
    video = _crop_and_flip(frames, top, left, flip, crop_size)
    if config.brightness or config.contrast:
        delta = (2.0 * u[:, _U_BRIGHT] - 1.0) * config.brightness          # U[-b, b]
        factor = 1.0 + (2.0 * u[:, _U_CONTRAST] - 1.0) * config.contrast   # U[1-c, 1+c]
        video = _brightness_contrast(video, delta, factor)
    else:
        video = scale_frames(video)

    audio = tf.convert_to_tensor(audio, tf.float32)
    if audio_masking:
        audio = mask_audio(audio, u, config)
    return audio, video


def prepare_clip(audio: np.ndarray, frames: np.ndarray, crop_size: int = CROP_SIZE):
    """One clip's cached arrays -> a model input batch of one, exactly as validation/test.

    Args:
        audio: float32 ``audio_shape``, e.g. ``(24, M, 1)``, padded like the cache.
        frames: uint8 ``(F, H, W, 3)``.
        crop_size: side of the center crop in pixels.

    Returns:
        ``(audio, video)`` NumPy float32 arrays ``(1, *audio_shape)`` and
        ``(1, F, crop, crop, 3)`` in ``[0, 1]``, for ``model.predict((audio, video))``.
    """
    audio, video = eval_transform(np.asarray(audio, np.float32)[None], np.asarray(frames)[None], crop_size)
    return audio.numpy(), video.numpy()


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------

def _check_split(split: SplitArrays, batch_size: int, crop_size: int, audio_masking: bool) -> None:
    name = f"split {split.name!r}"
    n = len(split)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if n == 0:
        raise ValueError(f"{name} has no clips; nothing to iterate")
    for label, arr, dtype in (("audio", split.audio, np.float32), ("frames", split.frames, np.uint8),
                              ("targets", split.targets, np.float32)):
        if arr.dtype != dtype or arr.shape[0] != n:
            raise ValueError(f"{name}: {label} is {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} with {n} rows")
    if split.frames.ndim != 5 or split.frames.shape[-1] != 3:
        raise ValueError(f"{name}: frames shape {split.frames.shape}, expected (n, F, H, W, 3)")
    if split.targets.shape != (n, len(TRAITS)):
        raise ValueError(f"{name}: targets shape {split.targets.shape}, expected ({n}, {len(TRAITS)})")
    if split.faces is not None and (split.faces.dtype != np.uint8 or split.faces.shape[:2] != split.frames.shape[:2]
                                    or split.faces.ndim != 5):
        raise ValueError(f"{name}: faces are {split.faces.dtype} {split.faces.shape}, expected uint8 "
                         f"({n}, {split.frames.shape[1]}, S, S, 3)")
    height, width = split.frames.shape[2:4]
    if split.faces is not None:
        height = min(height, split.faces.shape[2])
        width = min(width, split.faces.shape[3])
    if (isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer))
            or not 1 <= crop_size <= min(height, width)):
        raise ValueError(f"{name}: crop_size {crop_size!r} must be an integer in 1..{min(height, width)} "
                         f"for frames of {height}x{width} pixels")
    if audio_masking and split.audio.ndim != 4:
        raise ValueError(f"{name}: audio_masking needs time-frequency audio (N, M, C) per clip, "
                         f"but this cache holds audio of shape {split.audio.shape[1:]}")


def make_dataset(split: SplitArrays, *, training: bool, batch_size: int, seed: int | None = 0,
                 crop_size: int = CROP_SIZE, augment: bool | AugmentConfig = True, audio_masking: bool = False,
                 drop_remainder: bool = False, repeat: bool = False) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``((audio, video), y)`` batches from one cached split
    (``((audio, video, face), y)`` when the split has face crops).

    Args:
        split: the split's arrays (``FeatureCache.split(name)``; memory-mapped is best).
        training: True: reshuffle every epoch and augment; False: row order, center crop.
        batch_size: clips per batch.
        seed: keys the shuffle and the augmentation: the same seed gives the same sequence
            of epochs, each with a new order and new crops. None: not reproducible.
        crop_size: side of the square video crop, in pixels (``<= min(H, W)``, and ``<= S``
            for face crops, which get a crop of the same side, drawn independently).
        augment: training only. True: :class:`AugmentConfig` defaults; False:
            :data:`CROP_ONLY` (the random crop, nothing else); or an ``AugmentConfig``.
        audio_masking: training only: time/frequency masking of the audio (needs audio of
            shape ``(N, M, C)`` per clip; the mean-MFCC ``(N, 1)`` cannot be masked).
        drop_remainder: drop a last batch smaller than ``batch_size``.
        repeat: repeat forever (use ``steps_per_epoch``); each pass is a full reshuffled epoch.

    Returns:
        A dataset of ``((audio, video), y)``: audio float32 ``(b, *audio_shape)``, video
        float32 ``(b, F, crop_size, crop_size, 3)`` in ``[0, 1]``, y float32 ``(b, 5)`` in
        ``TRAITS`` order; with face crops ``((audio, video, face), y)``, face like video.
        Within a batch, clips come in ascending row order.

    Raises:
        ValueError: for an empty split, arrays of the wrong dtype or shape, a bad
            ``batch_size`` or ``crop_size``, or ``audio_masking`` with audio that has no
            time axis (each naming the split).
    """
    _check_split(split, batch_size, crop_size, audio_masking)
    if not isinstance(augment, AugmentConfig):
        augment = AugmentConfig() if augment else CROP_ONLY
    n = len(split)
    audio_shape, frame_shape = split.audio.shape[1:], split.frames.shape[1:]
    faces = split.faces
    face_shape = None if faces is None else faces.shape[1:]
    # Two independent seeds, so the order and the augmentation draws are not correlated.
    shuffle_seed, augment_seed = (None, None) if seed is None else (
        int(s) for s in np.random.SeedSequence(seed).generate_state(2))

    def load(rows):
        # Sorted rows read the files front to back; the batch's order does not matter to SGD,
        # and all three arrays use the same sorted rows, so clips keep their labels.
        rows = np.sort(rows)
        arrays = [read_rows(split.audio, rows), read_rows(split.frames, rows), read_rows(split.targets, rows)]
        return arrays if faces is None else [*arrays, read_rows(faces, rows)]

    def load_batch(rows):
        dtypes = [tf.float32, tf.uint8, tf.float32] + ([] if faces is None else [tf.uint8])
        loaded = tf.numpy_function(load, [rows], dtypes, stateful=False, name="read_cache_rows")
        batch = rows.shape[0]  # static with drop_remainder=True
        loaded[0].set_shape((batch, *audio_shape))
        loaded[1].set_shape((batch, *frame_shape))
        loaded[2].set_shape((batch, len(TRAITS)))
        if faces is not None:
            loaded[3].set_shape((batch, *face_shape))
        return loaded

    # Order of steps (it matters):
    # 1. Shuffle row *indices*, not clips: a full-epoch buffer costs n int64s (48 KB for 6000
    #    clips), so the shuffle is perfect, and memory does not grow with the split. Shuffling
    #    loaded clips would hold a buffer of 625 KB clips instead.
    # 2. Repeat after the shuffle, so each pass is one whole epoch in a fresh order.
    # 3. Batch the indices, then read each batch's rows in one call (sorted rows read faster
    #    and move through the files front to back).
    # 4. Pair each batch with a fresh seed *before* the parallel maps: the random draws then
    #    depend only on the seed, not on which thread runs first, so results are reproducible.
    # 5. Crop and flip the uint8 frames before scaling: 4x fewer bytes than float32 and
    #    ~half the pixels of the full frame.
    # 6. Prefetch last, so reading and augmenting overlap the training step.
    rows = tf.data.Dataset.range(n)
    if training:
        rows = rows.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()
    batches = rows.batch(batch_size, drop_remainder=drop_remainder)

    if training:
        # Dataset.random draws new numbers on every pass over the dataset (every epoch).
        seeds = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True).batch(2)
        batches = tf.data.Dataset.zip(batches, seeds)

        def transform(rows, batch_seed):
            audio, frames, targets, *face = load_batch(rows)
            audio, video = train_transform(audio, frames, batch_seed, crop_size=crop_size, config=augment,
                                           audio_masking=audio_masking)
            if not face:
                return (audio, video), targets
            # the face crop draws its own window, flip and jitter (a seed folded from the batch's)
            face_seed = tf.random.experimental.stateless_fold_in(batch_seed, 1)
            _, face_video = train_transform(audio, face[0], face_seed, crop_size=crop_size, config=augment)
            return (audio, video, face_video), targets
    else:
        def transform(rows):
            audio, frames, targets, *face = load_batch(rows)
            audio, video = eval_transform(audio, frames, crop_size)
            if not face:
                return (audio, video), targets
            return (audio, video, eval_transform(audio, face[0], crop_size)[1]), targets

    dataset = batches.map(transform, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.prefetch(AUTOTUNE)


def iterate_batches(split: SplitArrays, **kwargs):
    """The same batches as :func:`make_dataset` (same arguments), as a plain Python generator.

    Yields:
        ``([audio, video], y)`` NumPy arrays, the assignment's ``([x0, x1], y)`` form, with
        the shapes and dtypes of :func:`make_dataset`. Infinite when ``repeat=True``.
    """
    for inputs, targets in make_dataset(split, **kwargs).as_numpy_iterator():
        yield list(inputs), targets
