#!/usr/bin/env bash
# The project's one test command: sets up .venv, then lint, format check, type check, pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k direct_align`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
py="$root/.venv/bin/python"
echo "[test] ruff check" && "$py" -m ruff check .
echo "[test] ruff format --check" && "$py" -m ruff format --check .
echo "[test] mypy srpo_core" && "$py" -m mypy
echo "[test] pytest"
exec "$py" -m pytest "$@"
