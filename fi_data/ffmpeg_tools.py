"""The ffmpeg / ffprobe executables: presence check, probing, and clip decoding.

Every call builds an argument list (never a shell string) and names its input as
``file:<absolute path>``, so file names that start with ``-`` or contain ``:`` are read as
files, never as options or protocols. ffmpeg runs in its own session
(``start_new_session=True``): a Ctrl-C in the terminal reaches the Python processes, which
stop it cleanly, instead of killing ffmpeg mid-clip and making a good clip look corrupt.

One clip is decoded by :func:`decode_clip`, in one of two ways:

- **Full decode** (always correct, and the fallback): one ffmpeg process decodes every video
  frame; a null sink counts the frames that really decode, a ``select`` filter passes only the
  selected frames on to scaling (so the resize costs six frames, not 459), and the audio is
  written as raw float32 PCM in the same run.
- **Packet skipping** (the fast path): taken only when :func:`probe` was asked for the packet
  index and found it sound (:class:`VideoPackets`: an H.264 MP4 whose packets number exactly
  the container's frame count, so the sampled frames are the same ones, and whose pictures'
  NAL headers allow it), and the skipped pictures are worth a second process
  (:data:`MIN_SKIPPED_PIXELS`). The frame count is then the packet count (ffprobe only
  demuxes). A decoder needs, for each selected frame, only the IDR picture before it and the
  reference pictures from there up to it; so one ffmpeg copies the video packets without
  decoding and drops all the others (the non-reference pictures, about half of an x264
  stream with B-frames, and the stretches after each group of selected frames up to the next
  IDR), and a second decodes what is left, and the audio from the file with ``-vn`` (no video
  decode at all). On a release clip (459 frames, an IDR every 250, 3 B-frames) about 40% of
  the pictures decode. The shortened stream decodes to the same pictures bit for bit (no
  picture is predicted from a non-reference one, and decoding restarts at each IDR); the
  kept frames leave the decoder in pts order, so the selected ones are picked by their place
  among them. Its result is used only when it is whole: both processes exit 0 without an
  error message, exactly one frame per kept packet decodes, and every selected frame (and the
  audio) is there; otherwise :func:`decode_clip` runs the full decode, whose frames, count
  and errors are then today's. What packet skipping cannot see: damage in a packet it skips
  (``ffprobe``'s H.264 parser does catch a broken NAL unit length while reading the index);
  such a clip gets neither ``decode_errors`` nor a smaller frame count.

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

import bisect
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
class VideoPackets:
    """The first video stream's packet index, read without decoding, for the packet-skipping path.

    :func:`probe` gives one (``packets=True``) only when every condition below holds (checked by
    :func:`_video_packets`), so that the frames a shortened stream decodes are bit for bit the
    frames of the full decode, and frame ``k`` of the full decode (the ``k``-th the decoder hands
    on) is the packet with the ``k``-th smallest pts:

    - MP4/MOV with H.264 (one packet is one frame; the release clips); ffprobe read every packet
      without a message; the packets number exactly the container's ``nb_frames`` (a cut file
      has fewer); each has a pts, a dts, a byte position and a size, and none is marked
      discarded or corrupt; the pts are distinct.
    - The decoder's reorder depth (ffprobe's ``has_b_frames``) is at least the stream's own (the
      most packets that come before one in the file but after it in pts), so frames leave the
      decoder in pts order.
    - Every packet's NAL units, read from the file (4-byte lengths, which must add up to the
      packet's size): the first packet is an IDR picture with the smallest pts and may carry
      SEI and parameter sets; every other packet holds only slices of one picture (all IDR, or
      all non-IDR with one reference flag), access unit delimiters and filler. So no parameter
      set or SEI is ever skipped, and the IDR pictures' pts increase in file order.

    Attributes:
        pts: each packet's presentation timestamp, in file (decode) order.
        kind: each packet's picture, in the same order: ``"I"`` an IDR picture (decoding may
            start there), ``"R"`` a reference picture, ``"N"`` a non-reference picture (no other
            picture is predicted from it, so a decode that does not output it may skip it).
        pixels: pixels per picture (the coded width x height), to weigh what skipping saves.
    """

    pts: tuple[int, ...]
    kind: tuple[str, ...]
    pixels: int = 0

    def __len__(self) -> int:
        return len(self.pts)


_NAL_SLICE, _NAL_IDR, _NAL_SKIPPABLE = 1, 5, frozenset({9, 12})  # AUD and filler: no effect on decoding


def _picture_kinds(path: str | Path, packets: list[dict]) -> tuple[str, ...] | None:
    """Each packet's ``kind`` (:class:`VideoPackets`) from its NAL unit headers, or ``None``
    when one is not as :class:`VideoPackets` requires."""
    kinds = []
    with open(path, "rb") as f:
        for i, packet in enumerate(packets):
            pos, size = packet["pos"], packet["size"]
            offset, vcl = 0, set()
            while offset < size:
                f.seek(pos + offset)
                head = f.read(5)
                if len(head) < 5 or head[4] & 0x80:  # cut short, or the forbidden bit set
                    return None
                nal_type, ref = head[4] & 0x1F, head[4] >> 5 & 3
                if nal_type in (_NAL_SLICE, _NAL_IDR):
                    vcl.add((nal_type, ref > 0))
                elif i > 0 and nal_type not in _NAL_SKIPPABLE:
                    return None  # an SEI or a parameter set after the first packet
                offset += 4 + int.from_bytes(head[:4], "big")
            if offset != size or len(vcl) != 1:
                return None
            ((nal_type, is_ref),) = vcl
            if i == 0 and nal_type != _NAL_IDR:
                return None
            kinds.append("I" if nal_type == _NAL_IDR else "R" if is_ref else "N")
    return tuple(kinds)


def _reorder_depth(pts: tuple[int, ...]) -> int:
    """The most packets that precede one in file order but follow it in pts order."""
    seen: list[int] = []
    depth = 0
    for i, t in enumerate(pts):
        depth = max(depth, i - bisect.bisect_right(seen, t))
        bisect.insort(seen, t)
    return depth


def _video_packets(path: str | Path, data: dict, video: dict) -> VideoPackets | None:
    """The :class:`VideoPackets` of ``video`` (an ffprobe stream dict) from ffprobe's JSON
    ``data`` with packets, or ``None`` unless every condition of :class:`VideoPackets` holds."""
    if "mov" not in data.get("format", {}).get("format_name", "").split(",") or video.get("codec_name") != "h264":
        return None
    packets = [p for p in data.get("packets", []) if p.get("stream_index") == video.get("index")]
    if not (packets and str(video.get("nb_frames", "")).isdigit() and int(video["nb_frames"]) == len(packets)):
        return None
    for p in packets:
        try:
            p["pos"], p["size"] = int(p["pos"]), int(p["size"])
        except (KeyError, TypeError, ValueError):
            return None
        if (not isinstance(p.get("pts"), int) or not isinstance(p.get("dts"), int) or p["pos"] < 0
                or any(c in str(p.get("flags", "")) for c in "DC")):
            return None
    pts = tuple(p["pts"] for p in packets)
    if len(set(pts)) != len(pts) or pts[0] != min(pts):
        return None
    if not isinstance(video.get("has_b_frames"), int) or video["has_b_frames"] < _reorder_depth(pts):
        return None
    try:
        kinds = _picture_kinds(path, packets)
    except OSError:
        return None
    idr_pts = [t for t, k in zip(pts, kinds or ()) if k == "I"]
    if kinds is None or any(b <= a for a, b in zip(idr_pts, idr_pts[1:])):
        return None
    return VideoPackets(pts, kinds, int(video.get("width") or 0) * int(video.get("height") or 0))


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
        video_packets: the packet index that lets :func:`decode_clip` skip packets
            (:class:`VideoPackets`), or ``None`` (not asked for, or skipping would not be
            exact). Not part of equality or ``repr``.
    """

    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    frame_count_hint: int | None = None
    audio_channels: int = 0
    rotation: int = 0
    video_packets: VideoPackets | None = dataclasses.field(default=None, repr=False, compare=False)

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


def probe(path: str | Path, timeout_s: float = 60.0, *, packets: bool = False) -> ProbeInfo:
    """Read a clip's stream headers with ffprobe (no decoding).

    Args:
        path: the clip.
        timeout_s: wall-clock limit for ffprobe.
        packets: also read the packet index (ffprobe demuxes the whole file, which costs
            little beside its start; then one read of each packet's NAL unit headers) and keep
            it as :attr:`ProbeInfo.video_packets` when skipping packets would be exact. When
            that run gives any message or fails, the headers are read again by the plain run,
            so the result (and every error) is the plain run's.

    Returns:
        A :class:`ProbeInfo` (sizes in pixels; coded size plus the rotation, from which the
        displayed size follows).

    Raises:
        MediaError: ``"unreadable_container"`` if ffprobe cannot parse the file (e.g. the
            MP4 ``moov`` atom is missing, or it is not a media file); ``"decode_timeout"``.
        FFmpegNotFoundError: if ffprobe is not installed.
    """
    cmd = [require_ffmpeg()[1], "-v", "error", "-print_format", "json", "-show_streams", "-show_format"]
    data = None
    if packets:
        out = _run(cmd + ["-show_entries", "packet=stream_index,pts,dts,flags,pos,size", input_url(path)], timeout_s)
        if out.returncode == 0 and not out.stderr.strip():
            data = json.loads(out.stdout or b"{}")
    if data is None:
        out = _run(cmd + [input_url(path)], timeout_s)
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
                    frame_count_hint=hint if hint > 0 else None, rotation=_stream_rotation(v),
                    video_packets=_video_packets(path, data, v) if "packets" in data else None)
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
        fast_path: True when the frames came from the packet-skipping path (``n_video_frames``
            is then the packet count), False for the full decode.
    """

    n_video_frames: int
    frames: np.ndarray
    audio: np.ndarray | None
    errors: str
    notices: str = ""
    fast_path: bool = False


def select_expression(indices) -> str:
    """An ffmpeg ``select`` filter keeping the frames whose 0-based decode index is in ``indices``."""
    terms = "+".join(f"eq(n\\,{int(i)})" for i in sorted(set(indices)))
    return f"select='{terms}'"


def decode_clip(path: str | Path, *, frame_indices, frame_chain: str, frame_size: tuple[int, int],
                audio_rate: int | None, audio_channels: int = 0, threads: int = 1,
                skip_loop_filter: bool = True, timeout_s: float = 300.0,
                tmp_dir: str | Path | None = None, packets: VideoPackets | None = None) -> Decoded:
    """Decode a clip: count its video frames, keep some, and extract its audio.

    With ``packets`` (from ``probe(path, packets=True).video_packets``) and at least one index,
    all below ``len(packets)``, it first takes the packet-skipping path (module docstring;
    :func:`_skip_plan` says which packets, and when there is no plan): only the pictures the
    selected frames need decode, and the count is ``len(packets)``. It returns that result only
    when it is whole (both ffmpeg processes exit 0 without an error message, timestamp notices
    aside; one frame decodes per kept packet; every selected frame, and the audio file when
    asked, is there). Otherwise, and without ``packets``, one ffmpeg decodes every frame (the
    full decode). The frames are the same either way: frame ``k`` is the ``k``-th the decoder
    hands on.

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
        timeout_s: wall-clock limit for each decode (there are two when the packet-skipping
            path gives up).
        tmp_dir: folder for the raw outputs (a private sub-folder is made and removed).
        packets: the clip's :class:`VideoPackets`, which allows the packet-skipping path.

    Raises:
        MediaError: ``"no_decodable_frames"`` (ffmpeg failed before any video frame decoded),
            ``"decode_failed"`` (it failed later), ``"decode_timeout"`` (either path ran out of
            time).
        FFmpegNotFoundError: if ffmpeg is not installed.
    """
    indices = sorted(set(int(i) for i in frame_indices))
    common = dict(frame_chain=frame_chain, frame_size=frame_size, audio_rate=audio_rate,
                  audio_channels=audio_channels, threads=threads, skip_loop_filter=skip_loop_filter,
                  timeout_s=timeout_s)
    with tempfile.TemporaryDirectory(prefix=f"decode-{os.getpid()}-", dir=tmp_dir) as tmp:
        plan = _skip_plan(packets, indices) if packets is not None else None
        if plan is not None:
            fast = _skip_decode(path, packets, plan, Path(tmp), **common)
            if fast is not None:
                return fast
            for leftover in Path(tmp).iterdir():
                leftover.unlink()
        return _full_decode(path, indices, Path(tmp), **common)


MIN_SKIPPED_PIXELS = 40_000_000
"""The packet-skipping path is taken only when the pictures it skips hold at least this many
pixels (skipped packets x :attr:`VideoPackets.pixels`): about 0.1 s of one-thread decoding,
what its second ffmpeg process and the pipe cost (e.g. 44 skipped 1280x720 pictures; a
2-second 192x144 clip never qualifies)."""

MAX_DROP_RUNS = 512
"""Most runs of consecutive skipped packets the packet-skipping path drops one by one (the
``noise`` filter's expressions cost about runs x packets); beyond that, only the stretches
between groups of selected frames are skipped (a long clip)."""

_RUNS_PER_FILTER = 64
"""Runs per ``noise`` bitstream filter (one ffmpeg expression parses at most about 90 terms)."""


@dataclasses.dataclass(frozen=True)
class _SkipPlan:
    """Which packets the shortened stream keeps: ``kept``, file positions (increasing); ``pick``,
    the selected frames' places among the kept frames in pts order (increasing); ``dropped``,
    the runs ``(first, last)`` of skipped file positions before the last kept one."""

    kept: tuple[int, ...]
    pick: tuple[int, ...]
    dropped: tuple[tuple[int, int], ...]

    def drop_filters(self) -> str:
        """``noise`` bitstream filters (``drop`` expressions) that drop every packet but the kept
        ones: the runs of :attr:`dropped`, and all packets after the last kept one.

        Each filter numbers the packets it receives (``n``) from 0, so the filters take the runs
        from the last to the first: every run a later filter drops lies before all the packets
        an earlier one has dropped, where the numbering is still the file's.
        """
        runs = list(self.dropped)
        terms = [f"gte(n\\,{self.kept[-1] + 1})"]
        filters = []
        while True:
            chunk, runs = runs[-(_RUNS_PER_FILTER - len(terms)):], runs[:-(_RUNS_PER_FILTER - len(terms))]
            terms += [f"eq(n\\,{a})" if a == b else f"between(n\\,{a}\\,{b})" for a, b in chunk]
            filters.append("noise=drop=" + "+".join(terms))
            if not runs:
                return ",".join(filters)
            terms = []


def _runs(positions) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for p in positions:
        if runs and runs[-1][1] == p - 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return [(a, b) for a, b in runs]


def _skip_plan(packets: VideoPackets, indices: list[int]) -> _SkipPlan | None:
    """The packets a decode of the frames ``indices`` needs (``None``: no plan, decode all).

    Frame ``k`` is the packet with the ``k``-th smallest pts. Each selected frame needs the
    last IDR picture whose pts is not above its own (it must also come first in the file),
    every reference picture from there up to the frame in file order, and itself; the first
    packet is always kept (it carries the stream's SEI). Everything else is skipped: the
    non-reference pictures and the stretches between groups. With more than
    :data:`MAX_DROP_RUNS` runs to skip, every packet from each group's IDR to its last frame is
    kept instead. No plan either when the skipped pictures hold fewer than
    :data:`MIN_SKIPPED_PIXELS` pixels.
    """
    n = len(packets)
    if not indices or indices[0] < 0 or indices[-1] >= n:
        return None
    by_pts = sorted(range(n), key=packets.pts.__getitem__)  # decode index -> file position
    idrs = [pos for pos, kind in enumerate(packets.kind) if kind == "I"]
    idr_pts = [packets.pts[pos] for pos in idrs]  # increasing (VideoPackets' conditions)
    spans: dict[int, int] = {}  # group start -> its last selected frame, file positions
    targets = set()
    for k in indices:
        pos = by_pts[k]
        # >= 0: the first packet is an IDR with the least pts
        start = idrs[bisect.bisect_right(idr_pts, packets.pts[pos]) - 1]
        if start > pos:
            return None
        spans[start] = max(spans.get(start, start), pos)
        targets.add(pos)
    for whole_groups in (False, True):
        kept = {0} | targets
        for start, end in spans.items():
            kept.update(j for j in range(start, end + 1) if whole_groups or packets.kind[j] != "N")
        dropped = _runs(j for j in range(max(kept)) if j not in kept)
        if len(dropped) <= MAX_DROP_RUNS:
            break
    else:
        return None
    if (n - len(kept)) * packets.pixels < MIN_SKIPPED_PIXELS:
        return None
    order = sorted(kept, key=packets.pts.__getitem__)
    place = {pos: i for i, pos in enumerate(order)}
    return _SkipPlan(tuple(sorted(kept)), tuple(sorted(place[pos] for pos in targets)), tuple(dropped))


def _skip_decode(path: str | Path, packets: VideoPackets, plan: _SkipPlan, tmp: Path, *, frame_chain: str,
                 frame_size: tuple[int, int], audio_rate: int | None, audio_channels: int, threads: int,
                 skip_loop_filter: bool, timeout_s: float) -> Decoded | None:
    """The packet-skipping path (see :func:`decode_clip`), or ``None`` unless it is clean and whole.

    Two ffmpeg processes joined by a pipe. The first copies the video stream's packets without
    decoding, drops the skipped ones (:meth:`_SkipPlan.drop_filters`; the other packets pass
    untouched) and writes the kept ones as fragmented MP4 (which keeps the stream's parameters,
    pixel aspect, colour description and display rotation). The second decodes that stream,
    counts its frames through a null sink (as the full decode does: it must be exactly the kept
    packets) and keeps the selected ones by their place among the kept frames; the audio comes
    from the file itself with ``-vn``.
    """
    copy = [*_ffmpeg_quiet(), "-i", input_url(path), "-map", "0:V:0", "-c", "copy", "-bsf:v", plan.drop_filters(),
            "-f", "mp4", "-movflags", "frag_keyframe+empty_moov", "pipe:1"]
    decode = [*_decoder_head(threads, skip_loop_filter), "-f", "mov", "-i", "pipe:0"]
    if audio_rate:
        decode += ["-vn", "-i", input_url(path)]
    outputs = _decode_outputs(select_expression(plan.pick), frame_chain, tmp, audio_input=1 if audio_rate else None,
                              audio_rate=audio_rate, channels=audio_channels or 1)
    with open(tmp / "copy.log", "w+b") as copy_log:
        copier = subprocess.Popen(copy, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=copy_log,
                                  start_new_session=True)
        try:
            try:
                out = subprocess.run(decode + outputs, stdin=copier.stdout, capture_output=True, timeout=timeout_s,
                                     check=False, start_new_session=True)
            except subprocess.TimeoutExpired as e:  # subprocess.run has already killed the decoder
                raise MediaError("decode_timeout", f"ffmpeg ran longer than {timeout_s:g} s") from e
            finally:
                copier.stdout.close()
            copier.wait(timeout=30)  # it has written its last packet (or lost its reader): it ends at once
        except subprocess.TimeoutExpired:
            return None
        finally:
            if copier.poll() is None:
                copier.kill()
                copier.wait()
        copy_log.seek(0)
        copy_errors = copy_log.read().strip()
    errors, notices = split_tool_messages(_tool_messages(out.stderr))
    counts = re.findall(rb"^frame=(\d+)", out.stdout, flags=re.MULTILINE)
    if (copier.returncode != 0 or copy_errors or out.returncode != 0 or errors
            or not counts or int(counts[-1]) != len(plan.kept) or (audio_rate and not (tmp / _AUDIO_FILE).exists())):
        return None
    frames = _read_frames(tmp, frame_size)
    if frames is None or len(frames) != len(plan.pick):
        return None
    return Decoded(n_video_frames=len(packets), frames=frames, audio=_read_audio(tmp, audio_rate, audio_channels),
                   errors="", notices=notices, fast_path=True)


def _full_decode(path: str | Path, indices: list[int], tmp: Path, *, frame_chain: str,
                 frame_size: tuple[int, int], audio_rate: int | None, audio_channels: int, threads: int,
                 skip_loop_filter: bool, timeout_s: float) -> Decoded:
    """The full decode (see :func:`decode_clip`): every frame decodes, a null sink counts them,
    ``select`` keeps ``indices`` (sorted, distinct), and the audio in the same run."""
    cmd = [*_decoder_head(threads, skip_loop_filter), "-i", input_url(path),
           *_decode_outputs(select_expression(indices) if indices else "select=0", frame_chain, tmp,
                            audio_input=0 if audio_rate else None, audio_rate=audio_rate,
                            channels=audio_channels or 1)]
    out = _run(cmd, timeout_s)
    messages = _tool_messages(out.stderr)
    errors, notices = split_tool_messages(messages)
    counts = re.findall(rb"^frame=(\d+)", out.stdout, flags=re.MULTILINE)
    n_video = int(counts[-1]) if counts else 0
    if out.returncode != 0:  # with no frame at all, ffmpeg cannot even set up the filters
        raise MediaError("decode_failed" if n_video else "no_decodable_frames",
                         _first_lines(errors or messages) or f"ffmpeg exit status {out.returncode}")
    frames = _read_frames(tmp, frame_size)
    if frames is None:
        height, width = frame_size
        raise MediaError("decode_failed", f"frame output of {(tmp / _FRAMES_FILE).stat().st_size} bytes "
                                          f"is not whole {width}x{height} frames")
    return Decoded(n_video_frames=n_video, frames=frames, audio=_read_audio(tmp, audio_rate, audio_channels),
                   errors=errors, notices=notices)


_FRAMES_FILE, _AUDIO_FILE = "frames.rgb", "audio.f32"
"""The raw outputs' names in a decode's private folder."""


def _ffmpeg_quiet() -> list[str]:
    return [require_ffmpeg()[0], "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats"]


def _decoder_head(threads: int, skip_loop_filter: bool) -> list[str]:
    """The decoding ffmpeg's options before its inputs: a progress report on stdout (it counts the
    decoded frames), ``threads`` decoder threads, one filter thread, the deblocking skipped."""
    return [*_ffmpeg_quiet(), "-progress", "pipe:1", "-threads", str(threads), "-filter_complex_threads", "1",
            *(["-skip_loop_filter", "all"] if skip_loop_filter else [])]


def _decode_outputs(select: str, frame_chain: str, tmp: Path, *, audio_input: int | None,
                    audio_rate: int | None, channels: int) -> list[str]:
    """The decoding ffmpeg's filter graph and outputs: output 0 is a null sink fed every decoded
    frame (ffmpeg's progress report counts the frames of the first video output, which is
    therefore the number that really decode); ``select`` keeps frames through ``frame_chain``
    into raw RGB; the audio of input ``audio_input`` (when not ``None``) goes to raw float32 at
    ``audio_rate`` Hz with ``channels`` channels."""
    outputs = ["-filter_complex", f"[0:V:0]split=2[count][pick];[pick]{select},{frame_chain}[frames]",
               "-map", "[count]", *passthrough_args(), "-f", "null", "-",
               "-map", "[frames]", *passthrough_args(), "-f", "rawvideo", input_url(tmp / _FRAMES_FILE)]
    if audio_input is not None:
        outputs += ["-map", f"{audio_input}:a:0", "-ar", str(audio_rate), "-ac", str(channels), "-c:a", "pcm_f32le",
                    "-f", "f32le", input_url(tmp / _AUDIO_FILE)]
    return outputs


def _read_frames(tmp: Path, frame_size: tuple[int, int]) -> np.ndarray | None:
    """The decoded frames, ``(n, height, width, 3)`` uint8 (none when there is no file), or
    ``None`` when the file is not whole frames."""
    height, width = frame_size
    path = tmp / _FRAMES_FILE
    raw = np.fromfile(path, dtype=np.uint8) if path.exists() else np.zeros(0, np.uint8)
    if raw.size % (height * width * 3):
        return None
    return raw.reshape(-1, height, width, 3)


def _read_audio(tmp: Path, audio_rate: int | None, audio_channels: int) -> np.ndarray | None:
    """The decoded audio, ``(samples, channels)`` float32 (``None`` when ``audio_rate`` is ``None``;
    no samples when there is no file); a partial last sample frame is dropped."""
    if not audio_rate:
        return None
    channels = audio_channels or 1
    path = tmp / _AUDIO_FILE
    samples = np.fromfile(path, dtype="<f4") if path.exists() else np.zeros(0, np.float32)
    return samples[: samples.size - samples.size % channels].reshape(-1, channels).astype(np.float32)
