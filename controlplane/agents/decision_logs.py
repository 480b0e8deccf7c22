"""Decision logs from OPA agents, kept durably as JSON lines, bounded by a retention, and queryable.

Each upload is appended and fsync'd before the agent gets its 2xx: an acknowledged batch survives a
crash. A bounded in-memory tail serves queries; the files hold the retained history.

Retention: the current file (`decision_logs.jsonl`) is rotated into a segment
(`decision_logs.<rotation time, ns>.jsonl`) once it holds 1/`SEGMENTS` of the size limit or has been
written for 1/`SEGMENTS` of the age limit. Segments are dropped whole, oldest first, while all the
files together are over the size limit, and once their newest event is older than the age limit.
So the files never hold much more than the limit, and what is dropped is always the oldest.
A line that does not decode (a torn write, a hand edit) is skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

import msgspec

from bridge.kernel.config import DECISION_LOG_MAX_AGE_S, DECISION_LOG_MAX_BYTES
from controlplane.agents.payloads import BadUpload
from controlplane.agents.status import agent_name

log = logging.getLogger("groqpolicy.agents")

MEMORY_TAIL = 10_000
SEGMENTS = 8  # the retained history is split over about this many files: dropping one frees ~1/8
UNBOUNDED_SEGMENT_BYTES = 64 << 20  # with no size limit, files still rotate at this size (for the age limit)
CURRENT = "decision_logs.jsonl"


class DecisionLogStore:
    def __init__(self, state_dir: Path | None, *, max_bytes: int = DECISION_LOG_MAX_BYTES,
                 max_age_s: float = DECISION_LOG_MAX_AGE_S) -> None:
        self._lock = threading.Lock()
        self._tail: deque[dict] = deque(maxlen=MEMORY_TAIL)
        self._dir = state_dir
        self._path = state_dir / CURRENT if state_dir else None
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.total = 0
        self.quarantined = 0  # lines skipped because they do not decode
        self._started = time.time()  # when the current file began (for the age limit)
        if self._path and self._path.is_file():
            self._started = self._path.stat().st_ctime
        if self._dir is not None:
            self._enforce(time.time())
            self._load()

    def segments(self) -> list[Path]:
        """The rotated segments, oldest first (their names sort by rotation time)."""
        return sorted(self._dir.glob("decision_logs.*.jsonl")) if self._dir else []

    def _load(self) -> None:
        """Count every retained event; decode only the newest `MEMORY_TAIL` lines for the tail."""
        lines: deque[bytes] = deque(maxlen=MEMORY_TAIL)
        for path in [*self.segments(), self._path]:
            if path is None or not path.is_file():
                continue
            with open(path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        self.total += 1
                        lines.append(line)
        for line in lines:
            try:
                self._tail.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                self.quarantined += 1
                self.total -= 1
        if self.quarantined:
            log.warning("decision logs: %d stored line(s) do not decode; skipped", self.quarantined)

    @staticmethod
    def validate(events: object) -> list[dict]:
        """An uploaded batch must be a JSON array of event objects, each with a decision_id."""
        if not isinstance(events, list):
            raise BadUpload(f"decision log batch: expected a JSON array of events, got {type(events).__name__}")
        for i, event in enumerate(events):
            if not isinstance(event, dict):
                raise BadUpload(f"decision log batch: event [{i}] is {type(event).__name__}, expected an object")
            if not isinstance(event.get("decision_id"), str):
                raise BadUpload(f"decision log batch: event [{i}] has no decision_id")
        return events

    def append(self, events: object) -> int:
        """Validate and store one uploaded batch (a JSON array of event objects)."""
        events = self.validate(events)
        lines = b"".join(msgspec.json.encode(e) + b"\n" for e in events)
        with self._lock:
            if self._path:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with open(self._path, "ab") as fh:
                    fh.write(lines)
                    fh.flush()
                    os.fsync(fh.fileno())
                    size = fh.tell()
                self._maybe_rotate(size, time.time())
            self._tail.extend(events)
            self.total += len(events)
        return len(events)

    def _maybe_rotate(self, size: int, now: float) -> None:
        segment_bytes = self.max_bytes // SEGMENTS if self.max_bytes > 0 else UNBOUNDED_SEGMENT_BYTES
        too_old = self.max_age_s > 0 and now - self._started >= self.max_age_s / SEGMENTS
        if self._path is None or not (size >= segment_bytes or too_old):
            return
        os.replace(self._path, self._path.with_name(f"decision_logs.{time.time_ns():020d}.jsonl"))
        self._started = now
        self._enforce(now)

    def _enforce(self, now: float) -> None:
        """Drop segments past the age limit, then the oldest ones while all files exceed the size limit."""
        segments = self.segments()
        if self.max_age_s > 0:
            for path in [p for p in segments if now - p.stat().st_mtime > self.max_age_s]:
                path.unlink(missing_ok=True)
                segments.remove(path)
        if self.max_bytes > 0:
            current = self._path.stat().st_size if self._path and self._path.is_file() else 0
            total = current + sum(p.stat().st_size for p in segments)
            while segments and total > self.max_bytes:
                oldest = segments.pop(0)
                total -= oldest.stat().st_size
                oldest.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """What the retained files take on disk."""
        files = [*self.segments(), self._path] if self._path else []
        return sum(p.stat().st_size for p in files if p.is_file())

    def query(self, *, limit: int = 100, decision_id: str | None = None, path: str | None = None, agent_id: str | None = None) -> list[dict]:
        """Newest first."""
        with self._lock:
            events = list(self._tail)
        out = []
        for event in reversed(events):
            if decision_id and event.get("decision_id") != decision_id:
                continue
            if path and event.get("path") != path:
                continue
            if agent_id and agent_name(event.get("labels") or {}) != agent_id:
                continue
            out.append(event)
            if len(out) >= limit:
                break
        return out
