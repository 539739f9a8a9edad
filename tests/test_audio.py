"""Audio features: frame counts, standardization, silence, padding and truncation (no ffmpeg needed)."""
import dataclasses

import numpy as np
import pytest

from fi_data import audio
from fi_data.cache import PreprocessParams

PARAMS = PreprocessParams()  # 16 kHz, n_fft 512, hop 256, 24 MFCCs, 64 mel bands


def tone(seconds=1.0, freq=440.0, amplitude=0.3, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("n_samples, expected", [(16000, 63), (16127, 63), (16128, 64), (512, 3), (244800, 957)])
def test_mfcc_frame_count_is_exact(n_samples, expected):
    # librosa centres frames: 1 + floor(L / hop); 16000 / 256 = 62.5 -> 63 frames; 15.3 s -> 957.
    assert audio.n_spectral_frames(n_samples, 256) == expected
    y = tone(n_samples / 16000)
    assert audio.spectral_features(y, PARAMS).shape == (24, expected)
    assert audio.spectral_features(y, dataclasses.replace(PARAMS, representation="logmel")).shape == (64, expected)


def test_standardize_whole_matrix_hand_values():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    z = audio.standardize(x, "sample")
    # mean 2.5, population SD sqrt(1.25)
    np.testing.assert_allclose(z, (x - 2.5) / np.sqrt(1.25), rtol=1e-6)
    assert z.dtype == np.float32


def test_standardize_per_coefficient_hand_values():
    z = audio.standardize(np.array([[1.0, 3.0], [10.0, 30.0]]), "coefficient")
    np.testing.assert_allclose(z, [[-1.0, 1.0], [-1.0, 1.0]], rtol=1e-6)


def test_standardized_mfcc_has_mean_0_and_sd_1():
    features, flags = audio.waveform_features(tone(2.0)[:, None], PARAMS)
    assert flags == []
    assert features.shape == (24, 126)
    assert abs(float(features.mean())) < 1e-5
    assert float(features.std()) == pytest.approx(1.0, abs=1e-5)


def test_constant_input_and_silence_give_zeros_not_nan():
    np.testing.assert_array_equal(audio.standardize(np.full((24, 10), -100.0)), np.zeros((24, 10)))
    features, flags = audio.waveform_features(np.zeros((16000, 2), np.float32), PARAMS)
    assert flags == ["silent_audio"]
    assert features.shape == (24, 63)  # silence keeps its real length
    np.testing.assert_array_equal(features, 0.0)


@pytest.mark.parametrize("y, flag", [
    (np.zeros(0, np.float32), "audio_zero_length"),
    (tone(0.5)[:511], "audio_shorter_than_fft_window"),
    (np.r_[tone(0.5), np.float32(np.nan)], "audio_nonfinite"),
    (tone(0.5, amplitude=5e-5), "silent_audio"),  # peak -86 dBFS < -80 dBFS
    (tone(0.5)[:512], None),
])
def test_audio_problems(y, flag):
    assert audio.audio_problem(y, n_fft=512, silence_db=-80.0) == flag


def test_unusable_audio_is_empty_then_padded_with_zeros():
    features, flags = audio.waveform_features(None, PARAMS)
    assert (features.shape, flags) == ((24, 0), ["no_audio_stream"])
    np.testing.assert_array_equal(audio.model_input(features, PARAMS, 7), np.zeros((24, 7, 1)))
    features, flags = audio.waveform_features(tone(0.01)[:, None], PARAMS)  # 160 samples < n_fft
    assert (features.shape, flags) == ((24, 0), ["audio_shorter_than_fft_window"])


def test_stereo_with_equal_channels_equals_mono():
    y = tone(1.0)
    mono, _ = audio.waveform_features(y[:, None], PARAMS)
    stereo, _ = audio.waveform_features(np.stack([y, y], axis=1), PARAMS)
    np.testing.assert_array_equal(mono, stereo)
    np.testing.assert_allclose(audio.to_mono(np.array([[1.0, 3.0], [-1.0, 0.0]])), [2.0, -0.5])


def test_pre_padding_puts_zeros_first_and_keeps_values():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(audio.pad_or_truncate(x, 5, "pre"), [[0, 0, 1, 2, 3], [0, 0, 4, 5, 6]])
    np.testing.assert_array_equal(audio.pad_or_truncate(x, 5, "post"), [[1, 2, 3, 0, 0], [4, 5, 6, 0, 0]])
    np.testing.assert_array_equal(audio.pad_or_truncate(x, 3), x)


def test_truncation_end():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(audio.pad_or_truncate(x, 2, truncating="pre"), [[3.0, 4.0]])  # keeps the end
    np.testing.assert_array_equal(audio.pad_or_truncate(x, 2, truncating="post"), [[1.0, 2.0]])
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        audio.pad_or_truncate(x, 2, truncating="middle")


def test_model_input_shapes_per_representation():
    x = np.arange(24 * 4, dtype=np.float32).reshape(24, 4)
    mfcc = audio.model_input(x, PARAMS, 6)
    assert mfcc.shape == (24, 6, 1) and mfcc.dtype == np.float32
    np.testing.assert_array_equal(mfcc[:, 2:, 0], x)
    mean = audio.model_input(x, dataclasses.replace(PARAMS, representation="mean_mfcc"), 6)
    np.testing.assert_allclose(mean[:, 0], x.mean(axis=1))
    assert mean.shape == (24, 1)
    assert audio.audio_shape(dataclasses.replace(PARAMS, representation="logmel"), 957) == (64, 957, 1)
    assert audio.audio_shape(dataclasses.replace(PARAMS, representation="mean_mfcc"), 957) == (24, 1)
