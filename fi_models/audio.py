"""Audio sub-networks: the assignment's three MFCC branches and a dense branch for mean MFCCs.

Every branch is a named ``keras.Model`` mapping one audio sample to a feature vector of
``dense_units`` (default 128) float32 values:

``"blstm"``       BLSTM(64, return sequences) -> Dropout 0.5 -> BLSTM(64) -> Dense 128 ReLU
``"conv1d"``      3 x [Conv1D (32, 32, 64 filters, kernel 3) -> BatchNorm -> ReLU]
                  -> LSTM 64 -> Dropout 0.5 -> Dense 128 ReLU
``"conv2d"``      2 x [Conv2D 32 (3x3) -> BatchNorm -> ReLU -> MaxPool2D 2x2] -> Flatten
                  -> Dense 128 ReLU
``"mean_dense"``  Flatten -> Dense 64 ReLU -> Dropout 0.5 -> Dense 128 ReLU

The first three are the assignment's audio sub-networks ("Create Model"); they take the
MFCC matrix ``(N, M, 1)`` (N coefficients, e.g. 24, by M spectral frames; a log-mel
spectrogram ``(n_mels, M, 1)`` works the same way). The sequence branches (``blstm``,
``conv1d``) read it as a sequence of M time steps with N features each. ``mean_dense`` is
for the mean-MFCC representation ``(N, 1)`` (the assignment's "Mean MFCCs vectors").

Convolutions use ``padding="same"`` so that short inputs (tests, short clips) keep their
size; the assignment gives no padding. On a CPU the recurrent branches are slow for the full
MFCC length (M is about 1300 frames at 44.1 kHz with librosa's default hop of 512), which is
why ``conv2d`` is the default branch of :func:`fi_models.fusion.build_model`.
"""

from __future__ import annotations

import keras
from keras import layers

AUDIO_BRANCHES = ("blstm", "conv1d", "conv2d", "mean_dense")
"""Names accepted by :func:`build_audio_branch`."""

MFCC_BRANCHES = ("blstm", "conv1d", "conv2d")
"""Branches for the MFCC matrix ``(N, M, 1)``; ``mean_dense`` is for mean MFCCs ``(N, 1)``."""


def compatible_audio_branches(input_shape) -> tuple:
    """The branch kinds that accept audio samples of ``input_shape``.

    Args:
        input_shape: one sample's shape, e.g. ``(24, M, 1)`` (MFCC matrix) or ``(24, 1)``
            (mean MFCCs).

    Returns:
        ``MFCC_BRANCHES`` for ``(N, M, 1)`` with ``N, M >= 4`` (the two 2x2 poolings of
        ``conv2d`` need 4); ``("mean_dense",)`` for ``(N, 1)``; ``()`` for anything else.
    """
    shape = tuple(input_shape)
    if len(shape) == 3 and shape[2] == 1 and shape[0] >= 4 and shape[1] >= 4:
        return MFCC_BRANCHES
    if len(shape) == 2 and shape[1] == 1 and shape[0] >= 1:
        return ("mean_dense",)
    return ()


def build_audio_branch(kind: str, input_shape, *, rnn_units: int = 64,
                       conv1d_filters=(32, 32, 64), conv2d_filters=(32, 32), kernel_size: int = 3,
                       mean_hidden_units: int = 64, dropout: float = 0.5, dense_units: int = 128,
                       name: str = "audio_branch") -> keras.Model:
    """Build one audio sub-network (see the module docstring for the layer stacks).

    Args:
        kind: one of ``AUDIO_BRANCHES``.
        input_shape: one sample's shape: ``(N, M, 1)`` float32 MFCCs for ``blstm``,
            ``conv1d`` and ``conv2d``; ``(N, 1)`` mean MFCCs for ``mean_dense``.
        rnn_units: units of each (B)LSTM direction (``blstm``, ``conv1d``).
        conv1d_filters: filters of the Conv1D layers, one layer per entry (``conv1d``).
        conv2d_filters: filters of the Conv2D blocks, one block per entry (``conv2d``).
        kernel_size: Conv1D kernel length / Conv2D kernel side.
        mean_hidden_units: hidden Dense width of ``mean_dense``.
        dropout: rate of the Dropout layers (``blstm``, ``conv1d``, ``mean_dense``).
        dense_units: width of the final Dense ReLU layer, i.e. of the branch's output.
        name: the model's name; its input is named ``name + "_input"``.
        Arguments that a kind does not use are ignored.

    Returns:
        A ``keras.Model``: input ``(batch, *input_shape)`` float32, output
        ``(batch, dense_units)`` float32 (non-negative, after ReLU).

    Raises:
        ValueError: for an unknown ``kind`` or an ``input_shape`` that ``kind`` cannot take
            (the message lists the kinds that fit, see :func:`compatible_audio_branches`).
    """
    if kind not in AUDIO_BRANCHES:
        raise ValueError(f"unknown audio branch {kind!r}; expected one of {AUDIO_BRANCHES}")
    shape = tuple(int(d) for d in input_shape)
    fitting = compatible_audio_branches(shape)
    if kind not in fitting:
        raise ValueError(f"audio branch {kind!r} cannot take samples of shape {shape}; "
                         f"branches for that shape: {fitting or 'none'} (expected (N, M, 1) MFCCs "
                         "with N, M >= 4, or (N, 1) mean MFCCs)")
    inputs = keras.Input(shape, name=f"{name}_input")
    if kind == "conv2d":
        x = inputs
        for filters in conv2d_filters:
            x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
    elif kind == "mean_dense":
        x = layers.Flatten()(inputs)
        x = layers.Dense(mean_hidden_units, activation="relu")(x)
        x = layers.Dropout(dropout)(x)
    else:
        # (N, M, 1) -> (M, N): M time steps (MFCC frames), N features (coefficients).
        x = layers.Reshape(shape[:2])(inputs)
        x = layers.Permute((2, 1))(x)
        if kind == "blstm":
            x = layers.Bidirectional(layers.LSTM(rnn_units, return_sequences=True))(x)
            x = layers.Dropout(dropout)(x)
            x = layers.Bidirectional(layers.LSTM(rnn_units))(x)
        else:  # conv1d
            for filters in conv1d_filters:
                x = layers.Conv1D(filters, kernel_size, padding="same", use_bias=False)(x)
                x = layers.BatchNormalization()(x)
                x = layers.ReLU()(x)
            x = layers.LSTM(rnn_units)(x)
            x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(dense_units, activation="relu")(x)
    return keras.Model(inputs, outputs, name=name)
