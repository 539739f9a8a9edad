#!/usr/bin/env bash
# Set up everything the toolkit needs on a fresh machine, idempotently:
#   - the `ffmpeg` executable (apt-get when run as root and missing; otherwise a clear message),
#   - a virtual environment in .venv with the pinned Python packages (requirements-test.txt).
# A second run does nothing unless requirements changed. Used by scripts/demo.sh,
# scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] ffmpeg not found: installing it with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else
    echo "[setup] error: the ffmpeg executable is required but was not found on PATH." >&2
    echo "        Install it, e.g. 'sudo apt-get install ffmpeg' (Debian/Ubuntu)," >&2
    echo "        'brew install ffmpeg' (macOS) or 'conda install -c conda-forge ffmpeg'." >&2
    exit 1
  fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "[setup] error: Python >= 3.10 is required ('$PYTHON' is $("$PYTHON" --version 2>&1))." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating the virtual environment .venv"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements-test.txt
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python --version), $(ffmpeg -version | head -n 1 | cut -d' ' -f1-3)"
