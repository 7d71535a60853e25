#!/usr/bin/env bash
# The quick-start: installs what is missing, then runs the whole pipeline once on local stand-ins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
