"""What the benchmark modules share: child processes with a log file, a client that costs nothing, and
interleaved blocks of contenders.

Imported as `benchmarks.harness` (the repository root is on `sys.path` under `python -m pytest`).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0000000000000"  # the admin/evaluate token of the benchmarks' control plane


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


def interleaved(contenders: dict[str, Callable[[int, float], list[float]]], blocks: int, per_block: int,
                budget_s: float) -> dict[str, list[float]]:
    """Each contender's `run(n, budget_s)` (per-call times in seconds), block after block; the order
    of the contenders rotates by one every block.

    Run one after the other in one long window each, the machine's drift (other work on the two
    shared cores, frequency, page cache) lands on whoever runs at that moment; in short alternating
    blocks it reaches every contender alike, and rotating the order keeps any one of them from
    always following the same neighbour.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for b in range(blocks):
        k = b % len(names) if names else 0
        for name in names[k:] + names[:k]:
            times[name] += contenders[name](per_block, budget_s)
    return times


def local_runner(fn: Callable[[], object]) -> Callable[[int, float], list[float]]:
    """An in-process contender for `interleaved`: `fn()` timed per call, stopping after `budget_s`."""
    clock = time.perf_counter

    def run(n: int, budget_s: float) -> list[float]:
        out: list[float] = []
        stop = clock() + budget_s
        while len(out) < n:
            t0 = clock()
            fn()
            t1 = clock()
            out.append(t1 - t0)
            if t1 > stop:
                break
        return out

    return run


def stats(times: list[float]) -> dict[str, float]:
    """Median and p99 in µs, and the count, of per-call times in seconds."""
    data = sorted(times)
    if not data:
        return {"median_us": float("nan"), "p99_us": float("nan"), "n": 0}
    return {"median_us": round(statistics.median(data) * 1e6, 2), "p99_us": round(data[min(len(data) - 1, int(len(data) * 0.99))] * 1e6, 2),
            "n": len(data)}
