"""Peak memory of a stretch of work (one trial): host RSS and, when present, GPU memory.

Host: Linux keeps the process's peak resident set size as ``VmHWM`` in
``/proc/self/status``; writing ``5`` to ``/proc/self/clear_refs`` resets it to the current
RSS (proc(5), "clear_refs", Linux >= 4.0), so the peak of each trial is exact. Where that is
not possible, the process-lifetime peak ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is
reported instead (it never decreases, so it over-states later trials).

GPU: TensorFlow's allocator statistics, ``tf.config.experimental.get_memory_info("GPU:0")
["peak"]``, reset with ``tf.config.experimental.reset_memory_stats``.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new peak measurement (host and GPU).

    Returns:
        True when the host peak was reset (Linux), False when :func:`peak_rss_mb` falls back
        to the process-lifetime peak.
    """
    try:
        import tensorflow as tf
        for i, _ in enumerate(tf.config.list_logical_devices("GPU")):
            tf.config.experimental.reset_memory_stats(f"GPU:{i}")
    except (ImportError, ValueError, RuntimeError):
        pass
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process since :func:`reset_peak`, in MiB (2**20 bytes)."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024.0
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024.0


def peak_gpu_mb() -> float | None:
    """Peak TensorFlow allocator memory over all GPUs since :func:`reset_peak`, in MiB; None without a GPU."""
    try:
        import tensorflow as tf
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            return None
        return sum(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] for i in range(len(gpus))) / 2**20
    except (ImportError, ValueError, RuntimeError):
        return None
