# Sourced by run.sh and test.sh. Creates .venv with a Python >= 3.11 if missing; then
# `ensure_requirements FILE...` installs the requirements files when they changed since the last
# install (a stamp holds their hash). Sets ROOT and VENV and cds to the repository root.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

log() { echo "[setup] $*" >&2; }

is_py311() {  # is "$1" a Python interpreter >= 3.11?
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
        if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null && is_py311 "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
    if ! PY="$(find_python)"; then
        log "Python >= 3.11 is required (set PYTHON=/path/to/python3.11)"
        exit 1
    fi
    log "creating virtual environment in .venv with $PY"
    "$PY" -m venv "$VENV"
elif ! is_py311 "$VENV/bin/python"; then
    log ".venv uses Python < 3.11; remove it (rm -rf .venv) and run again"
    exit 1
fi

ensure_requirements() {
    local stamp="$VENV/.requirements.sha256" want
    # Hash with Python itself: sha256sum/shasum differ between Linux and macOS. pyproject.toml
    # is in the hash because the project itself is installed too (below).
    want="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest())' "$@" pyproject.toml)"
    if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
        log "installing $* (first run or requirements changed)"
        local args=()
        for f in "$@"; do args+=(-r "$f"); done
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${args[@]}"
        # The project in editable mode, for the `dts` command (dts_client); its dependencies are
        # the requirements just installed.
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e .
        echo "$want" >"$stamp"  # only after a successful install
    fi
}
