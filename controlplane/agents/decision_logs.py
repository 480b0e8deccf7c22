"""Decision logs from OPA agents, kept durably as JSON lines and queryable.

Each upload's events are appended and fsync'd before the agent gets its 2xx: an acknowledged
event survives a crash, and one that could not be written is answered 503 (controlplane.infra.jsonlines),
so the agent sends it again. A bounded in-memory tail serves queries; the file (rotated at its size
limit, and removed past its age limit, `controlplane.infra.jsonlines`) holds the rest. At start the file is replayed through OPA's event shape: a line that does
not read (a torn tail after a crash) is quarantined and the start goes on.

The memory held per event (the tail and the ids seen) is made of strings and bytes only, which
the garbage collector does not track: a serving process receiving an agent's logs held about
250,000 tracked containers there (the tail's event documents, a list per id seen), and every full
collection walked them all, holding up every request for 20-160 ms, every few seconds at 1,000
requests/s (benchmarks/README.md, "Collector pauses"). A query decodes only the events it returns.

An event is known by its decision id and digest. The same event sent again (the agent retrying a
batch it got no 2xx for) is stored once; a different event under a decision id already seen is
stored too, and flagged (`repeated_of`) for the audit trail, never dropped.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import msgspec

from controlplane.agents.events import DecisionEvent, agent_name
from controlplane.agents.ingest import Accepted
from controlplane.infra.jsonlines import DEFAULT_MAX_BYTES, JsonLinesFile

DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0  # a week of agents' decisions: what a laptop keeps without noticing

MEMORY_TAIL = 10_000
SEEN_IDS = 100_000  # decision ids remembered with their digests (the newest half of them at least), to tell a
# retry from a different event


class _SeenIds:
    """Decision id -> the digests stored under it, for the newest `SEEN_IDS / 2` to `SEEN_IDS` ids:
    two plain dicts of strings (the digests of an id joined by spaces), the older one dropped whole
    when the newer is full. A dict holding only strings is untracked by the collector, where an
    ordered dict (evicting one id at a time) is walked entry by entry at every full collection."""

    def __init__(self) -> None:
        self._newer: dict[str, str] = {}
        self._older: dict[str, str] = {}

    def get(self, decision_id: str) -> tuple[str, ...]:
        found = self._newer.get(decision_id)
        if found is None:
            found = self._older.get(decision_id)
        return tuple(found.split(" ")) if found else ()

    def add(self, decision_id: str, digest: str) -> None:
        stored = self.get(decision_id)
        if digest in stored:
            return
        if decision_id not in self._newer and len(self._newer) >= SEEN_IDS // 2:
            self._older, self._newer = self._newer, {}
        self._newer[decision_id] = " ".join((*stored, digest))


class _Kept(msgspec.Struct, frozen=True, gc=False):
    """An event of the in-memory tail: what a query filters on, and its stored line (no containers)."""

    decision_id: str
    path: str
    agent: str
    line: bytes


def _kept(doc: dict, decision_id: str, line: bytes) -> _Kept:
    path = doc.get("path")
    return _Kept(decision_id, path if isinstance(path, str) else "", agent_name(doc.get("labels") or {}), line)


def _read_line(line: bytes) -> tuple[_Kept, str]:
    """(the event as the tail keeps it, its digest), checked as a new upload is, so a query never meets another shape."""
    doc: dict = msgspec.json.decode(line)
    event = msgspec.convert(doc, DecisionEvent)
    return _kept(doc, event.decision_id, line), hashlib.sha256(line).hexdigest()


class DecisionLogStore:
    def __init__(self, state_dir: Path | None, *, max_file_bytes: int = DEFAULT_MAX_BYTES,
                 max_age_s: float = DEFAULT_MAX_AGE_S, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._tail: deque[_Kept] = deque(maxlen=MEMORY_TAIL)
        self._seen = _SeenIds()  # decision id -> digests stored, first first
        self._file = JsonLinesFile(state_dir / "decision_logs.jsonl", max_bytes=max_file_bytes, max_age_s=max_age_s,
                                   clock=clock) if state_dir else None
        self.total = 0
        if self._file is not None:
            self._file.expire()  # a live file holding only expired events is not read back into the tail
            for kept, event_digest in self._file.replay(_read_line):
                self._tail.append(kept)
                self._seen.add(kept.decision_id, event_digest)
                self.total += 1

    def triage(self, accepted: list[Accepted]) -> list[Accepted]:
        """The events of an upload not stored yet (a retried one is left out), each different event
        under a decision id seen before flagged with the first one's digest."""
        out: list[Accepted] = []
        here: set[tuple[str, str]] = set()
        first_here: dict[str, str] = {}
        with self._lock:
            for a in accepted:
                stored = self._seen.get(a.decision_id)
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
            accepted = [a for a in accepted if a.digest not in self._seen.get(a.decision_id)]
            accepted = list({(a.decision_id, a.digest): a for a in accepted}.values())
            if not accepted:
                return 0
            lines = [a.line for a in accepted]
            if self._file is not None:
                self._file.append(lines)
            self._tail.extend(_kept(a.event, a.decision_id, a.line) for a in accepted)
            for a in accepted:
                self._seen.add(a.decision_id, a.digest)
            self.total += len(accepted)
        return len(accepted)

    def query(self, *, limit: int = 100, decision_id: str | None = None, path: str | None = None, agent_id: str | None = None) -> list[dict]:
        """Newest first."""
        with self._lock:
            events = list(self._tail)
        out: list[dict] = []
        for kept in reversed(events):
            if decision_id and kept.decision_id != decision_id:
                continue
            if path and kept.path != path:
                continue
            if agent_id and kept.agent != agent_id:
                continue
            out.append(msgspec.json.decode(kept.line))
            if len(out) >= limit:
                break
        return out
