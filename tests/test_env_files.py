"""`.env` is honoured by every entry point, not only the API: the workers (`python -m worker`,
`worker/worker_node.py`), the dashboard, and `scripts/run.sh`. The environment always wins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dashboard import api_client
from worker.worker_node import parse_args

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = ("API_URL", "API_KEY", "REDIS_URL", "API_HOST", "API_PORT", "REDIS_PORT")


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own (where `.env` is read from), with none of the variables
    set in the environment."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_worker_reads_api_url_redis_url_and_api_key_from_dotenv(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (here / ".env").write_text(
        "API_URL=http://api.from-dotenv:8123\nREDIS_URL=redis://redis.from-dotenv:6390/2\n"
        "API_KEY=dts_from_dotenv\n"
    )
    options = parse_args([])
    assert options.api_url == "http://api.from-dotenv:8123"
    assert options.redis_url == "redis://redis.from-dotenv:6390/2"
    assert options.api_key == "dts_from_dotenv"
    monkeypatch.setenv("API_URL", "http://api.from-env:9000")
    assert parse_args([]).api_url == "http://api.from-env:9000"  # the environment wins
    assert parse_args(["--api-url", "http://flag:1"]).api_url == "http://flag:1"


def test_the_worker_defaults_without_dotenv(here: Path) -> None:
    options = parse_args([])
    assert (options.api_url, options.redis_url, options.api_key) == (
        "http://localhost:8000",
        None,
        None,
    )
    assert options.task_log_max_bytes == 1024 * 1024


@pytest.mark.parametrize(
    "command", [["-m", "worker"], [str(ROOT / "worker" / "worker_node.py")]], ids=["module", "file"]
)
def test_both_worker_entry_points_read_dotenv(here: Path, command: list[str]) -> None:
    (here / ".env").write_text("API_URL=http://api.from-dotenv:8124\n")
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    shown = subprocess.run(
        [sys.executable, *command, "--help"],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "now http://api.from-dotenv:8124" in " ".join(shown.split())


def test_the_dashboard_reads_api_url_and_key_from_dotenv(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api_client.api_url() == api_client.DEFAULT_API_URL
    (here / ".env").write_text("API_URL=http://127.0.0.1:8125/\nAPI_KEY=dts_dash\n")
    assert api_client.api_url() == "http://127.0.0.1:8125"
    assert api_client.api_key() == "dts_dash"
    monkeypatch.setenv("API_URL", "http://from-env:1")
    assert api_client.api_url() == "http://from-env:1"


def test_the_dashboard_says_when_it_reads_another_stacks_api(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (here / ".env").write_text("API_PORT=8126\n")
    notice = api_client.api_mismatch()  # API_URL unset: the default, port 8000
    assert notice is not None
    assert "http://localhost:8000" in notice and "8126" in notice
    monkeypatch.setenv("API_URL", "http://127.0.0.1:8126")
    assert api_client.api_mismatch() is None
    monkeypatch.setenv("API_URL", "https://scheduler.example.com")  # a remote API: its choice
    assert api_client.api_mismatch() is None
    monkeypatch.delenv("API_URL")
    (here / ".env").write_text("")
    assert api_client.api_mismatch() is None  # no API_PORT: nothing to compare with


def test_run_sh_takes_the_stacks_options_from_dotenv(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.sh as it is, with stand-ins for its neighbours: _venv.sh (no install) and stack.py
    (prints the environment it was given)."""
    scripts = here / "scripts"
    scripts.mkdir()
    shutil.copy(ROOT / "scripts" / "run.sh", scripts / "run.sh")
    (scripts / "_venv.sh").write_text(
        f'ROOT="$(cd "$(dirname "${{BASH_SOURCE[0]}}")/.." && pwd)"\ncd "$ROOT"\n'
        f'VENV="{Path(sys.executable).parent.parent}"\nensure_requirements() {{ :; }}\n'
    )
    (scripts / "stack.py").write_text(
        "import json, os, sys\n"
        "names = ('API_HOST', 'API_PORT', 'REDIS_PORT', 'REDIS_URL')\n"
        "print(json.dumps({'argv': sys.argv[1:], **{n: os.environ.get(n) for n in names}}))\n"
    )
    (here / ".env").write_text(
        "API_HOST=127.0.0.9\nAPI_PORT=8127\nREDIS_URL=redis://not-for-run-sh:1/0\n"
    )
    monkeypatch.setenv("REDIS_PORT", "6391")
    monkeypatch.chdir("/")  # run.sh finds .env beside itself, wherever it is started from
    assert run_sh(scripts, "--workers", "1") == {
        "argv": ["--workers", "1"],
        "API_HOST": "127.0.0.9",
        "API_PORT": "8127",
        "REDIS_PORT": "6391",  # the environment wins
        "REDIS_URL": None,  # left to the processes, which read .env themselves
    }
    monkeypatch.setenv("API_PORT", "9001")
    assert run_sh(scripts)["API_PORT"] == "9001"


def run_sh(scripts: Path, *args: str) -> dict[str, Any]:
    bash = shutil.which("bash")
    assert bash is not None
    out = subprocess.run(
        [bash, str(scripts / "run.sh"), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found: dict[str, Any] = json.loads(out.stdout)
    return found
