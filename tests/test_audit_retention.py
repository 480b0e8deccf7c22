"""Audit stream retention against a real nats-server: the configured age and size limits reach the
stream (new and existing), JetStream drops the oldest records past them, and `verify` and the
signed checkpoints keep working on what is kept."""

from __future__ import annotations

import nats
import pytest

from bridge.kernel.config import Settings
from controlplane.audit import AuditRecord, AuditTrail
from controlplane.audit.stream import STREAM
from controlplane.infra.recordkeys import RecordKeys

KEYS = RecordKeys.generate()


@pytest.fixture
async def nc(nats_server):
    conn = await nats.connect(nats_server.extra["url"])
    yield conn
    await conn.close()


def rec(i: int) -> AuditRecord:
    return AuditRecord(source="api", decision="allow", evaluation_id=f"e{i}", reasons=["x" * 200])


async def test_limits_reach_a_new_stream_and_an_existing_one(nc):
    await AuditTrail(nc, keys=KEYS, max_age_s=0, max_bytes=0).ensure_stream()  # an older deployment: no limits
    info = await nc.jetstream().stream_info(STREAM)
    assert (info.config.max_age, info.config.max_bytes) == (0, -1)
    await AuditTrail(nc, keys=KEYS, max_age_s=3600, max_bytes=5_000_000).ensure_stream()
    info = await nc.jetstream().stream_info(STREAM)
    assert (info.config.max_age, info.config.max_bytes) == (3600, 5_000_000)
    assert info.config.deny_delete and info.config.deny_purge  # still no way to remove a chosen record


async def test_the_defaults_are_the_settings_defaults(nc):
    """Every process opening the stream (the bootstrap, the control plane, the CLI) asks for the same
    limits unless configured otherwise: a running role may not update the stream."""
    await AuditTrail(nc, keys=KEYS).ensure_stream()
    info = await nc.jetstream().stream_info(STREAM)
    assert (info.config.max_age, info.config.max_bytes) == (Settings().audit_max_age_s, Settings().audit_max_bytes) == (
        30 * 86400, 1 << 30)


async def test_oldest_records_go_and_verify_starts_at_the_oldest_kept(nc, tmp_path):
    trail = AuditTrail(nc, keys=KEYS, max_bytes=20_000, checkpoint_file=tmp_path / "cp.json")
    await trail.ensure_stream()
    try:
        for i in range(5):
            await trail.append(rec(i))
        early = await trail.checkpoints.take()
        assert early is not None and early.seq == 5
        for i in range(5, 120):
            await trail.append(rec(i))
        state = await trail.store.state()
        assert state.first_seq > early.seq and state.last_seq == 120  # the early records were dropped
        # the head moved on past a checkpoint whose record aged out: a new one is taken, not refused
        late = await trail.checkpoints.take()
        assert late is not None and late.seq == 120
        report = await trail.verify()
        assert report.ok, report
        assert (report.first_seq, report.last_seq, report.checked) == (state.first_seq, 120, state.messages)
    finally:
        await trail.close()
