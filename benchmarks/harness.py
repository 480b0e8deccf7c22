"""What the benchmark modules share: child processes with a log file, and a client that costs nothing.

Imported as `benchmarks.harness` (the repository root is on `sys.path` under `python -m pytest`).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn(argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    """A server process in its own session (a benchmark's Ctrl-C does not reach it), output to `log`."""
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


class HTTPClient:
    """Minimal keep-alive HTTP/1.1 client on asyncio streams: the client's cost stays out of the numbers.

    `headers` are extra raw header lines (each ending in CRLF), e.g. an Authorization header.
    """

    def __init__(self, port: int, headers: bytes = b"", host: str = "127.0.0.1") -> None:
        self.host, self.port, self.headers = host, port, headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader and self.writer
        self.writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s"
                          % (path.encode(), self.host.encode(), self.headers, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
