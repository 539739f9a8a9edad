"""Import TensorFlow without its start-up lines on the terminal.

TensorFlow 2.21 writes informational lines to file descriptor 2 while it loads, before its
logging can be configured, so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them (measured:
``WARNING: All log messages before absl::InitializeLog() is called ...``, ``I0000 ...
port.cc:153] oneDNN custom operations are on ...``, ``I0000 ... cudart_stub.cc:31] Could not
find cuda drivers ...``, twice per process). Every search child process would print them
again. :func:`import_tensorflow_quietly` captures file descriptor 2 during the import and
passes on every line that is not one of those: warnings and errors still show.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

STARTUP_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} |"
                           r"To enable the following instructions:)")
"""Lines dropped: absl's preface, INFO-level lines (``I`` + MMDD) and the continuation line of
the CPU-feature notice."""


def import_tensorflow_quietly() -> None:
    """Import ``tensorflow`` with its start-up INFO lines dropped (others are re-printed).

    Does nothing when TensorFlow is already imported. Raises what ``import tensorflow`` raises.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if not STARTUP_NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()
