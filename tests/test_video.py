"""Frame selection and aspect-preserving resize: pure geometry, then real clips made with ffmpeg."""
import shutil
import subprocess

import numpy as np
import pytest

from fi_data.cache import PreprocessParams, extract_clip_features
from fi_data.ffmpeg_tools import passthrough_args
from fi_data.video import evenly_spaced_indices, fit_geometry, is_odd_resolution, resize_chain

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.mark.parametrize("n, k, expected", [
    (459, 6, [38, 114, 191, 267, 344, 420]),  # floor((i + 0.5) * 459 / 6)
    (60, 6, [5, 15, 25, 35, 45, 55]),
    (6, 6, [0, 1, 2, 3, 4, 5]),
    (3, 6, [0, 0, 1, 1, 2, 2]),  # fewer frames than asked: evenly repeated
    (1, 6, [0] * 6),
])
def test_evenly_spaced_indices(n, k, expected):
    assert evenly_spaced_indices(n, k).tolist() == expected


def test_evenly_spaced_indices_rejects_empty():
    with pytest.raises(ValueError, match="at least one frame"):
        evenly_spaced_indices(0, 6)


@pytest.mark.parametrize("w, h, expected", [
    (1280, 720, (249, 0, 0)),  # 16:9: 248.9 -> 249 wide, one column cropped (from the right)
    (960, 720, (187, 0, 30)),  # 4:3: 186.7 -> 187 wide, 30 black columns left, 31 right
    (336, 144, (327, 39, 0)),  # 21:9: centre crop
    (720, 1280, (79, 0, 84)),  # portrait: centred on black
])
def test_fit_geometry_keeps_aspect_ratio(w, h, expected):
    g = fit_geometry(w, h, 140, 248)
    assert (g.scaled_width, g.crop_left, g.pad_left) == expected


def test_odd_resolution():
    assert not is_odd_resolution(1280, 720) and not is_odd_resolution(960, 720)
    assert is_odd_resolution(250, 250)  # square
    assert is_odd_resolution(128, 72)  # 16:9 but below the 140-pixel frame height


def make_square_clip(path, width, height, extra=""):
    """1 s of grey with a centred white square of side height/2 (+ optional drawbox filters)."""
    side = height // 2
    src = (f"color=c=gray:s={width}x{height}:d=1:r=30,"
           f"drawbox=x={(width - side) // 2}:y={(height - side) // 2}:w={side}:h={side}:color=white:t=fill{extra}")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def white_box(frame):
    white = (frame > 200).all(axis=2)
    cols, rows = np.flatnonzero(white.any(axis=0)), np.flatnonzero(white.any(axis=1))
    return cols.max() - cols.min() + 1, rows.max() - rows.min() + 1


@needs_ffmpeg
def test_4_3_clip_is_padded_not_stretched(tmp_path):
    clip = make_square_clip(tmp_path / "four_three.mp4", 192, 144)  # 4:3 like 960x720
    frames = extract_clip_features(clip, PreprocessParams(), 10).frames
    assert frames.shape == (6, 140, 248, 3) and frames.dtype == np.uint8
    lit = frames[0].max(axis=(0, 2)) > 0
    assert not lit[:30].any() and not lit[217:].any()  # exact black bars: 30 left, 31 right
    assert lit[30:217].all()  # 187 = round(192 * 140 / 144) picture columns
    w, h = white_box(frames[0])
    assert abs(w - h) <= 1 and abs(h - 70) <= 1  # the square stays square (stretched it would be 93 wide)


@needs_ffmpeg
def test_16_9_and_wider_clips_are_centre_cropped(tmp_path):
    clip = make_square_clip(tmp_path / "sixteen_nine.mp4", 256, 144)
    frame = extract_clip_features(clip, PreprocessParams(), 10).frames[0]
    assert (frame.max(axis=(0, 2)) > 0).all()  # no padding
    w, h = white_box(frame)
    assert abs(w - h) <= 1 and abs(h - 70) <= 1
    # 21:9 with a red band over the outer 30 source columns on each side: the crop removes it
    wide = make_square_clip(tmp_path / "wide.mp4", 336, 144, ",drawbox=x=0:y=0:w=30:h=144:color=red:t=fill"
                                                            ",drawbox=x=306:y=0:w=30:h=144:color=red:t=fill")
    frame = extract_clip_features(wide, PreprocessParams(), 10).frames[0].astype(int)
    red = (frame[..., 0] > 150) & (frame[..., 1] < 80)
    assert not red.any()
    w, h = white_box(frame)
    assert abs(w - h) <= 1


def all_frames(path, params):
    """Every decodable frame through the same resize, by a separate plain ffmpeg run."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "quiet", "-skip_loop_filter", "all", "-i", str(path),
                          "-vf", resize_chain(params.frame_height, params.frame_width), *passthrough_args(),
                          "-f", "rawvideo", "-"], capture_output=True, check=False).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, params.frame_height, params.frame_width, 3)


@needs_ffmpeg
def test_frames_are_evenly_spaced_over_the_frames_that_decode(tmp_path):
    params = PreprocessParams()
    clip = tmp_path / "faststart.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=192x144:rate=30:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(clip)], check=True)
    good = extract_clip_features(clip, params, 10)
    reference = all_frames(clip, params)
    assert len(reference) == 60 and good.info["video_frames"] == 60
    np.testing.assert_array_equal(good.frames, reference[[5, 15, 25, 35, 45, 55]])
    # Cut the file: its header still promises 60 frames, fewer decode.
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    result = extract_clip_features(cut, params, 10)
    reference = all_frames(cut, params)
    assert 6 <= len(reference) < 60
    assert result.info == {**result.info, "frame_count_hint": 60, "video_frames": len(reference)}
    assert "frame_count_mismatch" in result.flags
    np.testing.assert_array_equal(result.frames, reference[evenly_spaced_indices(len(reference), 6)])
