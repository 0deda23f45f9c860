#!/usr/bin/env bash
# CI's second lane: Python 3.9 + torch 1.13.1 + k2 1.23.4, runs the backend-agreement tests.
#
# The venv is cached outside the checkout at ${K2_VENV:-$HOME/.cache/green-asr/k2-venv} and reused.
# The interpreter is pyenv's Python 3.9.18 (found via `pyenv root`, falling back to $HOME/.pyenv).
# If it is missing: with CI=true the lane fails loudly; otherwise it is optional and exits 0.
#
# Usage: scripts/k2_lane.sh [--setup-only] [extra pytest args]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
K2_VENV="${K2_VENV:-$HOME_DIR/.cache/green-asr/k2-venv}"
PY_VERSION="${K2_LANE_PYTHON_VERSION:-3.9.18}"
PKGS=("torch==1.13.1" "k2==1.23.4" "numpy<2" "pytest")

setup_only=0
if [[ "${1:-}" == "--setup-only" ]]; then setup_only=1; shift; fi

find_python() {
    local root=""
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root 2>/dev/null || true)"
    fi
    if [[ -z "$root" || ! -x "$root/versions/$PY_VERSION/bin/python" ]]; then
        root="$HOME_DIR/.pyenv"
    fi
    local py="$root/versions/$PY_VERSION/bin/python"
    if [[ -x "$py" ]]; then echo "$py"; fi
}

if [[ ! -x "$K2_VENV/bin/python" ]] || ! "$K2_VENV/bin/python" -c "import k2, torch" >/dev/null 2>&1; then
    PY="$(find_python)"
    if [[ -z "$PY" ]]; then
        if [[ "${CI:-}" == "true" ]]; then
            echo "k2 lane: FAILED: Python $PY_VERSION not found under pyenv root (or $HOME_DIR/.pyenv)" >&2
            exit 1
        fi
        echo "k2 lane: Python $PY_VERSION not found (pyenv); this lane is optional outside CI, skipping."
        exit 0
    fi
    echo "k2 lane: building venv $K2_VENV from $PY"
    mkdir -p "$(dirname "$K2_VENV")"
    rm -rf "$K2_VENV.tmp"
    "$PY" -m venv "$K2_VENV.tmp"
    "$K2_VENV.tmp/bin/python" -m pip install --quiet --upgrade pip
    "$K2_VENV.tmp/bin/python" -m pip install --quiet "${PKGS[@]}"
    "$K2_VENV.tmp/bin/python" -c "import k2, torch; print('k2 imported; torch', torch.__version__)"
    rm -rf "$K2_VENV"
    mv "$K2_VENV.tmp" "$K2_VENV"
    # venv scripts carry absolute paths; rewrite the temporary prefix.
    grep -rl "$K2_VENV.tmp" "$K2_VENV/bin" 2>/dev/null | xargs -r sed -i "s#$K2_VENV.tmp#$K2_VENV#g"
fi

if [[ "$setup_only" == 1 ]]; then
    echo "k2 lane: venv ready at $K2_VENV"
    exit 0
fi

cd "$REPO_ROOT"
shopt -s nullglob
tests=(tests/test_lfmmi_k2*.py)
if [[ ${#tests[@]} -eq 0 ]]; then
    echo "k2 lane: no tests/test_lfmmi_k2*.py found" >&2
    exit 1
fi
# -p no:cacheprovider keeps the checkout clean; conftest is not needed (lfmmi/ only).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$K2_VENV/bin/python" -m pytest -q -p no:cacheprovider --noconftest "${tests[@]}" "$@"
