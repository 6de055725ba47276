"""A minimal HTTP/1.1 keep-alive client for the load phases of the benchmark.

httpx spends about 3 ms of CPU per request on this machine, as much as the API it measures, and
both share two cores: a load generator that heavy measures itself. This one writes a prebuilt
request and reads the status line, the headers and a Content-Length body, nothing more (the API
always answers with a Content-Length). It is for the benchmark only, never for the project."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class RawConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` (JSON) and return (status, response body)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        try:
            headers = await self.reader.readuntil(b"\r\n\r\n")
            status = int(headers[9:12])
            length = _content_length(headers)
            content = await self.reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            await self.close()
            raise ConnectionError("connection lost") from None
        return status, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _content_length(headers: bytes) -> int:
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("no content-length")


class RawPool:
    """`size` keep-alive connections; a request waits for a free one."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._free: asyncio.Queue[RawConnection] = asyncio.Queue()
        self._all = [RawConnection(host, port) for _ in range(size)]
        for connection in self._all:
            self._free.put_nowait(connection)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[RawConnection]:
        connection = await self._free.get()
        try:
            yield connection
        finally:
            self._free.put_nowait(connection)

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.connection() as connection:
            return await connection.post_json(path, body)

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()
