"""The audit trail: every decision as a hash-chained record in a JetStream stream.

`records` defines the record and its hash, `trail` appends (serialized across replicas with
JetStream's expected-last-sequence) and reads, `ingest` turns OPA decision-log events into
records, `http` serves `GET /api/v1/audit` and `GET /api/v1/audit/verify`.
"""

from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.audit.trail import AuditError, AuditFilters, AuditTrail, AuditUnavailable, VerifyReport

__all__ = ["AuditError", "AuditFilters", "AuditRecord", "AuditTrail", "AuditUnavailable", "StoredRecord", "VerifyReport"]
