#!/usr/bin/env bash
# The demo: set up, then kill a workflow with SIGKILL mid-run and resume it from the default
# journal (.contd/journal.duckdb in this folder, or CONTD_JOURNAL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m contd_nb.demo "$@"
