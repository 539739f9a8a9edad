"""Clip-level summary statistics as Keras layers: the fast branches and the ridge baseline's features.

Both the model's statistics branches (``fi_models.audio`` ``"stats"``, ``fi_models.visual``
``"stats"``) and the clip-statistics ridge baseline (``search.baselines``) compute their
features with the first two layers, so the deep model can always represent what the linear
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

:class:`FaceAppearance`, for aligned face crops ``(F, S, S, 3)`` in [0, 1]: the luma (ITU-R
BT.601 weights 0.299, 0.587, 0.114) of the clip's mean crop, averaged over each cell of a
``grid x grid`` partition (default 16 x 16, 256 numbers), divided by their mean over the
clip's cells, minus 1: the face under brighter or dimmer light (a gain) gives the same
numbers, while its contrast (a smile's shadow, an open mouth) is kept. The face
detector puts the eyes, nose and mouth at about the same cells in every crop, so these cells
are a low-resolution picture of the face's shape that a linear model can read (the
appearance-based linear models of aligned faces: eigenfaces, Turk and Pentland 1991; linear
smile detection on registered face pixels, Whitehill et al. 2009). On whole frames the
speaker moves between clips and the same cells mean nothing, so the toolkit uses this layer
on face crops only.

The layers have no weights and are deterministic; zero-padded time frames (clips shorter
than the cache's M) count like any other frame.
"""

from __future__ import annotations

import keras
from keras import layers, ops

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""R, G, B weights of luma, ITU-R BT.601 (as ``cv2.COLOR_RGB2GRAY``)."""

APPEARANCE_GRID = 16
"""Cells per side of :class:`FaceAppearance` (256 numbers). On the demo's face crops (its
mouth cue, test split, 240 training clips), a ridge on these cells reached agreeableness R²
0.78 with 16 x 16 cells, 0.64 with 8 x 8 and 0.77 with 32 x 32 (standardized over the cells
instead of divided by their mean: the same within 0.01; RidgeCV over
``search.baselines.ALPHAS`` on the standardized cells of the 128-pixel centre crops of the
standard demo's ``--frames both`` cache, the ridge path's fit)."""

APPEARANCE_EPS = 1e-4
"""Added to the mean over a clip's cells before dividing (a black crop gives -1s, never NaN)."""


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


class _GridLayer(layers.Layer):
    """Shared by the layers that average cells of a ``grid x grid`` partition of each frame."""

    def __init__(self, grid: int, **kwargs):
        super().__init__(**kwargs)
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.grid = int(grid)

    def _scaled_and_edges(self, frames, what: str) -> tuple:
        """``frames`` as float32 in [0, 1] (uint8 scaled by 1/255) and the cell edges: ``(frames,
        rows, cols)`` with ``rows[k] = round(k * H / grid)`` (``cols`` likewise over W)."""
        scale = 1.0 / 255.0 if frames.dtype == "uint8" else 1.0
        frames = ops.cast(frames, "float32") * scale
        height, width = frames.shape[2], frames.shape[3]
        if height < self.grid or width < self.grid:
            raise ValueError(f"{what} of {height}x{width} pixels are smaller than the {self.grid}x{self.grid} grid")
        rows = [round(k * height / self.grid) for k in range(self.grid + 1)]
        cols = [round(k * width / self.grid) for k in range(self.grid + 1)]
        return frames, rows, cols

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable(package="fi_models")
class FrameStatistics(_GridLayer):
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
        super().__init__(grid, **kwargs)

    def call(self, frames):
        frames, rows, cols = self._scaled_and_edges(frames, "frames")
        n_frames = frames.shape[1]
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


@keras.saving.register_keras_serializable(package="fi_models")
class FaceAppearance(_GridLayer):
    """A low-resolution, brightness-normalized luma picture of a clip's face crops (module docstring).

    Args:
        grid: cells per side (``>= 1``, default :data:`APPEARANCE_GRID`); cell edges at
            ``round(k * S / grid)``.

    Input: ``(batch, F, H, W, 3)`` in [0, 1] (any float dtype; uint8 is scaled by 1/255),
    ``H, W >= grid``.
    Output: float32 ``(batch, grid**2)``, row-major cells: ``c / (mean(c) +``
    :data:`APPEARANCE_EPS` ``) - 1`` with ``c`` the cell means of the luma of the frames' mean
    and ``mean(c)`` over the clip's cells.

    Raises:
        ValueError: ``grid < 1``, or crops smaller than the grid.
    """

    def __init__(self, grid: int = APPEARANCE_GRID, **kwargs):
        super().__init__(grid, **kwargs)

    def call(self, faces):
        faces, rows, cols = self._scaled_and_edges(faces, "face crops")
        luma = ops.tensordot(ops.mean(faces, axis=1), ops.convert_to_tensor(LUMA_WEIGHTS, "float32"), axes=1)
        cells = ops.stack([ops.mean(luma[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]], axis=(1, 2))
                           for i in range(self.grid) for j in range(self.grid)], axis=-1)
        return cells / (ops.mean(cells, axis=-1, keepdims=True) + APPEARANCE_EPS) - 1.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid ** 2)
