#!/usr/bin/env bash
# The project's one test command: sets up .venv, then lint, format check, type check, pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k direct_align`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
# The browser tests drive Debian's Chromium through chromedriver (selenium).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing chromium and chromium-driver for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "[test] chromium/chromedriver not found: browser tests skip (and fail when CI=true)"
  fi
fi
py="$root/.venv/bin/python"
echo "[test] ruff check" && "$py" -m ruff check .
echo "[test] ruff format --check" && "$py" -m ruff format --check .
echo "[test] mypy srpo_core" && "$py" -m mypy
echo "[test] pytest"
exec "$py" -m pytest "$@"
