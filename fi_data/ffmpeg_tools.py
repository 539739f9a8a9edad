"""The ffmpeg / ffprobe executables: presence check, probing, and one-pass clip decoding.

Every call builds an argument list (never a shell string) and names its input as
``file:<absolute path>``, so file names that start with ``-`` or contain ``:`` are read as
files, never as options or protocols. ffmpeg runs in its own session
(``start_new_session=True``): a Ctrl-C in the terminal reaches the Python processes, which
stop it cleanly, instead of killing ffmpeg mid-clip and making a good clip look corrupt.

One clip is decoded ONCE by :func:`decode_clip`: a single ffmpeg process decodes the video
and the audio together, counts the video frames that really decode, passes only the selected
frames on to scaling (so the resize costs six frames, not 459) and writes the audio as raw
float32 PCM.

Only real decode errors count as errors (:attr:`Decoded.errors`). The timestamp complaints of
this module's own output muxers (``[null]``, ``[rawvideo]``, ``[f32le]``: "non monotonically
increasing dts", which a variable-frame-rate clip or a clip concatenated from segments
produces while every frame decodes cleanly) say nothing about the clip's data; they are kept
apart in :attr:`Decoded.notices` (see :func:`split_tool_messages`).

Rotation: a phone clip may be stored sideways with a display matrix saying how to show it.
:func:`probe` reads it (:attr:`ProbeInfo.rotation`) and gives the displayed size
(:attr:`ProbeInfo.display_width` / :attr:`ProbeInfo.display_height`); ffmpeg's decoder output
is already turned upright (auto-rotation, on by default, also for ``-filter_complex``
inputs), so frames are requested at the displayed size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

INSTALL_ADVICE = (
    "ffmpeg and ffprobe are needed to read the video clips and were not found on PATH. "
    "Install them, e.g. `sudo apt-get install ffmpeg` (Debian/Ubuntu), `brew install ffmpeg` "
    "(macOS), `conda install -c conda-forge ffmpeg`, or a static build from "
    "https://ffmpeg.org/download.html, then check that `ffmpeg -version` works."
)


class FFmpegNotFoundError(RuntimeError):
    """ffmpeg or ffprobe is not installed (the message says how to install it)."""


class MediaError(Exception):
    """A clip that cannot be read.

    Attributes:
        reason: a short code recorded in the cache manifest, e.g. ``"unreadable_container"``.
        detail: the tool's own message (first lines of ffprobe/ffmpeg stderr), for humans.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@functools.lru_cache(maxsize=None)
def require_ffmpeg() -> tuple[str, str]:
    """Return the paths of ``(ffmpeg, ffprobe)``.

    Raises:
        FFmpegNotFoundError: if either is missing from PATH, with install advice.
    """
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    missing = [name for name, found in (("ffmpeg", ffmpeg), ("ffprobe", ffprobe)) if not found]
    if missing:
        raise FFmpegNotFoundError(f"{' and '.join(missing)} not found. {INSTALL_ADVICE}")
    return ffmpeg, ffprobe


@functools.lru_cache(maxsize=None)
def ffmpeg_version() -> str:
    """The first line of ``ffmpeg -version`` (recorded in the cache manifest)."""
    out = subprocess.run([require_ffmpeg()[0], "-version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def passthrough_args() -> list[str]:
    """Output options that pass decoded frames through one for one (no duplicates, no drops)."""
    match = re.match(r"ffmpeg version n?(\d+)\.(\d+)", ffmpeg_version())
    if match and (int(match[1]), int(match[2])) < (5, 1):  # -fps_mode is new in ffmpeg 5.1
        return ["-vsync", "passthrough"]
    return ["-fps_mode", "passthrough"]


def input_url(path: str | Path) -> str:
    """``file:<absolute path>``: a name ffmpeg can never mistake for an option or protocol."""
    return "file:" + str(Path(path).absolute())


def _tool_messages(raw: bytes) -> str:
    """ffmpeg's stderr without its per-run object addresses (``[h264 @ 0x55d...]``)."""
    return re.sub(r" @ 0x[0-9a-fA-F]+\]", "]", raw.decode("utf-8", "replace")).strip()


def _first_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[:n])


_OWN_MUXERS = ("null", "rawvideo", "f32le")
"""The output formats :func:`decode_clip` writes to; their messages are about our outputs."""

_TIMESTAMP_NOTICE = re.compile(  # muxer names are case-sensitive: "[NULL]" is a decoder with no name
    r"^\[(?:" + "|".join(_OWN_MUXERS) + r")\] .*(?i:\bdts\b|\bpts\b|timestamp)"
    r"|^Non-monotonous DTS in output stream")
_REPEATED = re.compile(r"^\s*Last message repeated \d+ times?$")


def split_tool_messages(text: str) -> tuple[str, str]:
    """Split ffmpeg's (address-free) stderr into ``(errors, notices)``.

    ``notices`` are the timestamp complaints of :func:`decode_clip`'s own output muxers
    (``[null]``, ``[rawvideo]``, ``[f32le]`` lines about dts/pts/timestamps, and ffmpeg's
    "Non-monotonous DTS in output stream"), with the "Last message repeated N times" lines that
    follow them: a variable-frame-rate or concatenated clip produces them while every frame
    decodes. Everything else (e.g. ``[h264] error while decoding MB``) is an error. Both are
    newline-joined, in their original order ("" when none).
    """
    errors, notices = [], []
    target = errors
    for line in text.splitlines():
        if _REPEATED.match(line):
            target.append(line)  # belongs to the line before it
            continue
        target = notices if _TIMESTAMP_NOTICE.match(line.strip()) else errors
        target.append(line)
    return "\n".join(errors).strip(), "\n".join(notices).strip()


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired as e:  # subprocess.run has already killed the child
        raise MediaError("decode_timeout", f"{Path(args[0]).name} ran longer than {timeout_s:g} s") from e


@dataclasses.dataclass(frozen=True)
class ProbeInfo:
    """What the container says about a clip (hints; decoding is the truth).

    Attributes:
        has_video, has_audio: whether a (non cover-art) video / an audio stream exists.
        width, height: coded (stored) size of the first video stream in pixels (0 if no
            video).
        frame_count_hint: the container's frame count (``nb_frames``, else duration x
            frame rate), or ``None`` when it gives neither.
        audio_channels: of the first audio stream (0 if none).
        rotation: the video stream's display rotation in degrees, as ffprobe reports it
            (display matrix side data, else the old ``rotate`` tag), brought into ``[0, 360)``
            and rounded to a whole degree; 0 when none.
    """

    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    frame_count_hint: int | None = None
    audio_channels: int = 0
    rotation: int = 0

    @property
    def quarter_turns(self) -> int:
        """The rotation ffmpeg's auto-rotation applies on decode, in quarter turns (0-3).

        ffmpeg turns a picture only by a multiple of 90 degrees (within 1 degree); any other
        angle is decoded as stored, so it counts as 0 here.
        """
        turns, rest = divmod(self.rotation + 1, 90)
        return turns % 4 if rest <= 2 else 0

    @property
    def display_width(self) -> int:
        """Width in pixels of the frames as shown (and as decoded): the coded height when the
        clip is turned a quarter (90 or 270 degrees), else the coded width."""
        return self.height if self.quarter_turns % 2 else self.width

    @property
    def display_height(self) -> int:
        """Height in pixels of the frames as shown (and as decoded); see :attr:`display_width`."""
        return self.width if self.quarter_turns % 2 else self.height


def _rate(text: str | None) -> float:
    try:
        num, _, den = (text or "0/0").partition("/")
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


def _stream_rotation(stream: dict) -> int:
    """Display rotation in degrees ``[0, 360)`` of one ffprobe stream dict (0 when none)."""
    values = [d["rotation"] for d in stream.get("side_data_list", []) if "rotation" in d]
    if not values and "rotate" in stream.get("tags", {}):
        values = [stream["tags"]["rotate"]]
    try:
        return round(float(values[0])) % 360 if values else 0
    except (TypeError, ValueError):
        return 0


def probe(path: str | Path, timeout_s: float = 60.0) -> ProbeInfo:
    """Read a clip's stream headers with ffprobe (no decoding).

    Returns:
        A :class:`ProbeInfo` (sizes in pixels; coded size plus the rotation, from which the
        displayed size follows).

    Raises:
        MediaError: ``"unreadable_container"`` if ffprobe cannot parse the file (e.g. the
            MP4 ``moov`` atom is missing, or it is not a media file); ``"decode_timeout"``.
        FFmpegNotFoundError: if ffprobe is not installed.
    """
    cmd = [require_ffmpeg()[1], "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
           input_url(path)]
    out = _run(cmd, timeout_s)
    if out.returncode != 0:
        raise MediaError("unreadable_container", _first_lines(_tool_messages(out.stderr)))
    data = json.loads(out.stdout or b"{}")
    streams = data.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    info = {"has_video": bool(video), "has_audio": bool(audio)}
    if video:
        v = video[0]
        hint = int(v["nb_frames"]) if str(v.get("nb_frames", "")).isdigit() else 0
        if hint <= 0:
            duration = float(v.get("duration") or data.get("format", {}).get("duration") or 0.0)
            hint = round(duration * _rate(v.get("avg_frame_rate")))
        info.update(width=int(v.get("width") or 0), height=int(v.get("height") or 0),
                    frame_count_hint=hint if hint > 0 else None, rotation=_stream_rotation(v))
    if audio:
        info["audio_channels"] = int(audio[0].get("channels") or 0)
    return ProbeInfo(**info)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """The output of one :func:`decode_clip` run.

    Attributes:
        n_video_frames: how many video frames really decoded.
        frames: uint8 ``(k, H, W, 3)`` RGB, the selected frames in increasing index order
            (``k`` = number of distinct selected indices that exist).
        audio: float32 ``(n_samples, channels)`` in [-1, 1] at the requested rate, or ``None``
            when audio was not requested.
        errors: ffmpeg's error messages about the clip ("" when the decode was clean); the
            timestamp complaints of our own outputs are not among them (see ``notices``).
        notices: those timestamp complaints (:func:`split_tool_messages`), for humans; they
            never make a clip suspect.
    """

    n_video_frames: int
    frames: np.ndarray
    audio: np.ndarray | None
    errors: str
    notices: str = ""


def select_expression(indices) -> str:
    """An ffmpeg ``select`` filter keeping the frames whose 0-based decode index is in ``indices``."""
    terms = "+".join(f"eq(n\\,{int(i)})" for i in sorted(set(indices)))
    return f"select='{terms}'"


def decode_clip(path: str | Path, *, frame_indices, frame_chain: str, frame_size: tuple[int, int],
                audio_rate: int | None, audio_channels: int = 0, threads: int = 1,
                skip_loop_filter: bool = True, timeout_s: float = 300.0,
                tmp_dir: str | Path | None = None) -> Decoded:
    """Decode a clip once: count its video frames, keep some, and extract its audio.

    Args:
        path: the video file.
        frame_indices: 0-based decode indices of the frames to keep (may be empty: count only).
        frame_chain: ffmpeg filters applied to each kept frame, ending in ``rgb24`` frames of
            ``frame_size`` (see ``fi_data.video.resize_chain``).
        frame_size: ``(height, width)`` of the frames ``frame_chain`` produces (for a rotated
            clip, the displayed orientation: ffmpeg turns frames upright before the chain).
        audio_rate: sample rate in Hz for the audio, or ``None`` for no audio.
        audio_channels: channels to decode (the probed count, so the caller can mix them down
            itself; 0 lets ffmpeg mix down to mono).
        threads: decoder threads (1 when several clips are decoded in parallel; 0 = auto).
        skip_loop_filter: skip H.264's deblocking filter (faster; its effect does not survive
            the downscale to 140 px).
        timeout_s: wall-clock limit for ffmpeg.
        tmp_dir: folder for the raw outputs (a private sub-folder is made and removed).

    Raises:
        MediaError: ``"no_decodable_frames"`` (ffmpeg failed before any video frame decoded),
            ``"decode_failed"`` (it failed later), ``"decode_timeout"``.
        FFmpegNotFoundError: if ffmpeg is not installed.
    """
    height, width = frame_size
    indices = sorted(set(int(i) for i in frame_indices))
    with tempfile.TemporaryDirectory(prefix=f"decode-{os.getpid()}-", dir=tmp_dir) as tmp:
        frames_file, audio_file = Path(tmp) / "frames.rgb", Path(tmp) / "audio.f32"
        cmd = [require_ffmpeg()[0], "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats",
               "-progress", "pipe:1", "-threads", str(threads), "-filter_complex_threads", "1"]
        if skip_loop_filter:
            cmd += ["-skip_loop_filter", "all"]
        cmd += ["-i", input_url(path)]
        # Output 0 is a null sink fed every decoded frame: ffmpeg's progress report counts the
        # frames of the first video output, which is therefore the number that really decode.
        graph = "[0:V:0]split=2[count][pick];[pick]" + (select_expression(indices) if indices else "select=0")
        graph += f",{frame_chain}[frames]"
        cmd += ["-filter_complex", graph,
                "-map", "[count]", *passthrough_args(), "-f", "null", "-",
                "-map", "[frames]", *passthrough_args(), "-f", "rawvideo", input_url(frames_file)]
        channels = audio_channels or 1
        if audio_rate:
            cmd += ["-map", "0:a:0", "-ar", str(audio_rate), "-ac", str(channels), "-c:a", "pcm_f32le",
                    "-f", "f32le", input_url(audio_file)]
        out = _run(cmd, timeout_s)
        messages = _tool_messages(out.stderr)
        errors, notices = split_tool_messages(messages)
        counts = re.findall(rb"^frame=(\d+)", out.stdout, flags=re.MULTILINE)
        n_video = int(counts[-1]) if counts else 0
        if out.returncode != 0:  # with no frame at all, ffmpeg cannot even set up the filters
            raise MediaError("decode_failed" if n_video else "no_decodable_frames",
                             _first_lines(errors or messages) or f"ffmpeg exit status {out.returncode}")
        raw = np.fromfile(frames_file, dtype=np.uint8) if frames_file.exists() else np.zeros(0, np.uint8)
        per_frame = height * width * 3
        if raw.size % per_frame:
            raise MediaError("decode_failed", f"frame output of {raw.size} bytes is not whole {width}x{height} frames")
        frames = raw.reshape(-1, height, width, 3)
        audio = None
        if audio_rate:
            samples = np.fromfile(audio_file, dtype="<f4") if audio_file.exists() else np.zeros(0, np.float32)
            audio = samples[: samples.size - samples.size % channels].reshape(-1, channels).astype(np.float32)
    return Decoded(n_video_frames=n_video, frames=frames, audio=audio, errors=errors, notices=notices)
