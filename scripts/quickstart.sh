#!/usr/bin/env bash
# The main job: set up, then adapt smollm2-135m to E2E NLG and compare with zero-shot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
logitplug quickstart "$@"
