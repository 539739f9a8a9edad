#!/usr/bin/env bash
# The main job on the built-in demo dataset, on a fresh machine: set up, then run the search.
# Extra arguments go to run_search.py (e.g. scripts/demo.sh --time-budget 300).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python run_search.py "$@"
