"""The audit spool (write-ahead log) and write-behind appends, against a real nats-server.

What must hold: a decision answered on the strength of a spool write is never lost — not when
JetStream is down, not when the process dies before the background append, not when it dies after
the append but before the spool's cursor moved (then it must not be appended twice either)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import nats
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit import AuditRecord, AuditTrail, AuditUnavailable
from controlplane.audit.records import EvaluationEntry
from controlplane.audit.spool import AuditSpool, SpoolError
from controlplane.infra.processes import start_nats
from controlplane.infra.recordkeys import RecordKeys
from tests.controlplane_helpers import ADMIN_HEADERS, counted_publishes, make_settings, running_control_plane

KEYS = RecordKeys.generate()  # the control plane's record key, the same across the restarts below


def rec(decision: str = "allow", **kw) -> AuditRecord:
    return AuditRecord(source="api", decision=decision, policy_ids=["p"], **kw)


# ---- the spool on its own -------------------------------------------------------------------

def test_spool_recovers_what_was_not_acknowledged(tmp_path):
    spool = AuditSpool(tmp_path / "s")
    spool.write([rec(evaluation_id="1"), rec(evaluation_id="2")])
    spool.write([rec(evaluation_id="3")])
    spool.acknowledge(1)
    assert spool.backlog == 2
    spool.close()
    again = AuditSpool(tmp_path / "s")
    assert [r.evaluation_id for r in again.recover()] == ["2", "3"]
    again.acknowledge(2)
    again.close()
    assert AuditSpool(tmp_path / "s").recover() == []


def test_a_torn_last_line_is_cut_off_and_later_writes_stay_readable(tmp_path):
    spool = AuditSpool(tmp_path / "s")
    spool.write([rec(evaluation_id="1")])
    spool.close()
    segment = next((tmp_path / "s").glob("*.log"))
    with segment.open("ab") as f:
        f.write(b'{"source":"api","decis')  # the process died mid-write
    again = AuditSpool(tmp_path / "s")
    assert [r.evaluation_id for r in again.recover()] == ["1"]
    again.write([rec(evaluation_id="2")])
    again.close()
    assert [r.evaluation_id for r in AuditSpool(tmp_path / "s").recover()] == ["1", "2"]


def test_a_damaged_record_is_quarantined_and_logged_not_fatal(tmp_path, caplog):
    spool = AuditSpool(tmp_path / "s")
    spool.write([rec(evaluation_id="1"), rec(evaluation_id="2")])
    spool.close()
    segment = next((tmp_path / "s").glob("*.log"))
    first, second = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"not json\n" + first + b'{"source": 7}\n' + second + b'{"source":"api","deci')
    damaged = AuditSpool(tmp_path / "s")
    assert [r.evaluation_id for r in damaged.recover()] == ["1", "2"]
    assert (tmp_path / "s" / "quarantine").read_bytes() == b'not json\n{"source": 7}\n{"source":"api","deci\n'
    assert len([r for r in caplog.records if "unreadable record moved to" in r.getMessage()]) == 3
    assert segment.read_bytes() == first + second  # cut out: the cursor's byte offsets stay exact
    damaged.acknowledge(1)
    damaged.write([rec(evaluation_id="3")])
    damaged.close()
    assert [r.evaluation_id for r in AuditSpool(tmp_path / "s").recover()] == ["2", "3"]


def test_a_damaged_cursor_resends_everything_rather_than_dropping_a_record(tmp_path):
    spool = AuditSpool(tmp_path / "s")
    spool.write([rec(evaluation_id="1"), rec(evaluation_id="2")])
    spool.acknowledge(1)
    spool.close()
    (tmp_path / "s" / "acked").write_text("garbage")
    again = AuditSpool(tmp_path / "s")
    assert [r.evaluation_id for r in again.recover()] == ["1", "2"]
    assert (tmp_path / "s" / "acked.quarantine").read_text() == "garbage"
    again.close()


def test_a_full_disk_refuses_the_record_and_leaves_no_half_line(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "000000000000.log").symlink_to("/dev/full")  # every write: ENOSPC
    spool = AuditSpool(tmp_path / "s")
    assert spool.recover() == []
    with pytest.raises(SpoolError, match=r"audit spool: write to .*000000000000.log failed: No space left on device"):
        spool.write([rec(evaluation_id="lost?")])
    assert spool.backlog == 0  # refused, so the decision is not served (AuditUnavailable, 503)
    spool.close()


def test_one_spool_has_one_writer(tmp_path):
    spool = AuditSpool(tmp_path / "s")
    with pytest.raises(SpoolError, match=r"is in use by another control plane process \(give each replica its own GROQPOLICY_STATE_DIR\)"):
        AuditSpool(tmp_path / "s")
    spool.close()
    AuditSpool(tmp_path / "s").close()  # free again once closed


def test_full_segments_are_retired_once_acknowledged(tmp_path):
    spool = AuditSpool(tmp_path / "s", segment_bytes=2000)
    for i in range(30):
        spool.write([rec(evaluation_id=str(i))])
        if i % 3 == 2:
            spool.acknowledge(3)
    spool.write([rec(evaluation_id="last")])
    segments = sorted(p.name for p in (tmp_path / "s").glob("*.log"))
    assert len(segments) == 1 and segments[0] != "000000000000.log"  # rotated, the old ones deleted
    spool.close()
    assert [r.evaluation_id for r in AuditSpool(tmp_path / "s", segment_bytes=2000).recover()] == ["last"]


# ---- write-behind through the trail ----------------------------------------------------------

async def _trail(url: str, spool_dir, **kw) -> tuple[nats.NATS, AuditTrail]:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    trail = AuditTrail(nc, keys=KEYS, spool=AuditSpool(spool_dir), timeout=1.0, append_deadline=1.0, **kw)
    await trail.ensure_stream()
    return nc, trail


async def test_submitted_records_land_in_order_and_reads_see_them(nats_server, tmp_path):
    nc, trail = await _trail(nats_server.extra["url"], tmp_path / "s")
    try:
        for i in range(20):
            trail.submit([rec(evaluation_id=str(i))])
        page = await trail.list(limit=100)  # waits for this process's queue first
        assert [s.record.evaluation_id for s in page.records] == [str(i) for i in range(20)]
        assert trail.backlog == 0 and trail.spool.backlog == 0
        assert (await trail.verify()).ok
        with pytest.raises(Exception, match=r"source 'web' unknown"):
            trail.submit([AuditRecord(source="web", decision="allow")])  # type: ignore[arg-type]
    finally:
        await trail.close()
        await nc.close()


async def test_a_record_too_large_for_nats_is_refused_before_it_can_block_the_queue(nats_server, tmp_path):
    nc, trail = await _trail(nats_server.extra["url"], tmp_path / "s")
    try:
        huge = rec(reasons=["x" * 1000] * 600)
        with pytest.raises(Exception, match=r"^audit record: record .* is \d+ bytes, above the 524288-byte limit of one NATS message"):
            trail.submit([huge])
        with pytest.raises(Exception, match=r"above the 524288-byte limit"):
            await trail.append(huge)
        assert trail.backlog == 0 and trail.spool.backlog == 0
        trail.submit([rec(evaluation_id="after")])
        assert [s.record.evaluation_id for s in (await trail.list()).records] == ["after"]
    finally:
        await trail.close()
        await nc.close()


@pytest.mark.parametrize("linger, first_entries, appends_wanted", [(0.0, 0, [1, 1]), (0.5, 0, [2]), (0.5, 100, [1, 1])])
async def test_records_spooled_while_the_writer_lingers_share_one_append(nats_server, tmp_path, linger, first_entries, appends_wanted):
    """The writer takes spooled records `spool_linger_s` after the first one arrives (the response
    goes out first): records submitted meanwhile, by other requests, share its append. Without the
    linger, or when the first is a batch request's record (SPOOL_LINGER_FULL evaluations or more),
    the first goes alone and at once."""
    nc, trail = await _trail(nats_server.extra["url"], tmp_path / "s", spool_linger_s=linger)
    trail.atomic_from = 1  # records taken together go out as one atomic batch (not one publish each)
    entries = [EvaluationEntry(evaluation_id=str(i), decision="allow") for i in range(first_entries)]
    with counted_publishes(trail) as appends:
        try:
            trail.submit([rec(evaluation_id="first", evaluations=entries)])
            for _ in range(3):
                await asyncio.sleep(0)  # the writer has started: it appends now, or waits out its linger
            if not linger:
                deadline = time.monotonic() + 10
                while not appends and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
            trail.submit([rec(evaluation_id="second")])
            await trail.flush()
            assert appends == appends_wanted
            assert [s.record.evaluation_id for s in (await trail.list(limit=10)).records] == ["first", "second"]
        finally:
            await trail.close()
            await nc.close()


async def test_records_spooled_while_jetstream_is_down_land_after_a_restart(tmp_path):
    store = tmp_path / "nats"
    ns = start_nats(store)
    port = ns.extra["port"]
    nc, trail = await _trail(ns.extra["url"], tmp_path / "s", max_backlog=5, close_drain_s=0.5)
    trail.submit([rec(evaluation_id="before")])
    await trail.flush()
    ns.kill()
    trail.submit([rec(evaluation_id="a"), rec(evaluation_id="b")])  # answered: on disk, not in JetStream
    trail.submit([rec(evaluation_id="c")])
    with pytest.raises(AuditUnavailable, match=r"^audit trail: 3 record\(s\) are waiting for JetStream \(limit 5\)"):
        trail.submit([rec(evaluation_id="x")] * 3)
    with pytest.raises(AuditUnavailable, match=r"still waiting for JetStream"):
        await trail.flush(timeout=0.3)
    await trail.close()  # gives up after close_drain_s: the spool keeps them
    with contextlib.suppress(ConnectionError):  # nats-py: publishes still pending for a dead server
        await nc.close()
    ns = start_nats(store, port=port)
    try:
        nc, trail = await _trail(ns.extra["url"], tmp_path / "s")
        assert await trail.resume_spool() == 3
        page = await trail.list(limit=100)
        assert [s.record.evaluation_id for s in page.records] == ["before", "a", "b", "c"]
        assert (await trail.verify()).ok
        await trail.close()
        await nc.close()
    finally:
        ns.stop()


async def test_a_record_stored_before_the_cursor_moved_is_not_appended_twice(nats_server, tmp_path):
    nc, trail = await _trail(nats_server.extra["url"], tmp_path / "s")
    for i in range(3):
        trail.submit([rec(evaluation_id=str(i))])
    await trail.flush()
    await trail.close()
    await nc.close()
    (tmp_path / "s" / "acked").write_text("0 0\n")  # as if the process died between the ack and the cursor write
    nc, trail = await _trail(nats_server.extra["url"], tmp_path / "s")
    try:
        assert await trail.resume_spool() == 0
        trail.submit([rec(evaluation_id="next")])
        page = await trail.list(limit=100)
        assert [s.record.evaluation_id for s in page.records] == ["0", "1", "2", "next"]
    finally:
        await trail.close()
        await nc.close()


# ---- through the API -------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluations_are_served_while_jetstream_is_down_and_recorded_when_it_returns(tmp_path):
    store = tmp_path / "nats"
    ns = start_nats(store)
    port = ns.extra["port"]
    settings = make_settings(tmp_path / "state", nats_url=ns.extra["url"])
    try:
        with running_control_plane(settings) as services, httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
            body = {"input_context": {"principal": "alice"}, "constitutional_hash": CONSTITUTIONAL_HASH}
            ns.kill()
            served = []
            for _ in range(3):
                r = client.post("/api/v1/evaluate", json=body)
                assert r.status_code == 200, r.text
                served.append(r.json()["evaluation_id"])
            assert services.audit.backlog == 3
            r = client.get("/api/v1/audit")
            assert r.status_code == 503 and r.json()["error"]["message"] == "audit trail: 3 record(s) still waiting for JetStream"
            ns = start_nats(store, port=port)
            deadline = time.monotonic() + 30
            while (r := client.get("/api/v1/audit")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.2)
            assert [g["record"]["evaluation_id"] for g in r.json()["records"]] == served
            assert client.get("/api/v1/audit/verify").json()["ok"] is True
    finally:
        ns.stop()


def test_audit_durability_ack_waits_for_jetstream(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"], audit_durability="ack")
    with running_control_plane(settings) as services, httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        services.audit.append_deadline = 1.0
        services.audit.timeout = 0.3
        assert services.audit.spool is None
        r = client.post("/api/v1/evaluate", json={"input_context": {"principal": "a"}, "constitutional_hash": CONSTITUTIONAL_HASH})
        assert r.status_code == 200
        nats_server.kill()
        r = client.post("/api/v1/evaluate", json={"input_context": {"principal": "a"}, "constitutional_hash": CONSTITUTIONAL_HASH})
        assert r.status_code == 503 and r.json()["error"]["type"] == "AuditUnavailable"
        assert r.json()["error"]["message"].startswith("audit trail: 1 record(s) not acknowledged within 1s")
    assert not (tmp_path / "state" / "audit-spool").exists()


def test_a_cursor_that_cannot_move_is_not_fatal_to_the_spool(tmp_path):
    """A full disk when the cursor moves to a fresh segment: acknowledge raises, the writer logs it."""
    spool = AuditSpool(tmp_path / "s", segment_bytes=1)
    spool.write([rec(evaluation_id="1")])
    (tmp_path / "s" / "000000000001.log").mkdir()  # the next segment cannot be opened
    with pytest.raises(SpoolError, match=r"cannot open .*000000000001.log"):
        spool.acknowledge(1)
    spool.write([rec(evaluation_id="2")])  # the current segment still takes records
    spool.close()
    (tmp_path / "s" / "000000000001.log").rmdir()  # space again
    assert [r.evaluation_id for r in AuditSpool(tmp_path / "s").recover()] == ["1", "2"]  # re-sent, never lost


async def test_a_stop_with_nats_gone_does_not_wait_for_a_last_checkpoint(tmp_path, caplog):
    """A stop takes a last checkpoint; with NATS gone that could only wait out its timeout (5 s in a
    serving process, the supervisor's whole stop is 10 s), so it is said and skipped."""
    ns = start_nats(tmp_path / "nats")
    nc, trail = await _trail(ns.extra["url"], tmp_path / "s")
    trail.checkpoints.start(3600)
    trail.submit([rec(evaluation_id="one")])
    await trail.flush()
    await trail.checkpoints.take()
    taken = trail.checkpoints.last
    ns.kill()
    deadline = time.monotonic() + 10
    while nc.is_connected:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    with caplog.at_level(logging.WARNING, logger="controlplane.audit.checkpoints"):
        await trail.close()
    assert [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()] == [
        "audit trail: last checkpoint not taken: NATS is not connected (the last one taken stands)"]
    assert taken is not None and trail.checkpoints.last == taken
    with contextlib.suppress(ConnectionError):
        await nc.close()
