#!/usr/bin/env bash
# The test command: set up, lint, then run every test (the slow torture tests too).
#   bash scripts/test.sh           # everything (what CI runs)
#   bash scripts/test.sh --fast    # skip the tests marked slow
#   bash scripts/test.sh -- ARGS   # pass ARGS to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
args=()
case "${1:-}" in
  --fast) args=(-m "not slow"); shift ;;
  --) shift ;;
esac
ruff check contd_nb tests benchmarks notebooks
python -m pytest "${args[@]}" "$@"
