"""The audit trail: every decision as a hash-chained record in a JetStream stream.

`records` defines the record and its hash; `stream` the stream and its linking rules; `writer`
appends (group commit, spool, serialized across replicas with JetStream's expected-last-sequence:
`publisher`, `adoption`; each commit signed with the record key: `signing`) and `reader` lists and
verifies (`verify`, against the signed head `checkpoints`); `trail` is the one object that owns both.
`spool` is the local write-ahead log, `ingest` turns OPA decision-log events into records,
`escalation` publishes constitutional escalations, `controllers` serves `GET /api/v1/audit` and
`GET /api/v1/audit/verify`, `errors` holds the package's exceptions.
"""

from controlplane.audit.errors import AuditError, AuditUnavailable
from controlplane.audit.reader import AuditFilters, TrailReader, VerifyReport
from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.audit.trail import AuditTrail
from controlplane.audit.writer import TrailWriter

__all__ = [
    "AuditError", "AuditFilters", "AuditRecord", "AuditTrail", "AuditUnavailable", "StoredRecord", "TrailReader",
    "TrailWriter", "VerifyReport",
]
