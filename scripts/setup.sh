#!/usr/bin/env bash
# Set up everything contd_nb needs on a fresh machine: a virtualenv in .venv with the package
# (editable) and its dev/test dependencies. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "contd_nb needs Python >= 3.11; $PY is $("$PY" --version 2>&1). Set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.contd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
# Debian's Chromium for the JupyterLab browser test (never `playwright install`)
bash scripts/browser_setup.sh
