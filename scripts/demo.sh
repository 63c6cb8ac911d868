#!/usr/bin/env bash
# The main job on the embedded default: SRPO fine-tunes the toy world in a real, headless ComfyUI.
# Results (before/after grid, loss plot, LoRA, summary.json) go to output/toyworld_demo/.
# Arguments go to scripts/demo.py (--steps N, --seed N, --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
exec "$root/.venv/bin/python" scripts/demo.py "$@"
