"""Visual sub-network: a frame encoder applied to every frame, then aggregation over time.

Input: a clip's frames ``(F, H, W, 3)`` float32 RGB scaled to ``[0, 1]`` (what
``fi_data.pipeline`` yields after cropping, e.g. ``(6, 128, 128, 3)``).

Frame encoders (``BACKBONES``), applied frame-wise with ``TimeDistributed``:

``"vgg"``       ``depth`` blocks of Conv2D 3x3 (``width * 2**i`` filters in block ``i``,
                at most 512) -> BatchNorm -> ReLU -> MaxPool2D 2x2, then global average
                pooling: one ``width * 2**(depth-1)``-vector per frame (128 for the defaults).
                Global pooling instead of VGG's Flatten + Dense keeps the parameter count
                independent of the frame size.
``"resnet50"``  ``keras.applications.ResNet50`` without its top, global average pooling:
                a 2048-vector per frame. ``weights=None`` (default) starts from random
                weights; ``weights="imagenet"`` loads the ImageNet weights, which Keras
                DOWNLOADS on first use (about 95 MB into ``~/.keras/models/``), so it needs
                network access once; an ImageNet preprocessing layer (Caffe style: BGR,
                0-255, mean subtracted) is then put in front. ResNet50 needs frames of at
                least 32x32.

Temporal aggregation (``TEMPORAL_CHOICES``): ``"max"`` = max over frames
(``GlobalMaxPooling1D``, the assignment's default), or an ``"lstm"`` / ``"gru"`` with
``temporal_units`` units reading the F frame vectors in order.
"""

from __future__ import annotations

import os

import keras
from keras import layers, ops

BACKBONES = ("vgg", "resnet50")
"""Frame encoders accepted by :func:`build_visual_branch`."""

TEMPORAL_CHOICES = ("max", "lstm", "gru")
"""Aggregations over the frame axis accepted by :func:`build_visual_branch`."""

RESNET_MIN_SIZE = 32
"""Smallest frame side ``keras.applications.ResNet50(include_top=False)`` accepts."""

IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""Per-channel ImageNet means (BGR, 0-255) used by ``keras.applications.resnet50.preprocess_input``."""


@keras.saving.register_keras_serializable(package="fi_models")
class ImagenetCaffePreprocess(layers.Layer):
    """Map RGB frames in ``[0, 1]`` to the input the ImageNet ResNet50 weights expect.

    Same result as ``keras.applications.resnet50.preprocess_input(255 * x)`` ("caffe"
    mode): scale to 0-255, reorder RGB to BGR, subtract ``IMAGENET_CAFFE_MEAN_BGR``.
    Input and output: float32 ``(..., 3)``. No weights; a layer (not a Lambda) so that
    ``.keras`` files reload in safe mode.
    """

    def call(self, inputs):
        bgr = ops.flip(ops.multiply(inputs, 255.0), axis=-1)
        return ops.subtract(bgr, ops.convert_to_tensor(IMAGENET_CAFFE_MEAN_BGR, dtype=bgr.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape


def build_frame_encoder(frame_shape=(128, 128, 3), *, backbone: str = "vgg", depth: int = 3,
                        width: int = 32, weights=None, name: str = "frame_encoder") -> keras.Model:
    """Build the per-frame encoder (see the module docstring).

    Args:
        frame_shape: one frame ``(H, W, 3)``, float32 RGB in ``[0, 1]``.
        backbone: one of ``BACKBONES``.
        depth: number of Conv2D + MaxPool2D blocks (``vgg``); needs ``H, W >= 2**depth``.
        width: filters of the first block (``vgg``); doubled per block, capped at 512.
        weights: ``resnet50`` only: ``None`` (random), ``"imagenet"`` (downloads, see the
            module docstring) or the path of a weights file for this architecture.
        name: the model's name.

    Returns:
        A ``keras.Model`` mapping ``(batch, H, W, 3)`` to ``(batch, d)`` float32, ``d`` =
        ``min(width * 2**(depth-1), 512)`` for ``vgg`` and 2048 for ``resnet50``.

    Raises:
        ValueError: unknown backbone, frames that are not ``(H, W, 3)`` or too small for the
            backbone, ``depth``/``width`` < 1, or ``weights`` given for ``vgg`` / not
            ``None``, ``"imagenet"`` or an existing file for ``resnet50``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    frame_shape = tuple(int(d) for d in frame_shape)
    if len(frame_shape) != 3 or frame_shape[2] != 3:
        raise ValueError(f"frame shape {frame_shape}: expected (H, W, 3) RGB")
    if backbone == "vgg":
        if weights is not None:
            raise ValueError(f"weights={weights!r}: the vgg backbone has no pretrained weights; use None")
        if depth < 1 or width < 1:
            raise ValueError(f"vgg needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        if min(frame_shape[:2]) < 2 ** depth:
            raise ValueError(f"frames {frame_shape[:2]} are too small for {depth} vgg blocks "
                             f"(each halves the size; needs at least {2 ** depth} pixels a side)")
        inputs = keras.Input(frame_shape, name=f"{name}_input")
        x = inputs
        for i in range(depth):
            x = layers.Conv2D(min(width * 2 ** i, 512), 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
            x = layers.MaxPooling2D(2)(x)
        outputs = layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, outputs, name=name)

    if min(frame_shape[:2]) < RESNET_MIN_SIZE:
        raise ValueError(f"frames {frame_shape[:2]} are too small for ResNet50 "
                         f"(needs at least {RESNET_MIN_SIZE} pixels a side)")
    if not (weights is None or weights == "imagenet" or os.path.isfile(str(weights))):
        raise ValueError(f"weights={weights!r}: expected None, 'imagenet' or the path of an existing weights file")
    resnet = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=frame_shape,
                                         pooling="avg")
    inputs = keras.Input(frame_shape, name=f"{name}_input")
    x = ImagenetCaffePreprocess()(inputs) if weights is not None else inputs
    return keras.Model(inputs, resnet(x), name=name)


def build_visual_branch(input_shape=(6, 128, 128, 3), *, backbone: str = "vgg", depth: int = 3,
                        width: int = 32, temporal: str = "max", temporal_units: int = 64, weights=None,
                        name: str = "visual_branch") -> keras.Model:
    """Build the visual sub-network: frame encoder under ``TimeDistributed``, then ``temporal``.

    Args:
        input_shape: one clip ``(F, H, W, 3)``, float32 RGB in ``[0, 1]``.
        backbone, depth, width, weights: the frame encoder, see :func:`build_frame_encoder`.
        temporal: one of ``TEMPORAL_CHOICES``.
        temporal_units: units of the LSTM / GRU (unused for ``"max"``).
        name: the model's name; its input is named ``name + "_input"``.

    Returns:
        A ``keras.Model`` mapping ``(batch, F, H, W, 3)`` to ``(batch, d)`` float32, ``d`` =
        the frame encoder's width for ``"max"``, ``temporal_units`` for ``"lstm"``/``"gru"``.

    Raises:
        ValueError: unknown ``temporal``, input not ``(F, H, W, 3)``, or any error of
            :func:`build_frame_encoder`.
    """
    if temporal not in TEMPORAL_CHOICES:
        raise ValueError(f"unknown temporal aggregation {temporal!r}; expected one of {TEMPORAL_CHOICES}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        raise ValueError(f"video sample shape {shape}: expected (F, H, W, 3) frames")
    encoder = build_frame_encoder(shape[1:], backbone=backbone, depth=depth, width=width, weights=weights,
                                  name=f"{name}_{backbone}")
    inputs = keras.Input(shape, name=f"{name}_input")
    x = layers.TimeDistributed(encoder)(inputs)  # (batch, F, d)
    if temporal == "max":
        outputs = layers.GlobalMaxPooling1D()(x)
    elif temporal == "lstm":
        outputs = layers.LSTM(temporal_units)(x)
    else:
        outputs = layers.GRU(temporal_units)(x)
    return keras.Model(inputs, outputs, name=name)
