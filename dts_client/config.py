"""Where the API is and which key to send: arguments first, then the environment, then `.env`.

`.env` is read with a few lines of our own rather than python-dotenv or pydantic-settings: the
client depends on httpx and pydantic alone, and the file's format is the simple KEY=VALUE the
project's `.env.example` uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__version__ = "0.1.0"
DEFAULT_API_URL = "http://localhost:8000"


@dataclass(frozen=True)
class Endpoint:
    api_url: str  # the first of api_urls
    api_key: str | None
    # Every address given (`API_URL=http://a:8000,http://b:8000`): calls fail over to the next
    # one on connection errors and 503, like the workers' --api-url a,b,c.
    api_urls: tuple[str, ...] = ()


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments, `export ` prefixes and surrounding quotes are dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip().removeprefix("export ").strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        found[key] = value
    return found


def resolve(
    api_url: str | None = None, api_key: str | None = None, *, dotenv: Path | None = None
) -> Endpoint:
    """The endpoint from the arguments, else API_URL / API_KEY from the environment, else from
    `.env` in the working directory. An empty API_KEY means no key."""
    file: dict[str, str] | None = None

    def pick(given: str | None, name: str) -> str | None:
        nonlocal file
        if given is not None:
            return given
        if name in os.environ:
            return os.environ[name]
        # Read only when a value is missing: a client given both, or run with both in the
        # environment, does not touch the disk.
        if file is None:
            file = read_dotenv(dotenv or Path.cwd() / ".env")
        return file.get(name)

    given = pick(api_url, "API_URL") or DEFAULT_API_URL
    urls = tuple(u.strip().rstrip("/") for u in given.split(",") if u.strip()) or (DEFAULT_API_URL,)
    return Endpoint(api_url=urls[0], api_key=pick(api_key, "API_KEY") or None, api_urls=urls)
