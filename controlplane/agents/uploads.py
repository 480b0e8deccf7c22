"""One decision-log upload taken in, start to end: screened event by event (controlplane.agents.ingest),
audited, stored, counted and logged. The controller hands over the body; this decides the order.

The order is what makes a 2xx true: the audit trail first (if JetStream does not acknowledge, the
agent gets 503 and uploads the batch again, and nothing is stored yet; a re-upload of audited events
is recognised by their record ids), then the local file (StateUnavailable, 503, when it cannot be
written). Decoding, checking and the fsync run on a worker thread: a batch may hold tens of
thousands of events, and a slow disk must not hold up `/health` or bundle long polls.
"""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread

from bridge.kernel.untrusted import check_json_depth
from controlplane.agents.decision_logs import DecisionLogStore
from controlplane.agents.ingest import Accepted, Refused, audit_records, screen_batch
from controlplane.agents.payloads import decompress
from controlplane.agents.sandbox import redact_bridge_token
from controlplane.audit.errors import AuditUnavailable
from controlplane.audit.writer import TrailWriter
from controlplane.metrics.recorders import record_decision_log_events

log = logging.getLogger(__name__)

# An upload waits this long for JetStream to store its audit records, then is answered 503: below
# OPA's own wait for an answer (its services' response_header_timeout_seconds, 10 s by default), so
# the agent gets the 503 and re-sends, instead of giving up on a request this process still holds.
APPEND_WAIT_S = 8.0
MAX_LOGGED_REFUSALS = 20  # log lines per upload; a batch of thousands of bad events must not flood the log


async def take_decision_logs(body: bytes, encoding: str, *, body_limit: int, event_limit: int,
                             store: DecisionLogStore, audit: TrailWriter, bridge_token: str = "") -> list[Accepted]:
    """Screen, audit and store one upload; the events stored (new ones only)."""
    accepted, refused = await anyio.to_thread.run_sync(_screen, body, encoding, body_limit, event_limit, bridge_token)
    fresh = store.triage(accepted)
    try:  # records are keyed by the events' decision ids (`opa-<id>`): one that lands after this dedups the re-send
        await asyncio.wait_for(audit.append_many(audit_records(fresh, refused)), APPEND_WAIT_S)
    except TimeoutError:
        raise AuditUnavailable(f"audit trail: JetStream did not store this upload's records within {APPEND_WAIT_S:.0f} s; "
                               "it is not stored here: send it again") from None
    await anyio.to_thread.run_sync(store.append, fresh)
    record_decision_log_events(stored=len(fresh), repeated=sum(1 for a in fresh if a.repeated_of), rejected=len(refused))
    for r in refused[:MAX_LOGGED_REFUSALS]:
        log.warning("decision log from %s: refused %s (decision %r, sha256 %s)", r.agent_id, r.reason,
                    r.decision_id, r.digest)
    if len(refused) > MAX_LOGGED_REFUSALS:  # each one is in the audit trail; the log gets a count
        log.warning("decision log upload: %d more event(s) refused (see the audit trail, decision=rejected)",
                    len(refused) - MAX_LOGGED_REFUSALS)
    return fresh


def _screen(body: bytes, encoding: str, body_limit: int, event_limit: int,
            bridge_token: str) -> tuple[list[Accepted], list[Refused]]:
    raw = decompress(body, encoding, body_limit)
    check_json_depth(raw, "decision log batch")  # a gzip body is only JSON once decompressed
    # the bridge token never reaches storage or the audit trail: OPA logs http.send requests whole
    return screen_batch(redact_bridge_token(raw, bridge_token), event_limit)
