#!/usr/bin/env bash
# Quick start: `bash scripts/run.sh [stack options]` (see `--help`).
#
# Needs only Python >= 3.11: creates .venv if missing, installs
# requirements.txt when it changed since the last install, then runs the
# whole stack (embedded Valkey, API, workers, dashboard) in this terminal.
#
# The stack's own options default to API_HOST, API_PORT, REDIS_PORT and
# DASHBOARD_PORT from the environment, else from .env, the file every
# process of the stack reads its other settings from.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_requirements requirements.txt
# Only these four: the processes read the rest of .env themselves, and REDIS_URL in particular
# would replace the embedded Valkey (.env.example sets it for a stack without run.sh).
# python-dotenv (a dependency of pydantic-settings) parses .env as the API's Settings do.
exec "$VENV/bin/python" -c '
import os, runpy, sys
from dotenv import dotenv_values
found = {name.upper(): value for name, value in dotenv_values(".env").items()}
for name in ("API_HOST", "API_PORT", "REDIS_PORT", "DASHBOARD_PORT"):
    if found.get(name) is not None:
        os.environ.setdefault(name, found[name])
sys.argv[0] = "scripts/stack.py"
runpy.run_path("scripts/stack.py", run_name="__main__")
' "$@"
