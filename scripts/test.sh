#!/usr/bin/env bash
# Install everything (see scripts/setup.sh), build the real-model assets once (cached; progress on stderr), and run
# the test suite. Extra arguments go to pytest; with -m "not real" the real-model tier and its build are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
case " $* " in
  *"not real"*) ;;
  *) python -m moemerge.real > /dev/null ;;
esac
python -m pytest -q "$@"
