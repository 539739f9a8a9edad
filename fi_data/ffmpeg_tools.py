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
"""

from __future__ import annotations

import dataclasses
import functools
import json
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
        width, height: coded size of the first video stream in pixels (0 if no video).
        frame_count_hint: the container's frame count (``nb_frames``, else duration x
            frame rate), or ``None`` when it gives neither.
        audio_channels: of the first audio stream (0 if none).
    """

    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    frame_count_hint: int | None = None
    audio_channels: int = 0


def _rate(text: str | None) -> float:
    try:
        num, _, den = (text or "0/0").partition("/")
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


def probe(path: str | Path, timeout_s: float = 60.0) -> ProbeInfo:
    """Read a clip's stream headers with ffprobe (no decoding).

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
                    frame_count_hint=hint if hint > 0 else None)
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
        errors: ffmpeg's error messages ("" when the decode was clean).
    """

    n_video_frames: int
    frames: np.ndarray
    audio: np.ndarray | None
    errors: str


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
        frame_size: ``(height, width)`` of the frames ``frame_chain`` produces.
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
    with tempfile.TemporaryDirectory(prefix="decode-", dir=tmp_dir) as tmp:
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
        errors = _tool_messages(out.stderr)
        counts = re.findall(rb"^frame=(\d+)", out.stdout, flags=re.MULTILINE)
        n_video = int(counts[-1]) if counts else 0
        if out.returncode != 0:  # with no frame at all, ffmpeg cannot even set up the filters
            raise MediaError("decode_failed" if n_video else "no_decodable_frames",
                             _first_lines(errors) or f"ffmpeg exit status {out.returncode}")
        raw = np.fromfile(frames_file, dtype=np.uint8) if frames_file.exists() else np.zeros(0, np.uint8)
        per_frame = height * width * 3
        if raw.size % per_frame:
            raise MediaError("decode_failed", f"frame output of {raw.size} bytes is not whole {width}x{height} frames")
        frames = raw.reshape(-1, height, width, 3)
        audio = None
        if audio_rate:
            samples = np.fromfile(audio_file, dtype="<f4") if audio_file.exists() else np.zeros(0, np.float32)
            audio = samples[: samples.size - samples.size % channels].reshape(-1, channels).astype(np.float32)
    return Decoded(n_video_frames=n_video, frames=frames, audio=audio, errors=errors)
