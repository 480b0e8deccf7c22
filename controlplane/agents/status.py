"""Agent status reports (OPA's status API): the latest per agent, plus a bounded history.

A report is checked against OPA's status shape (controlplane.agents.events) before anything is
written, so a listing built from stored reports cannot meet a shape it does not know. The file
(`agent_status.jsonl`) is compacted: at start, and whenever it has grown to twice what the
in-memory view keeps, it is rewritten with only that view (the last `HISTORY_PER_AGENT` reports of
each of at most `MAX_AGENTS` agents), so it never grows without bound and a start never replays
more than that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

import msgspec

from controlplane.agents.events import StatusReport, agent_name
from controlplane.agents.payloads import BadUpload
from controlplane.infra.jsonlines import JsonLinesFile

log = logging.getLogger(__name__)

HISTORY_PER_AGENT = 100
MAX_AGENTS = 1000  # the agent seen longest ago is forgotten beyond this
COMPACT_SLACK = 1000  # lines the file may hold beyond twice the view before it is rewritten


class BundleStatus(msgspec.Struct):
    name: str
    active_revision: str = ""
    last_successful_activation: str = ""
    last_successful_download: str = ""
    last_request: str = ""
    code: str = ""
    message: str = ""
    errors: list = msgspec.field(default_factory=list)


class AgentSummary(msgspec.Struct):
    id: str
    last_seen: float
    labels: dict
    bundles: list[BundleStatus]
    plugins: dict
    reports: int


class _Line(msgspec.Struct):
    """One line of agent_status.jsonl."""

    received_at: float
    status: StatusReport




def _read_line(data: bytes) -> tuple[float, StatusReport, dict]:
    """A stored line, checked as a new report would be (a line an older version let through fails here)."""
    doc = msgspec.json.decode(data)
    line = msgspec.convert(doc, _Line)
    return line.received_at, line.status, doc["status"]


class _Agent:
    __slots__ = ("at", "count", "history", "latest", "report")

    def __init__(self) -> None:
        self.latest: dict = {}
        self.report = StatusReport()
        self.at = 0.0
        self.history: deque[tuple[float, dict]] = deque(maxlen=HISTORY_PER_AGENT)
        self.count = 0


def parse_status(raw: bytes) -> tuple[StatusReport, dict]:
    """The typed report and the document as sent; BadUpload (400) names what is wrong."""
    try:
        doc = msgspec.json.decode(raw)
        report = msgspec.convert(doc, StatusReport)
    except msgspec.ValidationError as exc:
        raise BadUpload(f"status: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadUpload(f"status: invalid JSON ({exc})") from exc
    return report, doc


def summarize(agent: str, report: StatusReport, last_seen: float, reports: int) -> AgentSummary:
    bundles = [
        BundleStatus(name=name, active_revision=b.active_revision, last_successful_activation=b.last_successful_activation,
                     last_successful_download=b.last_successful_download, last_request=b.last_request,
                     code=b.code, message=b.message, errors=list(b.errors))
        for name, b in sorted(report.bundles.items())
    ]
    return AgentSummary(id=agent, last_seen=last_seen, labels=dict(report.labels), bundles=bundles,
                        plugins=msgspec.to_builtins(report.plugins), reports=reports)


class StatusStore:
    def __init__(self, state_dir: Path | None, *, compact_slack: int = COMPACT_SLACK) -> None:
        self._lock = threading.Lock()
        self._compact_slack = compact_slack
        self._agents: OrderedDict[str, _Agent] = OrderedDict()  # least recently seen first
        self._file = JsonLinesFile(state_dir / "agent_status.jsonl") if state_dir else None
        self._lines = 0
        if self._file is not None:
            replayed = self._file.replay(_read_line)
            for at, report, doc in replayed:
                self._remember(at, report, doc, doc)
            self._lines = len(replayed)
            if self._lines > self._kept():
                self._compact()

    def _remember(self, at: float, report: StatusReport, doc: dict, slim: dict) -> None:
        name = report.agent
        agent = self._agents.pop(name, None) or _Agent()
        self._agents[name] = agent
        agent.latest, agent.report, agent.at = doc, report, at
        agent.history.append((at, slim))
        agent.count += 1
        while len(self._agents) > MAX_AGENTS:
            forgotten, _ = self._agents.popitem(last=False)
            log.info("agent status: forgetting %r, the agent seen longest ago (more than %d agents)", forgotten, MAX_AGENTS)

    def _kept(self) -> int:
        return sum(len(a.history) for a in self._agents.values())

    def _compact(self) -> None:
        """Rewrite the file with what the view keeps (a failure only leaves it longer)."""
        assert self._file is not None
        entries = sorted(((at, slim) for a in self._agents.values() for at, slim in a.history), key=lambda e: e[0])
        try:
            self._file.rewrite(msgspec.json.encode({"received_at": at, "status": slim}) for at, slim in entries)
        except OSError as exc:
            log.warning("agent status: compaction of %s failed (%s)", self._file.path, exc.strerror or exc)
            return
        self._lines = len(entries)

    def record(self, doc: bytes | dict) -> str:
        """Check and store one report (raw JSON or a decoded document); the agent's name.
        BadUpload (400) when it is not OPA's status shape, StateUnavailable (503) when it cannot be stored."""
        report, full = parse_status(doc if isinstance(doc, bytes) else msgspec.json.encode(doc))
        now = time.time()
        # the Prometheus dump in `metrics` is large and only the latest is of interest
        slim = {k: v for k, v in full.items() if k != "metrics"}
        with self._lock:
            if self._file is not None:
                self._file.append([msgspec.json.encode({"received_at": now, "status": slim})])
                self._lines += 1
            self._remember(now, report, full, slim)
            if self._file is not None and self._lines > 2 * self._kept() + self._compact_slack:
                self._compact()
        return report.agent

    def agents(self) -> list[AgentSummary]:
        with self._lock:
            return [summarize(name, a.report, a.at, a.count) for name, a in sorted(self._agents.items())]

    def latest(self, agent_id: str) -> dict | None:
        with self._lock:
            agent = self._agents.get(agent_id)
            return agent.latest if agent else None

    def history(self, agent_id: str) -> list[dict]:
        with self._lock:
            agent = self._agents.get(agent_id)
            return [{"received_at": at, "status": doc} for at, doc in (agent.history if agent else [])]


__all__ = ["AgentSummary", "BundleStatus", "StatusStore", "agent_name", "parse_status"]
