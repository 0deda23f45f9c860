#!/usr/bin/env bash
# Set up everything the toolkit needs on a fresh Debian machine:
#   - the Debian packages the embedded corpus builder uses (sox, flite, festival + voices, espeak-ng) and
#     tcmalloc (scripts/run_demo.sh preloads it: faster training on CPU);
#   - a Python 3.11 virtual environment (.venv) with the pinned requirements.
# Idempotent: a second run checks and returns in seconds.  Override the venv path with VENV=...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

log() { echo "[setup] $*" >&2; }

# ---- Debian packages --------------------------------------------------------------------------
DEB_PKGS=(sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts espeak-ng fortunes fortunes-min
          libtcmalloc-minimal4)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- Python 3.11 ------------------------------------------------------------------------------
find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local root
  root="$(pyenv root 2>/dev/null || echo "${HOME:-/root}/.pyenv")"
  for c in "$(command -v python3.11 2>/dev/null || true)" "$root"/versions/3.11*/bin/python3.11; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
      echo "$c"; return
    fi
  done
  echo "ERROR: Python 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1
}

STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python)"
  log "creating venv $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  log "installing pinned Python requirements (torch==2.13.0 CPU build and friends)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt"
  echo "$WANT" > "$STAMP"
fi
log "ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
