"""Clip-level summary statistics as Keras layers: the fast branches and the ridge baseline's features.

Both the model's statistics branches (``fi_models.audio`` ``"stats"``, ``fi_models.visual``
``"stats"``) and the clip-statistics ridge baseline (``search.baselines``) compute their
features with these two layers, so the deep model can always represent what the linear
baseline reads (and more: the branches feed a non-linear fusion head).

:class:`AudioStatistics`, for MFCCs ``(N, M, 1)`` (N coefficients, M time frames), per
coefficient over time: the mean, the SD, and the mean absolute first difference along time
(how fast the coefficient moves: speaking rate, tremor; the clip-level analogue of the
delta features of Furui 1986). ``3 N`` numbers. For mean MFCCs ``(N, 1)`` it passes the N
values through.

:class:`FrameStatistics`, for frames ``(F, H, W, 3)`` scaled to [0, 1], per colour channel:
the mean of each cell of a ``grid x grid`` partition of the frame (default 3 x 3: top band,
central third, sides, ...), averaged over the F frames; the SD over all pixels and frames
(contrast, texture); the SD of the centre cell (the speaker's face and body in a talking-head
shot); and the mean absolute difference between consecutive frames (motion). ``3 (grid² + 3)``
numbers (36 for the 3 x 3 grid).

Both layers have no weights and are deterministic; zero-padded time frames (clips shorter
than the cache's M) count like any other frame.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="fi_models")
class AudioStatistics(layers.Layer):
    """Per-coefficient mean, SD and mean |first difference| over time of an MFCC matrix.

    Input: float32 ``(batch, N, M, 1)`` (or ``(batch, N, M)``), or ``(batch, N, 1)`` mean MFCCs.
    Output: float32 ``(batch, 3 N)`` (``[means, SDs, mean |delta|]``), or ``(batch, N)`` for
    mean MFCCs. SDs are population SDs.
    """

    def call(self, audio):
        audio = ops.cast(audio, "float32")
        if len(audio.shape) == 3 and audio.shape[-1] == 1:  # mean MFCCs (N, 1): nothing over time
            return ops.reshape(audio, (-1, audio.shape[1]))
        if len(audio.shape) == 4:
            audio = audio[..., 0]
        mean = ops.mean(audio, axis=2)
        sd = ops.std(audio, axis=2)
        delta = ops.mean(ops.abs(audio[:, :, 1:] - audio[:, :, :-1]), axis=2)
        return ops.concatenate([mean, sd, delta], axis=-1)

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        if len(input_shape) == 3 and input_shape[-1] == 1:
            return (input_shape[0], n)
        return (input_shape[0], 3 * n)


@keras.saving.register_keras_serializable(package="fi_models")
class FrameStatistics(layers.Layer):
    """Per-channel grid means, SDs and motion of a clip's frames (module docstring).

    Args:
        grid: cells per side of the partition (``>= 1``); cell edges at
            ``round(k * H / grid)`` and ``round(k * W / grid)``.

    Input: ``(batch, F, H, W, 3)`` in [0, 1] (any float dtype; uint8 is scaled by 1/255),
    ``H, W >= grid``.
    Output: float32 ``(batch, 3 * (grid**2 + 3))``: the grid means (row-major cells, channels
    inner), the SD over all pixels and frames, the SD of the centre cell, the mean absolute
    difference of consecutive frames (0 for one frame), each per channel.

    Raises:
        ValueError: ``grid < 1``, or frames smaller than the grid.
    """

    def __init__(self, grid: int = 3, **kwargs):
        super().__init__(**kwargs)
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.grid = int(grid)

    def call(self, frames):
        scale = 1.0 / 255.0 if frames.dtype == "uint8" else 1.0
        frames = ops.cast(frames, "float32") * scale
        _, n_frames, height, width, _ = frames.shape
        if height < self.grid or width < self.grid:
            raise ValueError(f"frames of {height}x{width} pixels are smaller than the {self.grid}x{self.grid} grid")
        rows = [round(k * height / self.grid) for k in range(self.grid + 1)]
        cols = [round(k * width / self.grid) for k in range(self.grid + 1)]
        frame_mean = ops.mean(frames, axis=1)  # (b, H, W, 3)
        cells = [ops.mean(frame_mean[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1], :], axis=(1, 2))
                 for i in range(self.grid) for j in range(self.grid)]
        c = self.grid // 2
        centre = frames[:, :, rows[c]:rows[c + 1], cols[c]:cols[c + 1], :]
        parts = [*cells, ops.std(frames, axis=(1, 2, 3)), ops.std(centre, axis=(1, 2, 3))]
        if n_frames > 1:
            parts.append(ops.mean(ops.abs(frames[:, 1:] - frames[:, :-1]), axis=(1, 2, 3)))
        else:
            parts.append(ops.zeros_like(parts[-1]))
        return ops.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 3 * (self.grid ** 2 + 3))

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}
