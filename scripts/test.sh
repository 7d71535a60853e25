#!/usr/bin/env bash
# The test command: installs what is missing, checks style, then runs every test, including the
# end-to-end runs of the real DAG against the local API stand-in and Azurite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
