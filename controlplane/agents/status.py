"""Agent status reports (OPA's status API): the latest per agent, plus a bounded history."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path

import msgspec

from controlplane.agents.payloads import BadUpload
from controlplane.infra.private import open_private

HISTORY_PER_AGENT = 100


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


def agent_name(labels: dict) -> str:
    """The agent's configured name (`labels.agent`), else OPA's instance id (`labels.id`)."""
    return str(labels.get("agent") or labels.get("id") or "unknown")


def _agent_id(doc: dict) -> str:
    return agent_name(doc.get("labels") or {})


def summarize(doc: dict, last_seen: float, reports: int) -> AgentSummary:
    bundles = []
    for name, b in sorted((doc.get("bundles") or {}).items()):
        b = b or {}
        bundles.append(
            BundleStatus(
                name=name,
                active_revision=str(b.get("active_revision") or ""),
                last_successful_activation=str(b.get("last_successful_activation") or ""),
                last_successful_download=str(b.get("last_successful_download") or ""),
                last_request=str(b.get("last_request") or ""),
                code=str(b.get("code") or ""),
                message=str(b.get("message") or ""),
                errors=list(b.get("errors") or []),
            )
        )
    return AgentSummary(
        id=_agent_id(doc), last_seen=last_seen, labels=dict(doc.get("labels") or {}),
        bundles=bundles, plugins=dict(doc.get("plugins") or {}), reports=reports,
    )


class StatusStore:
    def __init__(self, state_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, dict]] = {}
        self._history: dict[str, deque[tuple[float, dict]]] = {}
        self._counts: dict[str, int] = {}
        self._path = state_dir / "agent_status.jsonl" if state_dir else None
        if self._path and self._path.is_file():
            with open(self._path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        rec = msgspec.json.decode(line)
                        self._remember(rec["received_at"], rec["status"])

    def _remember(self, at: float, doc: dict) -> None:
        agent = _agent_id(doc)
        self._latest[agent] = (at, doc)
        self._history.setdefault(agent, deque(maxlen=HISTORY_PER_AGENT)).append((at, doc))
        self._counts[agent] = self._counts.get(agent, 0) + 1

    def record(self, doc: object) -> str:
        if not isinstance(doc, dict):
            raise BadUpload(f"status: expected a JSON object, got {type(doc).__name__}")
        now = time.time()
        with self._lock:
            if self._path:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                # the Prometheus dump in `metrics` is large and only the latest is of interest
                slim = {k: v for k, v in doc.items() if k != "metrics"}
                with open_private(self._path) as fh:
                    fh.write(msgspec.json.encode({"received_at": now, "status": slim}) + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            self._remember(now, doc)
        return _agent_id(doc)

    def agents(self) -> list[AgentSummary]:
        with self._lock:
            return [summarize(doc, at, self._counts[a]) for a, (at, doc) in sorted(self._latest.items())]

    def latest(self, agent_id: str) -> dict | None:
        with self._lock:
            entry = self._latest.get(agent_id)
            return entry[1] if entry else None

    def history(self, agent_id: str) -> list[dict]:
        with self._lock:
            return [{"received_at": at, "status": doc} for at, doc in self._history.get(agent_id, [])]
