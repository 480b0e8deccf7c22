"""One decision-log upload, event by event: what is stored, what is refused and why.

A real OPA agent re-sends a batch it got no 2xx for, forever, and every later decision waits
behind it. So a batch is never refused for one of its events: each event is checked on its own
(size first, then OPA's event shape, controlplane.agents.events), the good ones are stored and the
batch is answered 204. A refused event leaves a rejection record in the audit trail (its decision
id, the SHA-256 of the bytes received, the reason), so the loss is visible where decisions are
audited. Only a body that is not a JSON array of events at all, which no agent sends, is a 400.

Digests are SHA-256 over the event's bytes as received (OPA's compact JSON, the very bytes stored
as its line in decision_logs.jsonl): an agent re-sending a batch sends the same bytes, and a refused
event may not even be readable JSON. An event spread over several lines (no agent sends one) is
stored, and digested, re-encoded on one line.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from controlplane.agents.events import DecisionEvent, agent_name
from controlplane.agents.payloads import BadUpload
from controlplane.audit.ingest import decision_log_record, rejected_event_record
from controlplane.audit.records import AuditRecord

MAX_EVENT_BYTES = 256 * 1024  # one event, as sent; a record must also fit one NATS message
_batch = msgspec.json.Decoder(list[msgspec.Raw])


class _Identity(msgspec.Struct):
    """What a refused event is known by, read without checking anything else."""

    decision_id: Any = None
    labels: Any = None


_identity = msgspec.json.Decoder(_Identity)


class Accepted(msgspec.Struct):
    event: dict[str, Any]
    line: bytes  # what is stored
    decision_id: str
    digest: str
    repeated_of: str = ""  # digest of the first event stored under this decision id, when it differs


class Refused(msgspec.Struct):
    index: int
    decision_id: str
    agent_id: str
    digest: str
    size: int
    reason: str


def screen_batch(raw: bytes, max_event_bytes: int = MAX_EVENT_BYTES) -> tuple[list[Accepted], list[Refused]]:
    """Split an upload into the events to store and the ones refused, in upload order."""
    try:
        items = _batch.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included: the top level is not an array
        try:
            msgspec.json.decode(raw)
        except msgspec.DecodeError as bad:
            raise BadUpload(f"decision log batch: invalid JSON ({bad})") from bad
        raise BadUpload(f"decision log batch: expected a JSON array of events ({exc})") from exc
    accepted: list[Accepted] = []
    refused: list[Refused] = []
    for i, item in enumerate(items):
        data = bytes(item)
        if len(data) > max_event_bytes:
            refused.append(_refused(i, data, f"{len(data)} bytes, above the {max_event_bytes}-byte limit for one event"))
            continue
        try:
            doc = msgspec.json.decode(data)
            # converting the decoded document costs half of decoding the bytes twice
            event = msgspec.convert(doc, DecisionEvent)
        except msgspec.DecodeError as exc:  # ValidationError included: the field and what was wrong
            refused.append(_refused(i, data, str(exc)))
            continue
        line = data if b"\n" not in data else msgspec.json.encode(doc)
        accepted.append(Accepted(event=doc, line=line, decision_id=event.decision_id, digest=hashlib.sha256(line).hexdigest()))
    return accepted, refused


def _refused(index: int, data: bytes, reason: str) -> Refused:
    try:
        ident = _identity.decode(data)
    except msgspec.DecodeError:
        ident = _Identity()
    decision_id = ident.decision_id if isinstance(ident.decision_id, str) else ""
    return Refused(index=index, decision_id=decision_id, agent_id=agent_name(ident.labels),
                   digest=hashlib.sha256(data).hexdigest(), size=len(data), reason=f"event [{index}]: {reason}")


def audit_records(accepted: list[Accepted], refused: list[Refused]) -> list[AuditRecord]:
    """The audit records of one upload: one per stored event, one per refused event."""
    records = [decision_log_record(a.event, body_digest=a.digest, repeated_of=a.repeated_of) for a in accepted]
    records += [rejected_event_record(decision_id=r.decision_id, agent_id=r.agent_id, event_sha256=r.digest,
                                      size=r.size, reason=r.reason) for r in refused]
    return records
