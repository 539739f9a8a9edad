"""run_search.py inspect / fi_data.inspect_clip: one PNG per clip of what the model sees."""

import json
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

import run_search
from fi_data.cache import CLIP_FLAGS, PreprocessParams, extract_clip_features
from fi_data.errors import UserError
from fi_data.inspect_clip import (DPI, Preprocessing, crop_in_source, decode_source_frame, default_preprocessing,
                                  face_crop_in_source, figure_size, inspect_clip, inspect_figure, run_preprocessing,
                                  safe_name, unique_names)
from fi_data.video import CropBox, fit_frames


def _make_clip(path: Path, seconds: float = 1.5):
    """64x36 H.264 + AAC clip: a 48x36 test picture between 8-pixel black pillarbox bars."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=s=48x36:r=10:d={seconds},pad=64:36:8:0:black",
                    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    bars = root / "bars.mp4"
    _make_clip(bars)
    archive = root / "batch.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(bars, "sub/bars.mp4")
    corrupt = root / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # no moov atom
    return {"bars": bars, "zip": archive, "corrupt": corrupt, "root": root}


def test_a_clip_gets_the_full_figure_with_its_flags_sizes_and_crop_box(clips, tmp_path):
    out = tmp_path / "bars.png"
    result = inspect_clip(clips["bars"], out)
    assert result["status"] == "ok" and not result["text_only"]
    assert result["flags"] == ("mono_audio", "odd_resolution")
    assert result["info"]["crop"] == {"top": 0, "bottom": 36, "left": 8, "right": 56}  # the pillarbox bars
    width, height = figure_size(6, len(result["facts"]))
    assert _png_size(out) == result["size_px"] == (width * DPI, height * DPI)
    text = "\n".join(result["facts"])
    assert f"source: {clips['bars']}" in text
    assert "flags: mono_audio, odd_resolution" in text
    assert f"odd_resolution: {CLIP_FLAGS['odd_resolution']}" in text
    assert "source_size: 64x36 (displayed)   coded_size: 64x36   rotation: 0 deg" in text
    assert "video_frames: 15 decoded   frame_count_hint: 15" in text
    assert "black-bar crop box (source px): columns 8..56, rows 0..36 (48x36 px)" in text
    assert "model centre crop: columns 60..188, rows 6..134 (128x128 px)" in text
    assert "M = None (unpadded)" in text and "preprocessing: defaults" in text


def test_the_source_frame_is_the_one_the_cached_frame_was_resized_from(clips):
    params = PreprocessParams()
    clip = extract_clip_features(clips["bars"], params, 100)
    frame = decode_source_frame(clips["bars"], clip.info, params, 1)  # first sampled index of 15 frames
    assert frame.shape == (36, 64, 3) and frame.dtype == np.uint8
    refit = fit_frames(frame[None], CropBox(**clip.info["crop"]), params.frame_height, params.frame_width)
    np.testing.assert_array_equal(refit[0], clip.frames[0])


def test_the_centre_crop_maps_back_into_source_pixels():
    params = PreprocessParams()  # 140x248 frames; a 48x36 picture scales to 187 columns, padded 30 each side
    left, top, right, bottom = crop_in_source(CropBox(0, 36, 8, 56), params, 128)
    assert left == pytest.approx(8 + (60 - 30) * 48 / 187)
    assert right == pytest.approx(8 + (188 - 30) * 48 / 187)
    assert (top, bottom) == (pytest.approx(6 * 36 / 140), pytest.approx(134 * 36 / 140))
    # a 16:9 picture scaled to 249 columns, cropped by 0 on the left: the crop is inside the picture
    left, top, right, bottom = crop_in_source(CropBox(0, 36, 0, 64), params, 140)
    assert (left, right) == (pytest.approx(54 * 64 / 249), pytest.approx(194 * 64 / 249))
    assert (top, bottom) == (0.0, 36.0)


def test_archive_members_and_repeated_names_through_the_command(clips, tmp_path, capsys):
    out = tmp_path / "out"
    member = f"{clips['zip']}::sub/bars.mp4"
    missing = f"{clips['zip']}::sub/nobody.mp4"
    args = run_search.parse_args(["inspect", str(clips["bars"]), member, missing, str(clips["root"] / "absent.mp4"),
                                  "--out", str(out)])
    assert run_search.HANDLERS[args.command](args) == 0
    printed = capsys.readouterr().out
    assert f"[inspect] bars: {out / 'bars.png'} (ok; flags: mono_audio, odd_resolution)" in printed
    assert f"[inspect] bars-2: {out / 'bars-2.png'} (ok; flags: mono_audio, odd_resolution)" in printed
    assert f"[inspect] nobody: {out / 'nobody.png'} (missing_file" in printed  # a text-only PNG
    assert "absent.mp4: no PNG (missing_file" in printed
    assert "2 of 4 clips drawn in full" in printed
    assert sorted(p.name for p in out.iterdir()) == ["bars-2.png", "bars.png", "nobody.png"]  # temporaries gone
    assert _png_size(out / "bars-2.png") == _png_size(out / "bars.png")


def test_a_run_preprocessing_pads_the_audio_and_a_broken_clip_gets_a_text_panel(clips, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    params = PreprocessParams(n_frames=2, frame_height=72, frame_width=128)
    (run / "preprocessing.json").write_text(json.dumps(
        {"cache_params": params.to_dict(), "crop_size": 64, "mfcc_frames_mean": 200}))
    prep = run_preprocessing(run)
    assert (prep.params, prep.crop_size, prep.mfcc_frames) == (params, 64, 200)
    out = tmp_path / "out"
    args = run_search.parse_args(["inspect", str(clips["bars"]), str(clips["corrupt"]), "--run", str(run),
                                  "--out", str(out)])
    assert run_search.cmd_inspect(args) == 0
    printed = capsys.readouterr().out
    assert f"[inspect] preprocessing: run {run} (preprocessing.json)" in printed
    assert "[inspect] broken: " in printed and "(unreadable_container" in printed and "text only" in printed
    png = out / "bars.png"
    # 97 audio frames of M = 200: 51.5% padding, so short_clip
    result = inspect_clip(clips["bars"], png, prep)
    assert result["flags"] == ("mono_audio", "odd_resolution", "short_clip")
    assert result["info"]["audio_padded_share"] == pytest.approx(0.515)
    text = "\n".join(result["facts"])
    assert "audio_padded_share: 0.5150" in text and "M = 200" in text
    assert "model inputs: audio float32 (24, 200, 1), video float32 (2, 64, 64, 3)" in text
    assert "model centre crop: columns 32..96, rows 4..68 (64x64 px) of the 128x72 cached frame" in text
    assert _png_size(png) == tuple(round(v * DPI) for v in figure_size(2, len(result["facts"])))
    broken = inspect_clip(clips["corrupt"], tmp_path / "broken.png", prep)
    assert broken["text_only"] and broken["status"] == "unreadable_container"
    assert _png_size(tmp_path / "broken.png") == tuple(round(v * DPI) for v in figure_size(None, len(broken["facts"])))


def test_nothing_drawn_is_exit_status_1_and_impossible_commands_are_user_errors(clips, tmp_path):
    args = run_search.parse_args(["inspect", str(clips["corrupt"]), "--out", str(tmp_path / "o")])
    assert run_search.cmd_inspect(args) == 1
    with pytest.raises(UserError, match="no preprocessing.json"):
        run_search.cmd_inspect(run_search.parse_args(["inspect", str(clips["bars"]), "--run", str(tmp_path),
                                                      "--out", str(tmp_path / "o")]))
    with pytest.raises(UserError, match="at least one CLIP"):
        run_search.cmd_inspect(run_search.parse_args(["inspect", "--out", str(tmp_path / "o")]))
    (tmp_path / "preprocessing.json").write_text(json.dumps(
        {"cache_params": PreprocessParams().to_dict(), "crop_size": 200, "mfcc_frames_mean": 100}))
    with pytest.raises(UserError, match="crop_size 200"):
        run_preprocessing(tmp_path)


def test_names_are_sanitized_and_made_unique():
    assert safe_name("../a b:c.000") == "_a_b_c.000"
    assert safe_name("...") == "clip"
    assert unique_names(["x", "X", "x", "y"]) == ["x", "X-2", "x-3", "y"]


def test_inspect_help_names_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        run_search.parse_args(["inspect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "run_search.py inspect CLIP [CLIP ...] --out DIR [--run RUN]" in text
    for flag in ("--out DIR", "--run RUN", "--passwords SPEC", "--passwords-file FILE", "--debug"):
        assert flag in text
    assert "crop 128 and M = None" in text and text.count("default") >= 4
    assert default_preprocessing().crop_size == 128 and isinstance(default_preprocessing(), Preprocessing)


# ---------------------------------------------------------------------------------------
# The face stream (PreprocessParams.frames "face" / "both")

FACE_SMALL = dict(frame_height=36, frame_width=64, face_size=40)


@pytest.fixture(scope="module")
def face_clips(tmp_path_factory):
    from test_face_stream import make_clip  # the astronaut's face (or none) on clutter, 640x360, 2 s
    root = tmp_path_factory.mktemp("inspect_faces")
    made = {"face": root / "face.mp4", "noise": root / "noise.mp4"}
    make_clip(made["face"], seed=1, face=True)
    make_clip(made["noise"], seed=2, face=False)
    return made


def _face_prep(frames: str, crop_size: int = 32) -> Preprocessing:
    return Preprocessing(PreprocessParams(frames=frames, **FACE_SMALL), crop_size, None, f"test ({frames})")


def _figure_texts(fig) -> list[str]:
    """Every axes title and legend entry of a figure."""
    texts = []
    for ax in fig.axes:
        texts.append(ax.get_title())
        if ax.get_legend() is not None:
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
    return texts


def test_both_streams_draw_the_face_rows_the_face_box_and_its_facts(face_clips, tmp_path):
    prep = _face_prep("both")
    out = tmp_path / "face.png"
    result = inspect_clip(face_clips["face"], out, prep)
    assert result["status"] == "ok" and "no_face" not in result["flags"] and not result["text_only"]
    face = result["info"]["face"]
    assert face["searched"] in (2, 3) and face["found"] >= 2  # two agreeing frames end the search
    width, height = figure_size(6, len(result["facts"]), streams=2)  # two more rows than whole frames
    assert _png_size(out) == result["size_px"] == (width * DPI, height * DPI)
    assert height > figure_size(6, len(result["facts"]))[1]
    text = "\n".join(result["facts"])
    t, l, s = face["top"], face["left"], face["size"]
    assert (f"face box (source px): columns {l}..{l + s}, rows {t}..{t + s} ({s}x{s} px); "
            f"face found in {face['found']} of {face['searched']} searched frames") in text
    assert "model centre crop: columns 16..48, rows 2..34 (32x32 px) of the 64x36 cached frame" in text
    left, top, right, bottom = face_crop_in_source(face, 40, 32)
    assert (f"model face centre crop: columns 4..36, rows 4..36 (32x32 px) of the 40x40 face crop = source px "
            f"x {left:.1f}..{right:.1f}, y {top:.1f}..{bottom:.1f}") in text
    assert "video float32 (6, 32, 32, 3), face float32 (6, 32, 32, 3)" in text
    assert "frames both: 6 frames of 64x36 + face crops of 40x40 (area), crop 32" in text

    params = prep.params
    clip = extract_clip_features(face_clips["face"], params, None)
    frame = decode_source_frame(face_clips["face"], clip.info, params, 1)  # first sampled index of 20 frames
    texts = _figure_texts(inspect_figure(str(face_clips["face"]), clip, prep, frame))
    assert {"cached frame 1 (64x36)", "centre crop 32x32 (val/test)", "cached face crop 1 (40x40)",
            "face centre crop 32x32 (val/test)"} <= set(texts)
    assert f"face box (found in {face['found']} of {face['searched']} frames)" in texts
    assert {"black-bar crop box", "model centre crop (32 cached px)", "model face centre crop (32 of 40 face px)"} \
        <= set(texts)


def test_face_mode_rows_are_face_crops_and_a_clip_without_a_face_says_fallback(face_clips, tmp_path):
    prep = _face_prep("face")
    out = tmp_path / "noise.png"
    result = inspect_clip(face_clips["noise"], out, prep)
    assert result["status"] == "ok" and "no_face" in result["flags"]
    face = result["info"]["face"]
    assert face["found"] == 0 and face["searched"] == 3
    assert _png_size(out) == tuple(round(v * DPI) for v in figure_size(6, len(result["facts"])))
    text = "\n".join(result["facts"])
    assert "no_face: no face found" in text  # the flag with its meaning
    assert ("no face found: fallback square (none in 3 searched frames; upper centre, 0.6 of the picture's short "
            "side)") in text
    # the 640x360 picture's fallback square: 0.6 x 360 = 216, centred, top 10% of 360
    assert "face box (source px): columns 212..428, rows 36..252 (216x216 px)" in text
    assert "model centre crop:" not in text  # the model never sees the whole frame
    assert "video float32 (6, 32, 32, 3) (face crops)" in text and "frames face: 6 face crops of 40x40" in text

    clip = extract_clip_features(face_clips["noise"], prep.params, None)
    assert clip.frames.shape == (6, 40, 40, 3)
    frame = decode_source_frame(face_clips["noise"], clip.info, prep.params, 1)
    texts = _figure_texts(inspect_figure(str(face_clips["noise"]), clip, prep, frame))
    assert {"cached face crop 1 (40x40)", "face centre crop 32x32 (val/test)",
            "face box (no face found: fallback square)"} <= set(texts)
    assert not any(t.startswith("cached frame") or t.startswith("model centre crop") for t in texts)


def test_whole_frames_draw_no_face_and_face_crops_bound_the_crop_size(face_clips, tmp_path):
    prep = _face_prep("whole")
    result = inspect_clip(face_clips["face"], tmp_path / "whole.png", prep)
    assert "face" not in result["info"] and "no_face" not in result["flags"]
    assert not any(word in line for line in result["facts"] for word in ("face box", "face crop", "frames both", "frames face"))
    clip = extract_clip_features(face_clips["face"], prep.params, None)
    texts = _figure_texts(inspect_figure(str(face_clips["face"]), clip, prep,
                                         decode_source_frame(face_clips["face"], clip.info, prep.params, 1)))
    assert not any("face" in t for t in texts)
    # 72x128 frames would take a 48-pixel crop, the 40-pixel face crops do not
    run = tmp_path / "run"
    run.mkdir()
    params = PreprocessParams(frames="both", frame_height=72, frame_width=128, face_size=40)
    (run / "preprocessing.json").write_text(json.dumps({"cache_params": params.to_dict(), "crop_size": 48}))
    with pytest.raises(UserError, match=r"crop_size 48: must be between 1 and the cached face crop size \(40x40"):
        run_preprocessing(run)


def test_the_face_centre_crop_maps_back_into_the_face_box():
    # a 216-pixel face square at (36, 212) cached as 40x40: 5.4 source pixels per cached pixel
    left, top, right, bottom = face_crop_in_source({"top": 36, "left": 212, "size": 216}, 40, 32)
    assert (left, top, right, bottom) == (pytest.approx(212 + 4 * 5.4), pytest.approx(36 + 4 * 5.4),
                                          pytest.approx(212 + 36 * 5.4), pytest.approx(36 + 36 * 5.4))
    assert face_crop_in_source({"top": 0, "left": 0, "size": 144}, 144, 144) == (0.0, 0.0, 144.0, 144.0)
