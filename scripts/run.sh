#!/usr/bin/env bash
# Quick start: `bash scripts/run.sh [stack options]` (see `--help`).
#
# Needs only Python >= 3.11: creates .venv if missing, installs
# requirements.txt when it changed since the last install, then runs the
# whole stack (embedded Valkey, API, workers, dashboard) in this terminal.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_requirements requirements.txt
exec "$VENV/bin/python" scripts/stack.py "$@"
