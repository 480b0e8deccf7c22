"""Decision logs from OPA agents, kept durably as JSON lines and queryable.

Each upload is appended and fsync'd before the agent gets its 2xx: an acknowledged batch survives a
crash. A bounded in-memory tail serves queries; the file holds everything.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path

import msgspec

from controlplane.agents.payloads import BadUpload
from controlplane.agents.status import agent_name
from controlplane.infra.private import open_private

MEMORY_TAIL = 10_000


class DecisionLogStore:
    def __init__(self, state_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._tail: deque[dict] = deque(maxlen=MEMORY_TAIL)
        self._path = state_dir / "decision_logs.jsonl" if state_dir else None
        self.total = 0
        if self._path and self._path.is_file():
            with open(self._path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        self._tail.append(msgspec.json.decode(line))
                        self.total += 1

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
                with open_private(self._path) as fh:  # decision inputs: the owner's alone
                    fh.write(lines)
                    fh.flush()
                    os.fsync(fh.fileno())
            self._tail.extend(events)
            self.total += len(events)
        return len(events)

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
