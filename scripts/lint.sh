#!/usr/bin/env bash
# Lint and type-check: `bash scripts/lint.sh` (CI runs it before the tests).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_requirements requirements.txt requirements-dev.txt

# Known vulnerabilities in the pinned requirements (pip-audit, against the package index's
# advisory data). --strict: a package it could not look up is an error, not a silent pass. The
# look-up needs the network; where the advisories cannot be had (offline, or an index mirror
# without them) the audit is skipped with a line saying why, and the lint goes on.
audit_pinned_requirements() {
    local log
    log="$(mktemp)"
    if "$VENV/bin/pip-audit" -r requirements.txt -r requirements-dev.txt --no-deps \
        --disable-pip --strict --progress-spinner off >"$log" 2>&1; then
        echo "[lint] pip-audit: $(tail -n 1 "$log")" >&2
    elif grep -qiE "found [0-9]+ known vulnerabilit" "$log"; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    else
        echo "[lint] pip-audit SKIPPED, advisories unreachable: $(grep -m 1 -iE \
            'not found|connection|resolution|timed out|error' "$log" | cut -c 1-160)" >&2
    fi
    rm -f "$log"
}

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy" app worker dts_client examples tests scripts dashboard streamlit_app.py bench
audit_pinned_requirements
