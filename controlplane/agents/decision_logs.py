"""Decision logs from OPA agents, kept durably as JSON lines and queryable.

Each upload's events are appended and fsync'd before the agent gets its 2xx: an acknowledged
event survives a crash, and one that could not be written is answered 503 (controlplane.infra.jsonlines),
so the agent sends it again. A bounded in-memory tail serves queries; the file (rotated at its size
limit, and removed past its age limit, `controlplane.infra.jsonlines`) holds the rest. At start the file is replayed through OPA's event shape: a line that does
not read (a torn tail after a crash) is quarantined and the start goes on.

An event is known by its decision id and digest. The same event sent again (the agent retrying a
batch it got no 2xx for) is stored once; a different event under a decision id already seen is
stored too, and flagged (`repeated_of`) for the audit trail, never dropped.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import msgspec

from controlplane.agents.events import DecisionEvent, agent_name
from controlplane.agents.ingest import Accepted
from controlplane.infra.jsonlines import DEFAULT_MAX_BYTES, JsonLinesFile

DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0  # a week of agents' decisions: what a laptop keeps without noticing

MEMORY_TAIL = 10_000
SEEN_IDS = 100_000  # decision ids remembered with their digest, to tell a retry from a different event


def _read_line(line: bytes) -> tuple[dict, str, str]:
    """(the event, its decision id, its digest), checked as a new upload is, so a query never meets another shape."""
    doc: dict = msgspec.json.decode(line)
    event = msgspec.convert(doc, DecisionEvent)
    return doc, event.decision_id, hashlib.sha256(line).hexdigest()


class DecisionLogStore:
    def __init__(self, state_dir: Path | None, *, max_file_bytes: int = DEFAULT_MAX_BYTES,
                 max_age_s: float = DEFAULT_MAX_AGE_S, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._tail: deque[dict] = deque(maxlen=MEMORY_TAIL)
        self._seen: OrderedDict[str, list[str]] = OrderedDict()  # decision id -> digests stored, first first
        self._file = JsonLinesFile(state_dir / "decision_logs.jsonl", max_bytes=max_file_bytes, max_age_s=max_age_s,
                                   clock=clock) if state_dir else None
        self.total = 0
        if self._file is not None:
            self._file.expire()  # a live file holding only expired events is not read back into the tail
            for event, decision_id, event_digest in self._file.replay(_read_line):
                self._tail.append(event)
                self._remember(decision_id, event_digest)
                self.total += 1

    def _remember(self, decision_id: str, event_digest: str) -> None:
        digests = self._seen.get(decision_id)
        if digests is None:
            self._seen[decision_id] = [event_digest]
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
        elif event_digest not in digests:
            digests.append(event_digest)

    def triage(self, accepted: list[Accepted]) -> list[Accepted]:
        """The events of an upload not stored yet (a retried one is left out), each different event
        under a decision id seen before flagged with the first one's digest."""
        out: list[Accepted] = []
        here: set[tuple[str, str]] = set()
        first_here: dict[str, str] = {}
        with self._lock:
            for a in accepted:
                stored = self._seen.get(a.decision_id, ())
                if a.digest in stored or (a.decision_id, a.digest) in here:
                    continue  # this very event is stored (or comes twice in this upload)
                here.add((a.decision_id, a.digest))
                first = stored[0] if stored else first_here.setdefault(a.decision_id, a.digest)
                out.append(msgspec.structs.replace(a, repeated_of=first if first != a.digest else ""))
        return out

    def append(self, accepted: list[Accepted]) -> int:
        """Store events (StateUnavailable, nothing stored, when the file cannot take them)."""
        with self._lock:
            # two uploads of the same batch at once both pass `triage`: the second stores nothing twice
            accepted = [a for a in accepted if a.digest not in self._seen.get(a.decision_id, ())]
            accepted = list({(a.decision_id, a.digest): a for a in accepted}.values())
            if not accepted:
                return 0
            lines = [a.line for a in accepted]
            if self._file is not None:
                self._file.append(lines)
            self._tail.extend(a.event for a in accepted)
            for a in accepted:
                self._remember(a.decision_id, a.digest)
            self.total += len(accepted)
        return len(accepted)

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
