"""Frame selection and aspect-preserving resize: pure geometry, then real clips made with ffmpeg."""
import shutil
import subprocess

import numpy as np
import pytest

from fi_data import cache as cache_module
from fi_data import ffmpeg_tools
from fi_data.cache import PreprocessParams, extract_clip_features
from fi_data.ffmpeg_tools import VideoPackets, decode_clip, passthrough_args, probe
from fi_data.video import (BAR_LUMA_MAX, CropBox, detect_bars, evenly_spaced_indices, fit_frames, fit_geometry,
                           is_odd_resolution, source_chain)

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
def test_non_square_pixels_keep_the_display_aspect_ratio(tmp_path):
    """144x144 stored with 4:3 pixels displays as 192x144 (4:3): laid out like a 4:3 clip."""
    clip = make_square_clip(tmp_path / "anamorphic.mp4", 144, 144, ",setsar=4/3")
    result = extract_clip_features(clip, PreprocessParams(), 10)
    assert result.info["crop"] == {"top": 18, "bottom": 126, "left": 0, "right": 144}  # 144x108 in the 144x144 box
    lit = result.frames[0].max(axis=(0, 2)) > 0
    assert not lit[:30].any() and not lit[217:].any() and lit[30:217].all()
    w, h = white_box(result.frames[0])
    assert abs(w - 1.33 * h) <= 2  # the stored square is a 4:3 rectangle on screen


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


def all_frames(path, params, width=192, height=144):
    """Every decodable frame at source size, then the same resize, by a separate plain ffmpeg run."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "quiet", "-skip_loop_filter", "all", "-i", str(path),
                          "-vf", source_chain(width, height), *passthrough_args(),
                          "-f", "rawvideo", "-"], capture_output=True, check=False).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    return fit_frames(frames, CropBox(0, height, 0, width), params.frame_height, params.frame_width)


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
    assert good.info["crop"] == {"top": 0, "bottom": 144, "left": 0, "right": 192}  # testsrc2 has no bars
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
    assert probe(clip, packets=True).video_packets is not None
    assert probe(cut, packets=True).video_packets is None  # its packets do not all read: never seeked


# ----------------------------------------------------------------------------------------
# Packet skipping (fi_data.ffmpeg_tools.decode_clip's fast path) gives exactly the full decode's frames

CODE_BASE, CODE_STEP = 13, 15
"""Gray-coded frames: frame ``k`` shows ``k % 13`` and ``k // 13`` as two flat gray strips of
level ``40 + 15 * digit`` (far from black, so never taken for bars; 15 levels survive lossy H.264)."""


def gray_coded_clip(path, n_video_frames, rate, keyint=60, width=64, height=48):
    """libx264 High with 3 B-frames and a keyframe every ``keyint`` frames (as the release, only
    shorter), a moving texture under the two code strips, and a tone."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height // 3, 2 * width), dtype=np.uint8)
    frames = np.empty((n_video_frames, height, width), np.uint8)
    for k in range(n_video_frames):
        frames[k, :height // 3] = 40 + CODE_STEP * (k % CODE_BASE)
        frames[k, height // 3:2 * height // 3] = 40 + CODE_STEP * (k // CODE_BASE)
        frames[k, 2 * height // 3:] = np.roll(texture, 3 * k, axis=1)[:, :width]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{width}x{height}",
                    "-r", rate, "-i", "-", "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=44100",
                    "-c:v", "libx264", "-profile:v", "high", "-bf", "3", "-g", str(keyint), "-sc_threshold", "0",
                    "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
                   input=frames.tobytes(), check=True, capture_output=True)
    return path


def frame_numbers(frames):
    """The source frame each RGB frame of a :func:`gray_coded_clip` is."""
    third = frames.shape[1] // 3
    digits = [np.round((frames[:, a + 2:a + third - 2, 2:-2].mean(axis=(1, 2, 3)) - 40) / CODE_STEP).astype(int)
              for a in (0, third)]
    return (digits[0] + CODE_BASE * digits[1]).tolist()


def test_skip_plan_keeps_what_the_selected_frames_need_and_its_filters_drop_the_rest():
    # 1000 packets in x264's order with 3 B-frames, an IDR every 250: I, then P B b b (shown b B b P)
    kinds = ("I" + "RRNN" * 62 + "R") * 4
    order = []
    for base in range(0, 1000, 250):
        order += [base] + [base + 4 * (j // 4) + (4, 2, 1, 3)[j % 4] for j in range(248)] + [base + 249]
    packets = VideoPackets(tuple(order), tuple(kinds), 1280 * 720)
    assert len(set(packets.pts)) == 1000
    indices = evenly_spaced_indices(1000, 16).tolist()
    plan = ffmpeg_tools._skip_plan(packets, indices)
    by_pts = sorted(range(1000), key=packets.pts.__getitem__)
    targets = {by_pts[k] for k in indices}
    assert 0 in plan.kept and targets <= set(plan.kept)
    assert all(packets.kind[j] != "N" or j in targets for j in plan.kept)  # no unneeded non-reference picture
    for k in indices:  # every reference picture from the frame's IDR up to it
        pos = by_pts[k]
        idr = max(j for j in range(pos + 1) if packets.kind[j] == "I")
        assert {j for j in range(idr, pos + 1) if packets.kind[j] != "N"} <= set(plan.kept)
    kept_by_pts = sorted(plan.kept, key=packets.pts.__getitem__)
    assert [kept_by_pts[i] for i in plan.pick] == [by_pts[k] for k in indices]
    # the drop filters, evaluated as ffmpeg's noise filter does (each numbers its own input from 0)
    filters = plan.drop_filters().split(",noise=")
    assert len(filters) > 1  # more runs than one expression takes
    alive = list(range(1000))
    for f in filters:
        terms = f.removeprefix("noise=").removeprefix("drop=").split("+")
        def dropped(n):
            for t in terms:
                args = [int(x) for x in t[t.index("(") + 1:-1].replace("\\", "").split(",")[1:]]
                if (t.startswith("eq") and n == args[0] or t.startswith("between") and args[0] <= n <= args[1]
                        or t.startswith("gte") and n >= args[0]):
                    return True
            return False
        assert len(terms) <= 64
        alive = [p for n, p in enumerate(alive) if not dropped(n)]
    assert alive == list(plan.kept)


@needs_ffmpeg
@pytest.mark.parametrize("rate", ["30", "30000/1001"])
def test_packet_skipping_gives_exactly_the_frames_of_the_full_decode(tmp_path, rate, monkeypatch):
    monkeypatch.setattr(ffmpeg_tools, "MIN_SKIPPED_PIXELS", 0)  # these frames are small: take it anyway
    n = 150  # 5 s: IDR pictures at 0, 60, 120, so the sampled frames fall in three groups
    clip = gray_coded_clip(tmp_path / "coded.mp4", n, rate)
    media = probe(clip, packets=True)
    packets = media.video_packets
    assert packets is not None and len(packets) == n == media.frame_count_hint
    assert [i for i, kind in enumerate(packets.kind) if kind == "I"] == [0, 60, 120]
    assert packets.kind.count("N") > n // 4  # B-frames that nothing is predicted from: skipped
    assert any(b < a for a, b in zip(packets.pts, packets.pts[1:]))  # B-frames: pts out of file order
    params = PreprocessParams(frame_height=48, frame_width=64)
    runs = []
    monkeypatch.setattr(cache_module, "decode_clip", lambda *a, **k: runs.append(decode_clip(*a, **k)) or runs[-1])
    result = extract_clip_features(clip, params, 10)  # the cache's own path: probe, then packet skipping
    assert [run.fast_path for run in runs] == [True]
    assert result.status == "ok" and result.flags == ("mono_audio",) and result.info["video_frames"] == n
    assert frame_numbers(result.frames) == evenly_spaced_indices(n, 6).tolist()
    decode = dict(frame_chain=source_chain(64, 48), frame_size=(48, 64), audio_rate=16000, audio_channels=1)
    for indices in (evenly_spaced_indices(n, 16), [0, 59, 60, 61, 119, 120, 149, 149]):
        fast = decode_clip(clip, frame_indices=indices, packets=packets, **decode)
        full = decode_clip(clip, frame_indices=indices, **decode)
        assert fast.fast_path and not full.fast_path and fast.errors == full.errors == ""
        assert fast.n_video_frames == full.n_video_frames == n
        assert frame_numbers(fast.frames) == sorted(set(int(i) for i in indices))
        np.testing.assert_array_equal(fast.frames, full.frames)
        np.testing.assert_array_equal(fast.audio, full.audio)
    # a shortened stream that does not decode cleanly (here: reference pictures wrongly skipped)
    # falls back to the full decode
    wrong = VideoPackets(packets.pts, tuple("I" if k == "I" else "N" for k in packets.kind), packets.pixels)
    fallback = decode_clip(clip, frame_indices=[5, 70, 130], packets=wrong, **decode)
    assert not fallback.fast_path and frame_numbers(fallback.frames) == [5, 70, 130]
    monkeypatch.setattr(ffmpeg_tools, "MIN_SKIPPED_PIXELS", 10**12)  # not worth a second process: full decode
    assert not decode_clip(clip, frame_indices=[5], packets=packets, **decode).fast_path


# ----------------------------------------------------------------------------------------
# Black bars: pure detection on arrays, then real clips end to end


def scene(n=6, h=720, w=960, seed=0, low=30, high=230):
    """Textured frames (uniform noise in [low, high]) that change from frame to frame."""
    return np.random.default_rng(seed).integers(low, high + 1, size=(n, h, w, 3), dtype=np.uint8)


def test_letterbox_960x720_is_cropped_to_the_picture():
    frames = scene()
    frames[:, :90] = 0
    frames[:, 630:] = 0
    frames[:, 88:90, ::50] = 11  # H.264 ringing next to the picture: max 11, SD 1.5 (as measured on a real encode)
    box = detect_bars(frames)
    assert box == CropBox(90, 630, 0, 960)
    fitted = fit_frames(frames, box)
    assert fitted.shape == (6, 140, 248, 3)
    assert (fitted.max(axis=(0, 2, 3)) > 100).all() and (fitted.max(axis=(0, 1, 3)) > 100).all()  # no black left
    uncropped = fit_frames(frames, CropBox(0, 720, 0, 960))
    assert (uncropped[:, :15].max() <= 12) and uncropped.max(axis=(0, 1, 3))[:30].max() == 0  # what it was


def test_pillarbox_is_cropped():
    frames = scene(w=1280)
    frames[:, :, :160] = 0
    frames[:, :, 1120:] = 1
    assert detect_bars(frames) == CropBox(0, 720, 160, 1120)


def test_frames_without_bars_are_left_as_they_are():
    frames = scene(n=3, h=144, w=192)
    box = detect_bars(frames)
    assert box == CropBox(0, 144, 0, 192)
    np.testing.assert_array_equal(fit_frames(frames, box, 144, 192), frames)  # same size: untouched


@pytest.mark.parametrize("name, frames", [
    # a dark, textured scene: every pixel below BAR_LUMA_MAX, but not flat
    ("dark scene", scene(low=0, high=20)),
    # flat dark grey: every row and column looks like a bar; the 50% rule keeps the frame whole
    ("flat dark", np.full((6, 720, 960, 3), 12, np.uint8)),
    ("black (a fade)", np.zeros((6, 720, 960, 3), np.uint8)),
])
def test_dark_unbarred_frames_are_not_cropped(name, frames):
    assert frames.max() <= BAR_LUMA_MAX
    assert detect_bars(frames) == CropBox(0, 720, 0, 960), name


def test_bars_count_only_from_the_edges_and_must_leave_half_the_frame():
    frames = scene()
    frames[:, 300:400] = 0  # a black band inside the picture is not a bar
    assert detect_bars(frames) == CropBox(0, 720, 0, 960)
    frames = scene()
    frames[:, :200] = 0
    frames[:, 500:] = 0  # would leave 300 of 720 rows (42%): dark, not barred
    assert detect_bars(frames) == CropBox(0, 720, 0, 960)
    frames[:, :, :100] = 0  # the columns are still judged (over all rows, as none were cropped)
    assert detect_bars(frames) == CropBox(0, 720, 100, 960)


def test_a_row_bright_in_one_sampled_frame_is_not_a_bar():
    frames = scene()
    frames[:, :90] = 0
    frames[3, 60:90, 500] = 200  # e.g. a caption in the bar, shown in one sampled frame
    assert detect_bars(frames) == CropBox(60, 720, 0, 960)  # the caption's rows and all below are picture


def test_fit_frames_and_detect_bars_refuse_bad_input():
    with pytest.raises(ValueError, match="scale_flags"):
        fit_frames(scene(n=1, h=20, w=20), CropBox(0, 20, 0, 20), scale_flags="fast_bilinear")
    with pytest.raises(ValueError, match="not inside"):
        fit_frames(scene(n=1, h=20, w=20), CropBox(0, 30, 0, 20))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_bars(np.zeros((2, 20, 20), np.uint8))


@needs_ffmpeg
def test_letterboxed_960x720_clip_fills_the_frame(tmp_path):
    """A 16:9 picture between bars in 960x720 gives the frames of the 16:9 picture alone."""
    def encode(path, vf):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size=960x540:rate=30:duration=1{vf}", "-c:v", "libx264", "-crf", "18",
                        "-pix_fmt", "yuv420p", str(path)], check=True)
        return extract_clip_features(path, PreprocessParams(), 10)

    barred = encode(tmp_path / "letterbox.mp4", ",pad=960:720:0:90:black")
    plain = encode(tmp_path / "plain.mp4", "")
    assert barred.info["crop"] == {"top": 90, "bottom": 630, "left": 0, "right": 960}
    assert plain.info["crop"] == {"top": 0, "bottom": 540, "left": 0, "right": 960}
    lit = barred.frames.max(axis=(0, 3))
    assert (lit.max(axis=1) > 0).all() and (lit.max(axis=0) > 0).all()  # 140 rows high (not 105), 248 wide
    diff = np.abs(barred.frames.astype(int) - plain.frames.astype(int))
    assert diff.mean() < 2 and np.percentile(diff, 99) < 20  # the same picture, up to the two encodes


@needs_ffmpeg
def test_pillarboxed_clip_is_cropped_and_laid_out_like_4_3(tmp_path):
    clip = make_square_clip(tmp_path / "pillar.mp4", 256, 144, ",drawbox=x=0:y=0:w=32:h=144:color=black:t=fill"
                                                               ",drawbox=x=224:y=0:w=32:h=144:color=black:t=fill")
    result = extract_clip_features(clip, PreprocessParams(), 10)
    assert result.info["crop"] == {"top": 0, "bottom": 144, "left": 32, "right": 224}  # the 192x144 (4:3) picture
    lit = result.frames[0].max(axis=(0, 2)) > 0
    assert not lit[:30].any() and not lit[217:].any() and lit[30:217].all()  # as a 4:3 clip: 30 left, 31 right
    w, h = white_box(result.frames[0])
    assert abs(w - h) <= 1 and abs(h - 70) <= 1


@needs_ffmpeg
def test_dark_unbarred_clip_is_not_cropped(tmp_path):
    clip = tmp_path / "dark.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=192x144:rate=30:duration=1,eq=brightness=-0.5,noise=alls=8:allf=t+u",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    result = extract_clip_features(clip, PreprocessParams(), 10)
    assert result.info["crop"] == {"top": 0, "bottom": 144, "left": 0, "right": 192}
    assert result.frames.mean() < 40  # it really is dark
