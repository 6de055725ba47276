"""The `dts` command line as a subprocess against real API and worker processes: output for
people and for scripts (--json), and exit codes that mean something (0 done, 1 failed task,
2 usage or invalid input, 3 unreachable, 4 refused, 5 wait timed out)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.utils.embedded_servers import free_port
from tests.integration.harness import ROOT, Stack

pytestmark = pytest.mark.e2e
ADMIN = "cli-test-admin-key-0123456789abcdef0123"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def dts(api_url: str, *args: str, stdin: bytes | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in ("API_URL", "API_KEY")}
    env |= {"API_URL": api_url, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dts_client",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=90)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def started(stack: Stack) -> str:
    await stack.start_api()
    stack.start_worker("cli-1")
    await stack.wait_for_workers("cli-1")
    return stack.api_url


async def test_submit_get_list_wait_and_their_exit_codes(stack: Stack, tmp_path: Path) -> None:
    url = await started(stack)
    done = await dts(url, "submit", "echo", "--payload", '{"n": 1}', "--wait", "--json")
    assert (done.code, done.json()["status"], done.json()["result"]) == (0, "completed", {"n": 1})
    failed = await dts(url, "submit", "fail", "--max-retries", "0", "--wait")
    assert failed.code == 1 and "task failed as requested" in failed.out
    payload = tmp_path / "payload.json"
    payload.write_text('{"data": "Some   TEXT"}')
    human = await dts(url, "submit", "processing", "--payload", f"@{payload}", "--task-id", "p-1")
    assert (human.code, human.out.strip()) == (0, "submitted p-1 (pending)")
    waited = await dts(url, "wait", "p-1", "--timeout", "30")
    assert waited.code == 0 and "p-1" in waited.out and "completed" in waited.out
    shown = await dts(url, "get", "p-1", "--json")
    assert shown.json()["result"]["normalized"] == "some text"
    listed = await dts(url, "--json", "list", "--status", "completed", "--type", "echo")
    assert [t["result"] for t in listed.json()] == [{"n": 1}]
    assert (await dts(url, "list", "--limit", "2", "--json")).json()[0]["task_id"] == "p-1"


async def test_usage_refusals_and_an_unreachable_api(stack: Stack) -> None:
    url = await started(stack)
    invalid = await dts(url, "submit", "echo", "--priority", "11")
    assert invalid.code == 2 and "body.priority" in invalid.err
    assert (await dts(url, "submit", "echo", "--payload", "[1]")).code == 2
    assert (await dts(url, "submit")).code == 2  # argparse: TYPE missing
    missing = await dts(url, "get", "nope", "--json")
    assert missing.code == 4
    assert json.loads(missing.err)["detail"][0]["loc"] == ["path", "task_id"]
    down = await dts(f"http://127.0.0.1:{free_port()}", "get", "x")
    assert down.code == 3 and "ConnectError" in down.err
    late = await dts(url, "submit", "nobody-runs-this", "--wait", "--wait-timeout", "0.5")
    assert late.code == 5 and "not final" in late.err


async def test_batch_progress_cancel_retry_logs_workers_and_watch(
    stack: Stack, tmp_path: Path
) -> None:
    url = await started(stack)
    batch = tmp_path / "batch.jsonl"
    lines = [{"task_id": f"b-{n}", "task_type": "echo", "payload": {"n": n}} for n in range(5)]
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    submitted = await dts(url, "submit-batch", str(batch), "--json")
    assert [t["task_id"] for t in submitted.json()] == [f"b-{n}" for n in range(5)]
    waited = await dts(url, "wait", *[f"b-{n}" for n in range(5)], "--timeout", "30", "--json")
    assert {t["status"] for t in waited.json()} == {"completed"}

    parked = await dts(url, "submit", "nobody-runs-this", "--task-id", "parked")
    assert parked.code == 0
    assert "cancelled" in (await dts(url, "cancel", "parked")).out
    assert (await dts(url, "cancel", "parked")).code == 4  # already final: 409
    assert (await dts(url, "wait", "parked")).code == 1  # cancelled counts as not done
    assert (await dts(url, "retry", "parked", "--json")).json()["status"] == "pending"

    logged = await dts(url, "submit", "log_lines", "--payload", '{"parameters": {"lines": 2}}')
    task_id = logged.out.split()[1]
    follow = await dts(url, "logs", task_id, "--follow")
    assert follow.code == 0 and "line 0" in follow.out and "to stderr" in follow.out
    page = (await dts(url, "logs", task_id, "--json")).json()
    assert [line["message"] for line in page["lines"] if line["stream"] == "stdout"] == [
        "line 0",
        "line 1",
    ]

    assert [w["worker_id"] for w in (await dts(url, "workers", "--json")).json()] == ["cli-1"]
    view = (await dts(url, "watch", "--once", "--json")).json()
    assert set(view) == {"queues", "workers", "recent_failures"}
    assert "nobody-runs-this" in {q["task_type"] for q in view["queues"]}
    human = await dts(url, "watch", "--once")
    assert "queues" in human.out and "workers" in human.out and "recent failures" in human.out


async def test_schedule_commands(stack: Stack) -> None:
    url = await started(stack)
    made = await dts(url, "schedules", "create", "nightly", "echo", "--cron", "0 2 * * *")
    assert made.code == 0 and "next fire" in made.out
    listed = (await dts(url, "schedules", "list", "--json")).json()
    assert [(s["schedule_id"], s["enabled"]) for s in listed] == [("nightly", True)]
    assert (await dts(url, "schedules", "pause", "nightly", "--json")).json()["enabled"] is False
    assert (await dts(url, "schedules", "resume", "nightly", "--json")).json()["enabled"] is True
    fired = (await dts(url, "schedules", "trigger", "nightly", "--json")).json()
    assert fired["task_id"].startswith("nightly:")
    assert (await dts(url, "wait", fired["task_id"], "--timeout", "30")).code == 0
    bad = await dts(url, "schedules", "create", "bad", "echo", "--cron", "61 * * * *")
    assert bad.code == 2 and "body.cron" in bad.err
    assert (await dts(url, "schedules", "delete", "nightly")).code == 0
    assert (await dts(url, "schedules", "delete", "nightly")).code == 4


async def test_key_commands_with_an_admin_key(stack: Stack) -> None:
    stack.env["ADMIN_API_KEY"] = ADMIN
    stack.env["API_KEY_CACHE_SECONDS"] = "0"
    await stack.start_api()
    url = stack.api_url
    assert (await dts(url, "keys", "list")).code == 4  # managing keys needs the admin key
    made = await dts(url, "--api-key", ADMIN, "keys", "create", "ci", "--scope", "read", "--json")
    created = made.json()
    assert created["scopes"] == ["read"] and created["key"]
    listed = (await dts(url, "keys", "list", "--api-key", ADMIN, "--json")).json()
    assert [k["key_id"] for k in listed] == [created["key_id"]]
    assert (await dts(url, "--api-key", created["key"], "get", "nothing")).code == 4
    revoked = await dts(url, "--api-key", ADMIN, "keys", "revoke", created["key_id"])
    assert revoked.code == 0
    refused = await dts(url, "--api-key", created["key"], "get", "nothing", "--json")
    assert json.loads(refused.err)["status"] == 401


def test_the_dts_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "dts"
    assert script.exists(), "pip install -e . (scripts/_venv.sh does it) installs `dts`"
