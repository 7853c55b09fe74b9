#!/usr/bin/env bash
# The test command: set up, lint, then run every test (the slow torture tests too).
#   bash scripts/test.sh           # everything (what CI runs)
#   bash scripts/test.sh --fast    # skip the tests marked slow
#   bash scripts/test.sh -- ARGS   # pass ARGS to pytest
# PostgreSQL: a throwaway server is started (scripts/pg.sh; the Debian package is installed when
# missing) unless CONTD_TEST_PG_URL names one.
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
# one throwaway PostgreSQL server for the whole run (the PostgreSQL contract suite and crash
# tests use it, a schema per test); stopped on exit. CONTD_TEST_PG_URL set: use that server.
if [ -z "${CONTD_TEST_PG_URL:-}" ]; then
  if pg_env=$(bash scripts/pg.sh start); then
    eval "$pg_env"
    trap 'bash scripts/pg.sh stop "$PGTEST_DIR"' EXIT
    export CONTD_TEST_PG_URL="$PGTEST_DSN"
  else
    echo "test.sh: could not start PostgreSQL (see above); its tests will try again or skip" >&2
  fi
fi
python -m pytest "${args[@]}" "$@"
