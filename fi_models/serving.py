"""The delivered model: the fixed preprocessing as its first layers, so it takes cached arrays as they are.

Training feeds the fusion model center- or randomly-cropped float frames in [0, 1]: the input
pipeline (``fi_data.pipeline``) crops and scales, and augments while training. A model saved
that way needs every user to replay the crop from ``preprocessing.json``, and a replay that
differs (another crop convention, forgetting the scaling) gives wrong scores without an error.
So the model that is saved (``best_model.keras``) wraps the trained one behind
:class:`CenterCropScale`: its inputs are the cached arrays (float32 audio, uint8 frames of the
cache's size) and the center crop and the scaling happen inside, exactly as the validation and
test transform does them (``fi_data.pipeline.eval_transform``, the convention of
``keras.layers.CenterCrop``). Random augmentations stay in the training pipeline, which trains
the inner model; the wrapper has no weights of its own. (The same habit as the keras-io
multimodal examples, which put their fixed preprocessing layers inside the saved model.)
"""

from __future__ import annotations

import keras
from keras import layers, ops

SERVING_FRAMES_INPUT = "frames"
"""Name of the delivered model's frame input: uint8 ``(b, F, H, W, 3)`` as cached."""

SERVING_FACES_INPUT = "faces"
"""Name of its face-crop input (only for a model with a face stream): uint8 ``(b, F, S, S, 3)`` as cached."""


@keras.saving.register_keras_serializable(package="fi_models")
class CenterCropScale(layers.Layer):
    """uint8 frames ``(b, F, H, W, 3)`` -> float32 ``(b, F, crop, crop, 3)`` in ``[0, 1]``.

    The window starts at row ``(H - crop) // 2`` and column ``(W - crop) // 2`` (as
    ``fi_data.pipeline.center_crop_frames``); pixels are divided by 255.

    Raises:
        ValueError: when built on frames smaller than the crop.
    """

    def __init__(self, crop_size: int, **kwargs):
        super().__init__(**kwargs)
        self.crop_size = int(crop_size)

    def build(self, input_shape):
        height, width = input_shape[-3], input_shape[-2]
        if height < self.crop_size or width < self.crop_size:
            raise ValueError(f"frames of {height}x{width} pixels are smaller than the {self.crop_size}x"
                             f"{self.crop_size} crop")
        self._top, self._left = (height - self.crop_size) // 2, (width - self.crop_size) // 2

    def call(self, frames):
        c = self.crop_size
        window = frames[..., self._top:self._top + c, self._left:self._left + c, :]
        return ops.cast(window, "float32") / 255.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-3], self.crop_size, self.crop_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "crop_size": self.crop_size}


def serving_model(model: keras.Model, audio_shape, frame_shape, crop_size: int, face_shape=None) -> keras.Model:
    """``model`` (inputs ``(audio, video)``, video float32 crops in [0, 1]) behind the fixed preprocessing.

    Args:
        model: the trained fusion model (or an averaging ensemble of them).
        audio_shape: one clip's cached audio shape, e.g. ``(24, M, 1)``; passed through.
        frame_shape: one clip's cached frames, e.g. ``(6, 140, 248, 3)`` (uint8).
        crop_size: the side of the center crop the model was validated on, in pixels.
        face_shape: one clip's cached face crops, e.g. ``(6, 144, 144, 3)`` (uint8), for a
            model with a face stream (a third input); None otherwise.

    Returns:
        A ``keras.Model`` with inputs ``audio`` float32 ``(b, *audio_shape)`` and
        :data:`SERVING_FRAMES_INPUT` uint8 ``(b, *frame_shape)`` (and :data:`SERVING_FACES_INPUT`
        uint8 ``(b, *face_shape)``, cropped the same way), and ``model``'s output; its
        predictions equal ``model.predict(fi_data.pipeline.eval_transform(audio, frames, crop_size))``.
        The inner model keeps its name (``model.get_layer(name)``).

    Raises:
        ValueError: if the frames are smaller than the crop.
    """
    audio = keras.Input(tuple(audio_shape), name="audio", dtype="float32")
    frames = keras.Input(tuple(frame_shape), name=SERVING_FRAMES_INPUT, dtype="uint8")
    video = CenterCropScale(crop_size, name="center_crop_scale", dtype="float32")(frames)
    if face_shape is None:
        return keras.Model([audio, frames], model([audio, video]), name="serving")
    faces = keras.Input(tuple(face_shape), name=SERVING_FACES_INPUT, dtype="uint8")
    face = CenterCropScale(crop_size, name="face_center_crop_scale", dtype="float32")(faces)
    return keras.Model([audio, frames, faces], model([audio, video, face]), name="serving")


def takes_cached_frames(model: keras.Model) -> bool:
    """True for a :func:`serving_model` (uint8 frames in), False for a model of older run folders
    whose video input is float32 crops (those need the crop replayed from ``preprocessing.json``)."""
    return len(model.inputs) >= 2 and str(model.inputs[1].dtype) == "uint8"
