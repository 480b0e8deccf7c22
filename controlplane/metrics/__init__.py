"""Prometheus metrics: recording functions for the pipeline (`recorders`), HTTP timing
middleware and the `/metrics` endpoint (`controllers`), gauges read from the stores at scrape time
(`gauges`)."""

from controlplane.metrics.recorders import (
    REGISTRY,
    record_audit_append,
    record_decisions,
    record_escalation,
    record_inference,
    record_reply,
)

__all__ = ["REGISTRY", "record_audit_append", "record_decisions", "record_escalation", "record_inference", "record_reply"]
