#!/usr/bin/env bash
# Browser for the JupyterLab widget test (tests/test_widgets_browser.py): Debian's Chromium,
# driven by the Python `playwright` package with executable_path=/usr/bin/chromium.
# Never `playwright install`: it downloads its own browser builds, which this kind of machine
# cannot fetch. Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version
