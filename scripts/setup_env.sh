#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and installs everything the
# pack, its demo and its tests need. Idempotent: a second run only checks.
#   SRPO_PYTHON      interpreter for the venv (default: python3)
#   SRPO_TORCH_SPEC  torch pin (default: the CPU-usable build these machines keep on disk)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${SRPO_PYTHON:-python3}"
torch_spec="${SRPO_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
stamp="$venv/.srpo-installed"
want="$(cat "$root/requirements.txt" "$root/tests/requirements.txt" "$root/pyproject.toml" "$root/scripts/setup_env.sh" | sha256sum | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "[setup] installing into $venv (torch: $torch_spec)" >&2
# shellcheck disable=SC2086
"${pip[@]}" $torch_spec
"${pip[@]}" -r "$root/requirements.txt" -r "$root/tests/requirements.txt"
# A real ComfyUI for the integration tests and the demo (SRPO_COMFYUI_DIR: use your own instead).
"$venv/bin/python" "$root/scripts/comfy_harness/provision.py" setup >/dev/null
echo "$want" > "$stamp"
