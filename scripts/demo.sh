#!/usr/bin/env bash
# The offline demo: build tiny models, merge them with examples/configs/demo.yaml, load the result, generate, route.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m moemerge.tiny demo/models
moemerge examples/configs/demo.yaml demo/out --overwrite --routing-report
python examples/show.py demo/out
