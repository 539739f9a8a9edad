"""The flags of kept clips (issue "robustness" §6): where a skipped clip is, short clips,
variable frame rate without false decode errors, rotated clips, and the CLIP_FLAGS legend."""
import ast
import functools
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fi_data import cache as cache_module
from fi_data.archives import clear_spools, make_locator, open_clip
from fi_data.cache import CLIP_FLAGS, SHORT_CLIP_PADDED_SHARE, PreprocessParams, build_cache, extract_clip_features
from fi_data.cache_format import open_cache
from fi_data.ffmpeg_tools import probe, split_tool_messages
from fi_data.traits import TRAITS
from fi_data.video import CropBox, fit_frames

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
FI_DATA = Path(cache_module.__file__).parent


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def make_clip(path, seconds, *, size="192x144", rate=30, audio=True, extra=()):
    sound = ["-f", "lavfi", "-t", str(seconds), "-i", "sine=frequency=330:sample_rate=16000"] if audio else []
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", *sound,
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *(["-c:a", "aac"] if audio else []),
           *extra, path)
    return path


def ffmpeg_major() -> int:
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    match = re.match(r"ffmpeg version n?(\d+)", out)
    return int(match[1]) if match else 0


# ----------------------------------------------------------------------------------------
# 1 + 2: through build_cache: a skipped archive member is named by its locator; short clips


@pytest.fixture(scope="module")
def archive_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    clips = {name: make_clip(d / f"{name}.mp4", seconds) for name, seconds in
             (("long_a", 8), ("long_b", 8), ("six_s", 6), ("one_s", 1))}
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    inner = d / "training80_01.zip"
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as z:
        z.writestr("garbage_clip.000.mp4", garbage)
        z.write(clips["one_s"], "one_s_clip_.000.mp4")
    outer = d / "train-1.zip"
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_STORED) as z:
        z.write(inner, "training80_01.zip")
    sources = {"long_a": str(clips["long_a"]), "long_b": str(clips["long_b"]), "six_s": str(clips["six_s"]),
               "one_s": make_locator(outer, "training80_01.zip", "one_s_clip_.000.mp4"),
               "garbage": make_locator(outer, "training80_01.zip", "garbage_clip.000.mp4")}
    splits = {"long_a": "train", "long_b": "train", "six_s": "validation", "one_s": "validation", "garbage": "test"}
    rows = [{"clip_id": f"{name:_<11}.000", "split": splits[name], **{t: 0.5 for t in TRAITS}, "source": src,
             "status": "ok"} for name, src in sources.items()]
    tmp_dir = d / "toolkit-tmp"
    try:
        opener = functools.partial(open_clip, tmp_dir=tmp_dir)
        cache_dir = build_cache(pd.DataFrame(rows), d / "cache", open_clip=opener, workers=1, progress=False)
    finally:
        clear_spools()
    return open_cache(cache_dir), sources


def entry(cache, name):
    return cache.manifest["clips"][f"{name:_<11}.000"]


def test_a_skipped_archive_member_is_named_by_its_locator_not_the_temporary_copy(archive_cache):
    cache, sources = archive_cache
    e = entry(cache, "garbage")
    assert e["status"] == "unreadable_container"
    assert sources["garbage"] + ": Invalid data found" in e["detail"]  # ffprobe's "file:<path>: Invalid data ..."
    assert "train-1.zip::training80_01.zip::garbage_clip.000.mp4" in e["detail"]
    assert "clip-" not in e["detail"] and "toolkit-tmp" not in e["detail"]


def test_relabel_replaces_every_form_of_the_temporary_name(tmp_path):
    tmp = tmp_path / "tmp" / "clip-abc.mp4"
    text = f"file:{tmp}: moov atom not found; {tmp} again"
    assert cache_module._relabel(text, tmp, "a.zip::b.mp4") == "a.zip::b.mp4: moov atom not found; a.zip::b.mp4 again"
    missing = extract_clip_features(tmp, PreprocessParams(), 10, source_label="a.zip::b.mp4")
    assert (missing.status, missing.detail) == ("missing_file", "a.zip::b.mp4")


def test_a_short_clip_is_flagged_with_its_padded_share(archive_cache):
    cache, _ = archive_cache
    m = cache.manifest["mfcc_frames_mean"]
    lengths = [entry(cache, n)["audio_frames"] for n in ("long_a", "long_b")]
    assert m == int(np.floor(np.mean(lengths) + 0.5)) and abs(m - (1 + 8 * 16000 // 256)) <= 3  # about 501
    for name, seconds, short in (("one_s", 1, True), ("six_s", 6, False), ("long_a", 8, False)):
        e = entry(cache, name)
        t = e["audio_frames"]
        assert abs(t - (1 + seconds * 16000 // 256)) <= 3, (name, t)
        assert e["audio_padded_share"] == round(max(0, m - t) / m, 4)
        assert ("short_clip" in e["flags"]) is short, e
    assert entry(cache, "one_s")["audio_padded_share"] > 0.85  # a 1 s clip among 8 s ones: ~87% padding
    assert 0.2 < entry(cache, "six_s")["audio_padded_share"] < SHORT_CLIP_PADDED_SHARE
    assert cache.manifest["problems"]["flagged"]["short_clip"] == {"count": 1, "clips": ["one_s______.000"]}
    # the archive member that is short is kept, and its padding really is zeros first
    arrays = cache.split("validation")
    audio = arrays.audio[arrays.clip_ids.index("one_s______.000"), :, :, 0]
    t = entry(cache, "one_s")["audio_frames"]
    assert not audio[:, : m - t].any() and audio[:, m - t:].any()


def test_prediction_flags_a_short_clip_against_the_caches_m(archive_cache, tmp_path):
    cache, sources = archive_cache
    m = cache.manifest["mfcc_frames_mean"]
    clip = extract_clip_features(sources["six_s"], PreprocessParams(), m)
    assert clip.info["audio_padded_share"] == entry(cache, "six_s")["audio_padded_share"]
    assert "short_clip" not in clip.flags
    twice = extract_clip_features(sources["six_s"], PreprocessParams(), 4 * m)  # M of 32 s clips: 6 s is short
    assert "short_clip" in twice.flags and twice.info["audio_padded_share"] > 0.8
    silent_video = make_clip(tmp_path / "no_audio.mp4", 1, audio=False)
    no_audio = extract_clip_features(silent_video, PreprocessParams(), m)
    assert no_audio.info["audio_padded_share"] == 1.0 and "short_clip" not in no_audio.flags  # no_audio_stream says it
    assert cache_module._padding_verdict(251, 500) == (0.498, False)
    assert cache_module._padding_verdict(249, 500) == (0.502, True)
    assert cache_module._padding_verdict(900, 500) == (0.0, False)  # truncated, not padded


# ----------------------------------------------------------------------------------------
# 3: variable frame rate without false decode errors; a damaged clip keeps them


def test_variable_frame_rate_clip_decodes_without_a_decode_errors_flag(tmp_path):
    segments = [make_clip(tmp_path / f"seg{r}.mp4", 1, rate=r) for r in (30, 15, 25)]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{s}'\n" for s in segments))
    vfr = tmp_path / "vfr.mp4"
    ffmpeg("-f", "concat", "-safe", "0", "-i", listing, "-c", "copy", vfr)
    clip = extract_clip_features(vfr, PreprocessParams(), 100)
    assert clip.status == "ok" and clip.info["video_frames"] == 30 + 15 + 25
    assert "decode_errors" not in clip.flags and "frame_count_mismatch" not in clip.flags, clip
    assert clip.detail == ""
    # the same clip with damaged packets still gets the flag
    data = bytearray(make_clip(tmp_path / "fast.mp4", 2, audio=False,
                               extra=("-g", "10", "-movflags", "+faststart")).read_bytes())
    start = data.find(b"mdat") + (len(data) - data.find(b"mdat")) // 3
    data[start:start + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    damaged = extract_clip_features(tmp_path / "damaged.mp4", PreprocessParams(), 100)
    assert damaged.status == "ok" and "decode_errors" in damaged.flags, damaged
    mismatch, error = damaged.detail.split("; ")
    assert mismatch.startswith("container says 60 frames") and error.startswith("[")  # the decoder's own message
    assert not re.match(r"\[(null|rawvideo|f32le)\]", error)


def test_timestamp_complaints_of_our_own_outputs_are_notices_not_errors():
    text = "\n".join([
        "[null] Application provided invalid, non monotonically increasing dts to muxer in stream 0: 59 >= 55",
        "    Last message repeated 2 times",
        "[h264] error while decoding MB 3 4, bytestream -5",
        "    Last message repeated 1 times",
        "[f32le] Application provided invalid, non monotonically increasing dts to muxer in stream 0: 16331 >= 16331",
        "[rawvideo] Non-monotonous DTS in output stream 1:0; previous: 5, current: 4",
        "[mov,mp4,m4a,3gp,3g2,mj2] stream 0, offset 0x30: partial file",
        "[NULL] Invalid NAL unit size, pts 5",  # a decoder context without a name: not our null muxer
    ])
    errors, notices = split_tool_messages(text)
    assert errors.splitlines() == ["[h264] error while decoding MB 3 4, bytestream -5",
                                   "    Last message repeated 1 times",
                                   "[mov,mp4,m4a,3gp,3g2,mj2] stream 0, offset 0x30: partial file",
                                   "[NULL] Invalid NAL unit size, pts 5"]
    assert len(notices.splitlines()) == 4 and notices.startswith("[null]")
    assert split_tool_messages("") == ("", "")


# ----------------------------------------------------------------------------------------
# 4: rotated clips


def test_rotated_clip_is_flagged_sized_and_decoded_as_displayed(tmp_path):
    stored = tmp_path / "stored.mp4"  # 256x144 white with a red band over the left 32 columns
    ffmpeg("-f", "lavfi", "-i",
           "color=c=white:size=256x144:rate=30:duration=1,drawbox=x=0:y=0:w=32:h=144:color=red:t=fill",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", stored)
    rotated = tmp_path / "rotated.mp4"
    if ffmpeg_major() >= 6:
        ffmpeg("-display_rotation", "90", "-i", stored, "-c", "copy", rotated)
    else:
        ffmpeg("-i", stored, "-c", "copy", "-metadata:s:v", "rotate=90", rotated)
    media = probe(rotated)
    if media.quarter_turns == 0:
        pytest.skip("this ffmpeg wrote no display rotation")
    assert (media.width, media.height, media.display_width, media.display_height) == (256, 144, 144, 256)
    clip = extract_clip_features(rotated, PreprocessParams(), 10)
    assert clip.status == "ok"
    assert clip.info["source_size"] == [144, 256] and clip.info["coded_size"] == [256, 144]
    assert clip.info["rotation"] in (90, 270)
    assert {"rotated", "odd_resolution"} <= set(clip.flags)  # 9:16 as displayed
    assert clip.info["crop"] == {"top": 0, "bottom": 256, "left": 0, "right": 144}
    # ffmpeg's own upright picture, fitted the same way: portrait, 79 columns centred in 248
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(rotated), "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    upright = np.frombuffer(raw, np.uint8).reshape(1, 256, 144, 3)
    expected = fit_frames(upright, CropBox(0, 256, 0, 144))[0].astype(int)
    frame = clip.frames[0].astype(int)
    assert np.abs(frame - expected).mean() < 3
    lit = frame.max(axis=(0, 2)) > 0
    assert not lit[:84].any() and lit[84:163].all() and not lit[163:].any()  # round(144 * 140 / 256) = 79
    red = (frame[..., 0] > 150) & (frame[..., 1] < 80)
    rows, cols = np.flatnonzero(red.any(axis=1)), np.flatnonzero(red.any(axis=0))
    assert rows.size <= 19 and (rows.max() < 19 or rows.min() > 120)  # the band is along the top or bottom
    assert cols.size >= 75  # across the picture's whole width
    plain = extract_clip_features(stored, PreprocessParams(), 10)
    assert plain.info["rotation"] == 0 and "rotated" not in plain.flags and plain.info["source_size"] == [256, 144]


def test_quarter_turns_follow_ffmpegs_autorotation():
    from fi_data.ffmpeg_tools import ProbeInfo

    for rotation, turns in ((0, 0), (90, 1), (89, 1), (180, 2), (270, 3), (359, 0), (45, 0)):
        info = ProbeInfo(True, False, 1280, 720, rotation=rotation)
        assert info.quarter_turns == turns, rotation
        assert (info.display_width, info.display_height) == ((720, 1280) if turns % 2 else (1280, 720))


# ----------------------------------------------------------------------------------------
# The legend: every flag the code can emit has a meaning


def _string_constants(node) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def emitted_flags() -> set[str]:
    """Every flag literal in the extraction code: ``flags.append("...")`` and the string items of
    lists/tuples assigned to a ``flags`` name in fi_data/cache.py, and the strings that
    fi_data/audio.py's flag functions return."""
    found = set()
    tree = ast.parse((FI_DATA / "cache.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "flags"):
            found |= _string_constants(node)
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any("flags" in ast.unparse(t) for t in targets):  # flags = ... + ["short_clip"]
                for listed in (n for n in ast.walk(node.value) if isinstance(n, (ast.List, ast.Tuple))):
                    found |= {e.value for e in listed.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    audio_tree = ast.parse((FI_DATA / "audio.py").read_text())
    for fn in audio_tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("audio_problem", "waveform_features"):
            for ret in (n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None):
                found |= {s for s in _string_constants(ret.value) if re.fullmatch(r"[a-z_]+", s)}
    return found


def test_every_flag_the_code_can_emit_is_in_the_legend():
    found = emitted_flags()
    assert {"mono_audio", "rotated", "odd_resolution", "decode_errors", "short_clip", "silent_audio",
            "no_audio_stream", "audio_zero_length"} <= found  # the scan really sees them
    assert found <= set(CLIP_FLAGS), found - set(CLIP_FLAGS)
    assert set(CLIP_FLAGS) <= found  # and no legend entry is stale
    assert all(isinstance(v, str) and v and "\n" not in v for v in CLIP_FLAGS.values())
    doc = cache_module.__doc__
    assert all(f"``{flag}``" in doc for flag in CLIP_FLAGS), [f for f in CLIP_FLAGS if f"``{flag}``" not in doc]


def test_flags_of_real_kept_clips_are_all_in_the_legend(archive_cache):
    cache, _ = archive_cache
    seen = {f for e in cache.manifest["clips"].values() for f in e["flags"]}
    assert seen and seen <= set(CLIP_FLAGS)
    json.dumps(CLIP_FLAGS)  # printable as is
