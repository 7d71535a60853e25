#!/usr/bin/env bash
# Installs everything spamgeo needs inside the repository, at pinned versions:
# a Python 3.11 virtualenv in .venv and Azurite in node_modules. Safe to re-run: it only
# reinstalls when requirements.txt, requirements-dev.txt, constraints.txt or package-lock.json change.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for candidate in "${SPAMGEO_PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "bootstrap: Python 3.11 is required (set SPAMGEO_PYTHON to its path)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  python=$(find_python)
  echo "bootstrap: creating .venv with $python"
  "$python" -m venv .venv
fi

want=$(cat requirements.txt requirements-dev.txt constraints.txt | sha256sum | cut -d' ' -f1)
stamp=.venv/.spamgeo-requirements
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing pinned Python packages into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -r requirements-dev.txt -c constraints.txt
  echo "$want" >"$stamp"
fi

command -v npm >/dev/null 2>&1 || { echo "bootstrap: npm (Node 20) is required for Azurite" >&2; exit 1; }
lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.spamgeo-lock 2>/dev/null)" != "$lock" ]; then
  echo "bootstrap: installing Azurite 3.35.0 into node_modules"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock" >node_modules/.spamgeo-lock
fi
