#!/usr/bin/env bash
# The test command (README): set up, then run the whole test suite on CPU, then the k2 lane.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k lfmmi   # extra args go to pytest (main lane only)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
echo "== main lane: Python 3.11, torch 2.13 (pure-PyTorch LF-MMI backend)"
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 tests "$@"
if [ "$#" -eq 0 ]; then
  echo "== k2 lane: Python 3.9, torch 1.13.1, k2 1.23.4 (backend agreement)"
  bash scripts/k2_lane.sh
fi
