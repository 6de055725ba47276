#!/usr/bin/env bash
# Lint and type-check: `bash scripts/lint.sh` (CI runs it before the tests).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_requirements requirements.txt requirements-dev.txt
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy" app worker tests scripts dashboard streamlit_app.py bench
